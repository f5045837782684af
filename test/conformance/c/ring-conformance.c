/*
 * xenblk conformance: the reference side of test/conformance/ring-macros.test.ts, built on
 * Xen's xen/io/ring.h macros (Debian libxen-dev) and nothing of ours.
 *
 *   ring-conformance sizes
 *       "ring_size <entry-bytes> <order> <n>": __RING_SIZE of a ring of 4096 << order bytes
 *       for entries of many sizes (DEFINE_RING_TYPES over byte arrays); then
 *       "init <hex>": the 64-byte header after SHARED_RING_INIT on a page of 0xAA bytes.
 *   ring-conformance script < commands
 *       Runs a blkif front ring and back ring over one shared ring, one command per line, and
 *       prints one line per command: the command, its result, then the shared indices
 *       (req_prod req_event rsp_prod rsp_event), the front's private ones
 *       (req_prod_pvt rsp_cons) and the back's (rsp_prod_pvt req_cons). Commands:
 *         init <order> <start>  SHARED_RING_INIT; indices moved to <start> (event <start>+1),
 *                               FRONT_RING_ATTACH and BACK_RING_ATTACH at <start>
 *         fq <n>   front queues n requests (RING_GET_REQUEST at req_prod_pvt++)
 *         fp       RING_PUSH_REQUESTS_AND_CHECK_NOTIFY
 *         bc <n>   back consumes up to n (RING_HAS_UNCONSUMED_REQUESTS, RING_REQUEST_CONS_OVERFLOW)
 *         bf       RING_FINAL_CHECK_FOR_REQUESTS
 *         br <n>   back queues n responses (RING_GET_RESPONSE at rsp_prod_pvt++)
 *         bp       RING_PUSH_RESPONSES_AND_CHECK_NOTIFY
 *         fc <n>   front consumes up to n responses (RING_HAS_UNCONSUMED_RESPONSES)
 *         ff       RING_FINAL_CHECK_FOR_RESPONSES
 *         xr <v>   a rogue frontend stores req_prod = v (RING_REQUEST_PROD_OVERFLOW)
 *         xs <v>   a rogue backend stores rsp_prod = v (RING_RESPONSE_PROD_OVERFLOW)
 *         xc <v>   RING_REQUEST_CONS_OVERFLOW(back, v), nothing stored
 *         xe <v>   the backend's peer stores req_event = v
 *         xf <v>   the frontend's peer stores rsp_event = v
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * ring.h issues xen_wmb()/xen_mb() around index updates; for the default (0) interface version
 * it maps them to mb()/wmb()/rmb(), which the including program supplies. Full fences here.
 */
#define mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define wmb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#include <xen/io/blkif.h>

/* ---- sizes ------------------------------------------------------------------------------- */

