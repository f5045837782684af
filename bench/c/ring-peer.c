/*
 * xenblk bench: the C reference for the ring-only benchmark (bench/ring.ts). A blkif frontend
 * or backend built on Xen's own xen/io/ring.h macros and xen/io/blkif.h types (Debian
 * libxen-dev), speaking the simulated host's protocols directly so that it runs over the same
 * memory and the same event transport as our TypeScript peers:
 *   - hypercalls on <simdir>/ctl.sock (lib/sim/hypercall.ts framing: [len][op] + u32 words,
 *     reply [len][status] + words): ATTACH, GRANT_CHUNK, FRAME_RUN, MAP, ALLOC_UNBOUND,
 *     BIND_INTERDOMAIN;
 *   - grants: the frontend writes grant_entry_v1 entries in its own grant-table file
 *     (grant_table.h: domid and frame first, flags last) for pages of its RAM file; the backend
 *     MAPs them (the daemon pins) and mmaps the frames of the frontend's RAM file MAP_SHARED;
 *   - events: evtchn/sim-shared-info.ts. Sending sets the peer port's pending bit in its event
 *     page and, on the owner's upcall flag 0 -> 1, writes one byte to the owner's doorbell FIFO.
 *     Receiving: poll(2) on our doorbell, drain it, clear our upcall flag, then for our port:
 *     mask, clear pending, unmask, re-check (as evtchn/sim.ts does).
 * Only the data path is timed; none of the set-up above is.
 *
 *   ring-peer front <simdir> <domid> <backend-domid> <ring-page-order>
 *       prints "READY <port> <ref>...", then reads commands on stdin:
 *         run <queue-depth> <milliseconds>  -> "DONE <responses> <nanoseconds>"
 *         quit
 *   ring-peer back <simdir> <domid> <frontend-domid> <port> <ref>...
 *       prints "READY", then answers every request with BLKIF_RSP_OKAY until stdin closes.
 *
 * Each request is a BLKIF_OP_READ of one 4 KiB segment; the backend copies it out of the ring
 * once (XSA-155), answers with the same id and zeroes the response entry first (XSA-216), as
 * the TypeScript peer (bench/ring-peer.ts) does with protocol/blkif.ts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/*
 * ring.h leaves mb()/rmb()/wmb() to the includer. Linux's virt_* barriers on x86 are a full
 * fence for mb() and compiler barriers for rmb()/wmb(); acquire/release fences give exactly
 * that on x86 and stay correct elsewhere.
 */
#define mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#include <xen/io/blkif.h>

#define PAGE 4096u

/* lib/sim/hypercall.ts */
enum { HC_ATTACH = 1, HC_GRANT_CHUNK = 3, HC_FRAME_RUN = 4, HC_MAP = 5, HC_ALLOC_UNBOUND = 8, HC_BIND_INTERDOMAIN = 9 };
/* gnttab/sim.ts, gnttab/grant-entry.ts */
#define SIM_CHUNK 64u
/* GNTTAB_NR_RESERVED_ENTRIES (8) and GTF_permit_access come from xen/grant_table.h */

/* evtchn/sim-shared-info.ts */
#define NR_PORTS 4096u
#define EVTCHN_PAGE_SIZE (4096u + NR_PORTS * 32u)
#define PENDING_W 0u
#define MASK_W 128u
#define PORTS_W 1024u
#define PORT_WORDS 8u
enum { PORT_STATE = 0, PORT_RDOMID = 1, PORT_RPORT = 2, PORT_RINST = 3, PORT_OSLOT = 4, PORT_OGEN = 5 };
#define EVTCHNSTAT_interdomain 2u
#define SLOTS_MAX 1024u
#define SLOTS_SIZE (SLOTS_MAX * 16u)
#define SLOT_WORDS 4u
enum { SLOT_UPCALL = 0, SLOT_GEN = 1 };

static void die(const char *what)
{
    fprintf(stderr, "ring-peer: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- hypercalls ------------------------------------------------------------------------------ */

static int ctl = -1;

static void xfer(void *buf, size_t len, int writing)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = writing ? write(ctl, p, len) : read(ctl, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("simulator control connection");
        p += n;
        len -= (size_t)n;
    }
}

/* Sends op with `n` words; the reply's words land in `out` (at most `max`); returns their count. */
static unsigned hypercall(uint32_t op, const uint32_t *words, unsigned n, uint32_t *out, unsigned max)
{
    uint32_t hdr[2] = { 4 * n, op };
    xfer(hdr, sizeof hdr, 1);
    if (n) xfer((void *)words, 4 * n, 1);
    int32_t rh[2];
    xfer(rh, sizeof rh, 0);
    uint32_t len = (uint32_t)rh[0];
    uint8_t *payload = malloc(len + 1);
    if (!payload) die("malloc");
    if (len) xfer(payload, len, 0);
    if (rh[1] < 0) {
        payload[len] = 0;
        fprintf(stderr, "ring-peer: hypercall %u failed: errno %d %s\n", op, -rh[1], len > 4 ? (char *)payload + 4 : "");
        exit(2);
    }
    unsigned got = len / 4;
    if (got > max) got = max;
    memcpy(out, payload, 4 * got);
    free(payload);
    return got;
}

static void *map_file(const char *path, size_t len, off_t off)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) die(path);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
    if (p == MAP_FAILED) die(path);
    close(fd);
    return p;
}

/* ---- event channel (evtchn/sim-shared-info.ts) -------------------------------------------- */

static const char *simdir;
static uint32_t *slots;       /* slot table */
static uint32_t *own_page;    /* our domain's event page */
static uint32_t *peer_page;   /* the remote domain's event page, mapped on first send */
static uint32_t my_slot, my_gen, my_port, peer_port;
static int bell = -1;          /* our doorbell, read end */
static int peer_bell = -1;     /* the peer's doorbell, write end (cached per slot/gen) */
static uint32_t peer_bell_slot = ~0u, peer_bell_gen = 0;

static void ring_doorbell(uint32_t slot, uint32_t gen)
{
    static const uint8_t one = 1;
    if (slot != peer_bell_slot || gen != peer_bell_gen) {
        if (peer_bell >= 0) close(peer_bell);
        char path[4096];
        snprintf(path, sizeof path, "%s/doorbell-%u.%u", simdir, slot, gen);
        peer_bell = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (peer_bell < 0) die(path);
        peer_bell_slot = slot;
        peer_bell_gen = gen;
    }
    while (write(peer_bell, &one, 1) < 0 && errno == EINTR) {}
}

/* EVTCHNOP_send on our port: raiseEvent() of sim-shared-info.ts on the remote port. */
static void notify_remote(void)
{
    uint32_t *e = own_page + PORTS_W + my_port * PORT_WORDS;
    if (peer_page == NULL) {
        if (__atomic_load_n(&e[PORT_STATE], __ATOMIC_SEQ_CST) != EVTCHNSTAT_interdomain) return;
        char path[4096];
        snprintf(path, sizeof path, "%s/evtchn-%u.%u", simdir, __atomic_load_n(&e[PORT_RDOMID], __ATOMIC_SEQ_CST),
                 __atomic_load_n(&e[PORT_RINST], __ATOMIC_SEQ_CST));
        peer_page = map_file(path, EVTCHN_PAGE_SIZE, 0);
        peer_port = __atomic_load_n(&e[PORT_RPORT], __ATOMIC_SEQ_CST);
    }
    uint32_t w = peer_port >> 5, bit = 1u << (peer_port & 31);
    uint32_t old = __atomic_fetch_or(&peer_page[PENDING_W + w], bit, __ATOMIC_SEQ_CST);
    if (old & bit) return;
    if (__atomic_load_n(&peer_page[MASK_W + w], __ATOMIC_SEQ_CST) & bit) return;
    uint32_t *pe = peer_page + PORTS_W + peer_port * PORT_WORDS;
    uint32_t gen = __atomic_load_n(&pe[PORT_OGEN], __ATOMIC_SEQ_CST);
    if (gen == 0) return;
    uint32_t slot = __atomic_load_n(&pe[PORT_OSLOT], __ATOMIC_SEQ_CST);
    if (slot >= SLOTS_MAX) return;
    uint32_t *s = slots + slot * SLOT_WORDS;
    if (__atomic_load_n(&s[SLOT_GEN], __ATOMIC_SEQ_CST) != gen) return;
    if (__atomic_exchange_n(&s[SLOT_UPCALL], 1, __ATOMIC_SEQ_CST) != 0) return;
    ring_doorbell(slot, gen);
}