#define DEFINE_ENTRY(N)                                                                   \
    struct ent##N { uint8_t b[N]; };                                                      \
    DEFINE_RING_TYPES(ent##N, struct ent##N, struct ent##N);                             \
    static void sizes_##N(void *ring)                                                    \
    {                                                                                     \
        for (int order = 0; order <= 4; order++)                                          \
            printf("ring_size %d %d %u\n", N, order,                                      \
                   (unsigned int)__RING_SIZE((struct ent##N##_sring *)ring, (size_t)4096 << order)); \
    }
#define ENTRY_SIZES(X) X(1) X(2) X(3) X(8) X(12) X(16) X(48) X(64) X(100) X(108) X(112) \
    X(128) X(255) X(256) X(1000) X(2016) X(2017) X(4032) X(4033) X(8000) X(32736) X(65472) X(65473)
ENTRY_SIZES(DEFINE_ENTRY)
#define CALL_SIZES(N) sizes_##N(ring);

static void print_sizes(void)
{
    unsigned char *ring = aligned_alloc(4096, 4096 << 4);
    if (!ring) { perror("aligned_alloc"); exit(1); }
    ENTRY_SIZES(CALL_SIZES)

    memset(ring, 0xAA, 4096);
    SHARED_RING_INIT((blkif_sring_t *)ring);
    printf("init ");
    for (int i = 0; i < 64; i++) printf("%02x", ring[i]);
    printf("\n");
    free(ring);
}

/* ---- scripts ----------------------------------------------------------------------------- */

static blkif_sring_t *s;
static blkif_front_ring_t f;
static blkif_back_ring_t b;

static long offset_of(const void *p) { return (long)((const char *)p - (const char *)s); }

static void run_script(void)
{
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[8] = "";
        unsigned long a = 0, c = 0;
        int n = sscanf(line, "%7s %lu %lu", cmd, &a, &c);
        if (n < 1) continue;
        line[strcspn(line, "\n")] = 0;
        printf("%s ->", line);

        if (!strcmp(cmd, "init")) {
            size_t bytes = (size_t)4096 << a;
            RING_IDX start = (RING_IDX)c;
            free(s);
            s = aligned_alloc(4096, bytes);
            if (!s) { perror("aligned_alloc"); exit(1); }
            memset(s, 0, bytes);
            SHARED_RING_INIT(s);
            s->req_prod = s->rsp_prod = start;
            s->req_event = s->rsp_event = start + 1;
            FRONT_RING_ATTACH(&f, s, start, bytes);
            BACK_RING_ATTACH(&b, s, start, bytes);
            printf(" size=%u", RING_SIZE(&f));
        } else if (!strcmp(cmd, "fq")) {
            long last = -1;
            for (unsigned long i = 0; i < a; i++) {
                blkif_request_t *req = RING_GET_REQUEST(&f, f.req_prod_pvt);
                req->id = f.req_prod_pvt;
                last = offset_of(req);
                f.req_prod_pvt++;
            }
            printf(" free=%u full=%d last=%ld", RING_FREE_REQUESTS(&f), RING_FULL(&f) ? 1 : 0, last);
        } else if (!strcmp(cmd, "fp")) {
            int notify;
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f, notify);
            printf(" notify=%d", notify ? 1 : 0);
        } else if (!strcmp(cmd, "bc")) {
            unsigned avail = RING_HAS_UNCONSUMED_REQUESTS(&b), took = 0;
            long last = -1;
            while (took < a && RING_HAS_UNCONSUMED_REQUESTS(&b)) {
                if (RING_REQUEST_CONS_OVERFLOW(&b, b.req_cons)) break;
                last = offset_of(RING_GET_REQUEST(&b, b.req_cons));
                b.req_cons++;
                took++;
            }
            printf(" avail=%u took=%u last=%ld", avail, took, last);
        } else if (!strcmp(cmd, "bf")) {
            int work;
            RING_FINAL_CHECK_FOR_REQUESTS(&b, work);
            printf(" work=%d", work ? 1 : 0);
        } else if (!strcmp(cmd, "br")) {
            long last = -1;
            for (unsigned long i = 0; i < a; i++) {
                blkif_response_t *rsp = RING_GET_RESPONSE(&b, b.rsp_prod_pvt);
                rsp->id = b.rsp_prod_pvt;
                last = offset_of(rsp);
                b.rsp_prod_pvt++;
            }
            printf(" last=%ld", last);
        } else if (!strcmp(cmd, "bp")) {
            int notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b, notify);
            printf(" notify=%d", notify ? 1 : 0);
        } else if (!strcmp(cmd, "fc")) {
            unsigned avail = RING_HAS_UNCONSUMED_RESPONSES(&f), took = 0;
            while (took < a && RING_HAS_UNCONSUMED_RESPONSES(&f)) {
                f.rsp_cons++;
                took++;
            }
            printf(" avail=%u took=%u", avail, took);
        } else if (!strcmp(cmd, "ff")) {
            int work;
            RING_FINAL_CHECK_FOR_RESPONSES(&f, work);
            printf(" work=%d", work ? 1 : 0);
        } else if (!strcmp(cmd, "xr")) {
            s->req_prod = (RING_IDX)a;
            printf(" overflow=%d avail=%u", RING_REQUEST_PROD_OVERFLOW(&b, (RING_IDX)a) ? 1 : 0,
                   RING_HAS_UNCONSUMED_REQUESTS(&b));
        } else if (!strcmp(cmd, "xs")) {
            s->rsp_prod = (RING_IDX)a;
            printf(" overflow=%d avail=%u", RING_RESPONSE_PROD_OVERFLOW(&f, (RING_IDX)a) ? 1 : 0,
                   RING_HAS_UNCONSUMED_RESPONSES(&f));
        } else if (!strcmp(cmd, "xc")) {
            printf(" overflow=%d", RING_REQUEST_CONS_OVERFLOW(&b, (RING_IDX)a) ? 1 : 0);
        } else if (!strcmp(cmd, "xe")) {
            s->req_event = (RING_IDX)a;
        } else if (!strcmp(cmd, "xf")) {
            s->rsp_event = (RING_IDX)a;
        } else {
            fprintf(stderr, "unknown command %s\n", cmd);
            exit(2);
        }
        if (!s) { fprintf(stderr, "%s before init\n", cmd); exit(2); }
        printf(" | %u %u %u %u | %u %u | %u %u\n", s->req_prod, s->req_event, s->rsp_prod,
               s->rsp_event, f.req_prod_pvt, f.rsp_cons, b.rsp_prod_pvt, b.req_cons);
    }
    free(s);
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "sizes")) print_sizes();
    else if (argc == 2 && !strcmp(argv[1], "script")) run_script();
    else {
        fprintf(stderr, "usage: %s sizes | script < commands\n", argv[0]);
        return 2;
    }
    return ferror(stdout) ? 1 : 0;
}