/* Delivery after our doorbell rang: whether our port was pending. */
static int take_event(void)
{
    uint8_t scratch[256];
    while (read(bell, scratch, sizeof scratch) == (ssize_t)sizeof scratch) {}
    __atomic_store_n(&slots[my_slot * SLOT_WORDS + SLOT_UPCALL], 0, __ATOMIC_SEQ_CST);
    uint32_t w = my_port >> 5, bit = 1u << (my_port & 31);
    if (!(__atomic_load_n(&own_page[PENDING_W + w], __ATOMIC_SEQ_CST) & bit)) return 0;
    __atomic_fetch_or(&own_page[MASK_W + w], bit, __ATOMIC_SEQ_CST);
    __atomic_fetch_and(&own_page[PENDING_W + w], ~bit, __ATOMIC_SEQ_CST);
    __atomic_fetch_and(&own_page[MASK_W + w], ~bit, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&own_page[PENDING_W + w], __ATOMIC_SEQ_CST) & bit) {
        /* raised while masked: kick ourselves, as evtchn/sim.ts kickSelf() */
        if (__atomic_exchange_n(&slots[my_slot * SLOT_WORDS + SLOT_UPCALL], 1, __ATOMIC_SEQ_CST) == 0) {
            static const uint8_t one = 1;
            while (write(bell, &one, 1) < 0 && errno == EINTR) {}
        }
    }
    return 1;
}

/* Blocks until our port fires (1) or stdin is readable (0). */
static int wait_event(int watch_stdin)
{
    for (;;) {
        struct pollfd p[2] = { { bell, POLLIN, 0 }, { 0, POLLIN, 0 } };
        int n = poll(p, watch_stdin ? 2 : 1, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("poll");
        if ((p[0].revents & POLLIN) && take_event()) return 1;
        if (watch_stdin && p[1].revents) return 0;
    }
}

static void attach(uint32_t domid, uint32_t *instance)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/ctl.sock", simdir);
    ctl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ctl < 0) die("socket");
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof a.sun_path) { errno = ENAMETOOLONG; die(path); }
    strcpy(a.sun_path, path);
    if (connect(ctl, (struct sockaddr *)&a, sizeof a) < 0) die(path);
    uint32_t req[2] = { domid, (uint32_t)getpid() }, rsp[6];
    if (hypercall(HC_ATTACH, req, 2, rsp, 6) < 3) die("ATTACH reply");
    my_slot = rsp[0];
    my_gen = rsp[1];
    *instance = rsp[2];
    snprintf(path, sizeof path, "%s/slots", simdir);
    slots = map_file(path, SLOTS_SIZE, 0);
    snprintf(path, sizeof path, "%s/evtchn-%u.%u", simdir, domid, *instance);
    own_page = map_file(path, EVTCHN_PAGE_SIZE, 0);
    snprintf(path, sizeof path, "%s/doorbell-%u.%u", simdir, my_slot, my_gen);
    bell = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (bell < 0) die(path);
}

/* ---- frontend -------------------------------------------------------------------------------- */

static int front(uint32_t domid, uint32_t backend, unsigned order)
{
    uint32_t inst, w[1], first_ref, first_frame;
    unsigned npages = 1u << order;
    attach(domid, &inst);
    hypercall(HC_GRANT_CHUNK, NULL, 0, &first_ref, 1);
    w[0] = SIM_CHUNK;
    hypercall(HC_FRAME_RUN, w, 1, &first_frame, 1);
    char path[4096];
    snprintf(path, sizeof path, "%s/mem-%u.%u", simdir, domid, inst);
    uint8_t *ringmem = map_file(path, (size_t)npages * PAGE, (off_t)first_frame * PAGE);
    memset(ringmem, 0, (size_t)npages * PAGE);
    snprintf(path, sizeof path, "%s/gnttab-%u.%u", simdir, domid, inst);
    uint8_t *gt = map_file(path, (size_t)(first_ref + SIM_CHUNK) * 8, 0);
    uint32_t refs[16];
    uint32_t ref = first_ref < GNTTAB_NR_RESERVED_ENTRIES ? GNTTAB_NR_RESERVED_ENTRIES : first_ref;
    for (unsigned i = 0; i < npages; i++, ref++) {
        refs[i] = ref;
        /* grant_table.h: domid and frame first, then the flags (publish with a barrier) */
        __atomic_store_n((uint16_t *)(gt + ref * 8 + 2), (uint16_t)backend, __ATOMIC_SEQ_CST);
        __atomic_store_n((uint32_t *)(gt + ref * 8 + 4), first_frame + i, __ATOMIC_SEQ_CST);
        __atomic_store_n((uint16_t *)(gt + ref * 8), (uint16_t)GTF_permit_access, __ATOMIC_SEQ_CST);
    }
    w[0] = backend;
    hypercall(HC_ALLOC_UNBOUND, w, 1, &my_port, 1);

    blkif_sring_t *sring = (blkif_sring_t *)ringmem;
    SHARED_RING_INIT(sring);
    blkif_front_ring_t fr;
    FRONT_RING_INIT(&fr, sring, (size_t)npages * PAGE);

    printf("READY %u", my_port);
    for (unsigned i = 0; i < npages; i++) printf(" %u", refs[i]);
    printf("\n");
    fflush(stdout);

    char line[256];
    uint64_t next_id = 0;
    while (fgets(line, sizeof line, stdin)) {
        unsigned qd, ms;
        if (strncmp(line, "quit", 4) == 0) break;
        if (sscanf(line, "run %u %u", &qd, &ms) != 2) { fprintf(stderr, "ring-peer: bad command %s", line); return 2; }
        if (qd > RING_SIZE(&fr)) qd = RING_SIZE(&fr);
        uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)ms * 1000000u, done = 0;
        unsigned inflight = 0;
        int stopping = 0;
        for (;;) {
            if (!stopping) {
                while (inflight < qd) {
                    blkif_request_t *req = RING_GET_REQUEST(&fr, fr.req_prod_pvt);
                    memset(req, 0, sizeof *req);
                    req->operation = BLKIF_OP_READ;
                    req->nr_segments = 1;
                    req->handle = 0;
                    req->id = next_id;
                    req->sector_number = (next_id & 1023) * 8;
                    req->seg[0].gref = refs[0];
                    req->seg[0].first_sect = 0;
                    req->seg[0].last_sect = 7;
                    next_id++;
                    fr.req_prod_pvt++;
                    inflight++;
                }
                int notify;
                RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&fr, notify);
                if (notify) notify_remote();
            }
            if (inflight == 0) break;
            /* stdin says nothing during a run: if it becomes readable the parent is gone */
            if (!wait_event(1)) { fprintf(stderr, "ring-peer: stdin closed during a run\n"); return 2; }
            int more;
            do {
                RING_IDX rp = fr.sring->rsp_prod;
                rmb();
                if (RING_RESPONSE_PROD_OVERFLOW(&fr, rp)) { fprintf(stderr, "ring-peer: response overflow\n"); return 2; }
                for (RING_IDX i = fr.rsp_cons; i != rp; i++) {
                    blkif_response_t rsp = *RING_GET_RESPONSE(&fr, i);
                    if (rsp.status != BLKIF_RSP_OKAY) { fprintf(stderr, "ring-peer: status %d\n", rsp.status); return 2; }
                    inflight--;
                    done++;
                }
                fr.rsp_cons = rp;
                RING_FINAL_CHECK_FOR_RESPONSES(&fr, more);
            } while (more);
            if (!stopping && now_ns() >= deadline) stopping = 1;
        }
        printf("DONE %llu %llu\n", (unsigned long long)done, (unsigned long long)(now_ns() - t0));
        fflush(stdout);
    }
    return 0;
}

/* ---- backend --------------------------------------------------------------------------------- */

static int back(uint32_t domid, uint32_t frontend, uint32_t port, const uint32_t *refs, unsigned npages)
{
    uint32_t inst;
    attach(domid, &inst);
    uint32_t req[3 + 16], rsp[2 + 16];
    req[0] = frontend;
    req[1] = 1; /* writable */
    req[2] = npages;
    memcpy(req + 3, refs, 4 * npages);
    if (hypercall(HC_MAP, req, 3 + npages, rsp, 2 + npages) != 2 + npages) die("MAP reply");
    char path[4096];
    snprintf(path, sizeof path, "%s/mem-%u.%u", simdir, frontend, rsp[1]);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) die(path);
    uint8_t *ringmem = mmap(NULL, (size_t)npages * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ringmem == MAP_FAILED) die("mmap reserve");
    for (unsigned i = 0; i < npages; i++) {
        if (mmap(ringmem + (size_t)i * PAGE, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, (off_t)rsp[2 + i] * PAGE) == MAP_FAILED) die("mmap grant");
    }
    close(fd);
    uint32_t w[2] = { frontend, port };
    hypercall(HC_BIND_INTERDOMAIN, w, 2, &my_port, 1);

    blkif_back_ring_t br;
    BACK_RING_INIT(&br, (blkif_sring_t *)ringmem, (size_t)npages * PAGE);
    printf("READY\n");
    fflush(stdout);

    for (;;) {
        if (!wait_event(1)) {
            char buf[256];
            ssize_t n = read(0, buf, sizeof buf);
            if (n <= 0 || strncmp(buf, "quit", 4) == 0) return 0;
            continue;
        }
        int more;
        do {
            RING_IDX rc = br.req_cons, rp = br.sring->req_prod;
            rmb();
            if (RING_REQUEST_PROD_OVERFLOW(&br, rp)) { fprintf(stderr, "ring-peer: request overflow\n"); return 2; }
            while (rc != rp && !RING_REQUEST_CONS_OVERFLOW(&br, rc)) {
                blkif_request_t r;
                memcpy(&r, RING_GET_REQUEST(&br, rc), sizeof r); /* copied once (XSA-155) */
                br.req_cons = ++rc;
                blkif_response_t *out = RING_GET_RESPONSE(&br, br.rsp_prod_pvt);
                memset(out, 0, sizeof *out); /* no stale padding (XSA-216) */
                out->id = r.id;
                out->operation = r.operation;
                out->status = (r.operation == BLKIF_OP_READ && r.nr_segments >= 1 && r.nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST)
                    ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
                br.rsp_prod_pvt++;
            }
            int notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&br, notify);
            if (notify) notify_remote();
            RING_FINAL_CHECK_FOR_REQUESTS(&br, more);
        } while (more);
    }
}

int main(int argc, char **argv)
{
    if (argc >= 6 && strcmp(argv[1], "front") == 0) {
        simdir = argv[2];
        unsigned order = (unsigned)atoi(argv[5]);
        if (order > 4) { fprintf(stderr, "ring-peer: order %u > 4\n", order); return 2; }
        return front((uint32_t)atoi(argv[3]), (uint32_t)atoi(argv[4]), order);
    }
    if (argc >= 7 && strcmp(argv[1], "back") == 0) {
        simdir = argv[2];
        unsigned n = (unsigned)(argc - 6);
        if (n > 16) { fprintf(stderr, "ring-peer: too many refs\n"); return 2; }
        uint32_t refs[16];
        for (unsigned i = 0; i < n; i++) refs[i] = (uint32_t)strtoul(argv[6 + i], NULL, 10);
        return back((uint32_t)atoi(argv[3]), (uint32_t)atoi(argv[4]), (uint32_t)atoi(argv[5]), refs, n);
    }
    fprintf(stderr, "usage: ring-peer front <simdir> <domid> <backend-domid> <order>\n"
                    "       ring-peer back <simdir> <domid> <frontend-domid> <port> <ref>...\n");
    return 2;
}
