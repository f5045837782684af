/*
 * xenblk conformance: a blkif peer written in C on Xen's own xen/io/ring.h and blkif.h macros
 * (Debian libxen-dev), that joins the simulated Xen host as a domain of its own using only the
 * simulator's documented conventions (lib/sim/hypercall.ts, lib/sim/paths.ts,
 * evtchn/sim-shared-info.ts, gnttab/grant-entry.ts) - nothing of ours is linked in.
 *
 *   sim-peer back DIR DOMID FRONT_DOMID RING_REF PORT COUNT
 *       Attaches as DOMID, maps RING_REF of FRONT_DOMID, binds to its event channel PORT and
 *       serves COUNT requests as a backend (BACK_RING_ATTACH at rsp_prod): each response carries
 *       the request's id and operation, and status BLKIF_RSP_ERROR when sector_number % 5 == 0,
 *       BLKIF_RSP_OKAY otherwise. Prints "served N req_cons X rsp_prod Y".
 *   sim-peer front DIR DOMID BACK_DOMID COUNT START
 *       Attaches as DOMID, grants one page to BACK_DOMID, puts a blkif ring in it with every
 *       index at START, allocates an unbound port for BACK_DOMID, prints "ring-ref R port P",
 *       waits for a line on stdin (the backend has bound), then issues COUNT requests (id
 *       0xC0FFEE<<32 | i, sector i*3, READ/WRITE alternating, one segment) and checks that every
 *       one is answered exactly once with the expected operation and status. Prints
 *       "answered N duplicate D unknown U wrong W req_prod X" and exits 1 on any error.
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
#include <unistd.h>

#define mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define wmb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#include <xen/io/blkif.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>

/* ---- the simulator's conventions ----------------------------------------------------------- */

enum { HC_ATTACH = 1, HC_DETACH = 2, HC_GRANT_CHUNK = 3, HC_FRAME_RUN = 4, HC_MAP = 5, HC_UNMAP = 6,
       HC_ALLOC_UNBOUND = 8, HC_BIND_INTERDOMAIN = 9, HC_CLOSE_PORT = 10 };
#define SIM_CHUNK 64
#define PAGE 4096
#define NR_PORTS 4096
#define EVTCHN_PAGE_SIZE (4096 + NR_PORTS * 32)
#define PENDING_W 0
#define MASK_W (512 / 4)
#define PORTS_W (4096 / 4)
#define PORT_WORDS 8
enum { P_STATE, P_RDOMID, P_RPORT, P_RINST, P_OSLOT, P_OGEN };
#define SLOTS_MAX 1024
#define SLOT_WORDS 4
enum { S_UPCALL, S_GEN, S_DOMID, S_PID };

static const char *dir;
static int ctl = -1;
static uint32_t my_domid, my_slot, my_gen, my_inst, nr_grants;
static uint32_t *evpage, *slots;
static int bell = -1;

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "sim-peer: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (errno %d)\n", errno);
    exit(2);
}

static void xfer(int out, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = out ? write(ctl, p, n) : read(ctl, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die("control connection: %s", out ? "write" : "read");
        p += r;
        n -= (size_t)r;
    }
}

/* One hypercall: u32 words in, u32 words out; exits on refusal. */
static uint32_t hc(uint32_t op, const uint32_t *in, uint32_t nin, uint32_t *out, uint32_t maxout)
{
    uint32_t hdr[2] = { nin * 4, op };
    xfer(1, hdr, sizeof hdr);
    if (nin) xfer(1, (void *)in, nin * 4);
    uint32_t rh[2];
    xfer(0, rh, sizeof rh);
    uint32_t len = rh[0];
    int32_t status = (int32_t)rh[1];
    uint8_t payload[65536];
    if (len > sizeof payload) die("reply of %s bytes", "too many");
    xfer(0, payload, len);
    if (status < 0) {
        fprintf(stderr, "sim-peer: hypercall %u refused: errno %d: %.*s\n", op, -status,
                len > 4 ? (int)(len - 4) : 0, (const char *)payload + 4);
        exit(2);
    }
    if (len / 4 > maxout) die("reply %s", "longer than expected");
    if (len) memcpy(out, payload, len);
    return len / 4;
}

static void *map_path(const char *name, size_t len, off_t off)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) die("open %s", path);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
    if (p == MAP_FAILED) die("mmap %s", path);
    close(fd);
    return p;
}

static void attach(uint32_t domid)
{
    char path[512];
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/ctl.sock", dir);
    ctl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ctl < 0 || connect(ctl, (struct sockaddr *)&sa, sizeof sa) != 0) die("connect %s", sa.sun_path);
    uint32_t in[2] = { domid, (uint32_t)getpid() }, out[6];
    hc(HC_ATTACH, in, 2, out, 6);
    my_domid = domid;
    my_slot = out[0];
    my_gen = out[1];
    my_inst = out[2];
    nr_grants = out[4];
    snprintf(path, sizeof path, "evtchn-%u.%u", my_domid, my_inst);
    evpage = map_path(path, EVTCHN_PAGE_SIZE, 0);
    slots = map_path("slots", SLOTS_MAX * SLOT_WORDS * 4, 0);
    snprintf(path, sizeof path, "%s/doorbell-%u.%u", dir, my_slot, my_gen);
    bell = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (bell < 0) die("open %s", path);
}

/* ---- event channels ---------------------------------------------------------------------- */

static uint32_t *peer_page;
static uint32_t peer_inst;
static int bell_fd[SLOTS_MAX];
static uint32_t bell_gen[SLOTS_MAX];

static void ring_doorbell(uint32_t slot, uint32_t gen)
{
    if (bell_gen[slot] != gen) {
        char path[512];
        if (bell_gen[slot]) close(bell_fd[slot]);
        bell_gen[slot] = 0;
        snprintf(path, sizeof path, "%s/doorbell-%u.%u", dir, slot, gen);
        int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) return; /* that process is gone */
        bell_fd[slot] = fd;
        bell_gen[slot] = gen;
    }
    uint8_t one = 1;
    if (write(bell_fd[slot], &one, 1) < 0 && errno != EAGAIN) {
        close(bell_fd[slot]);
        bell_gen[slot] = 0;
    }
}

/* Set `port` pending in `page`; wake its owner on the 0 -> 1 edge of its upcall flag. */
static void raise_event(uint32_t *page, uint32_t port)
{
    uint32_t bit = 1u << (port & 31);
    uint32_t old = __atomic_fetch_or(&page[PENDING_W + port / 32], bit, __ATOMIC_SEQ_CST);
    if (old & bit) return;
    if (__atomic_load_n(&page[MASK_W + port / 32], __ATOMIC_SEQ_CST) & bit) return;
    uint32_t *e = &page[PORTS_W + port * PORT_WORDS];
    uint32_t gen = __atomic_load_n(&e[P_OGEN], __ATOMIC_SEQ_CST);
    uint32_t slot = __atomic_load_n(&e[P_OSLOT], __ATOMIC_SEQ_CST);
    if (gen == 0 || slot >= SLOTS_MAX) return;
    uint32_t *s = &slots[slot * SLOT_WORDS];
    if (__atomic_load_n(&s[S_GEN], __ATOMIC_SEQ_CST) != gen) return;
    if (__atomic_exchange_n(&s[S_UPCALL], 1, __ATOMIC_SEQ_CST) != 0) return;
    ring_doorbell(slot, gen);
}

/* EVTCHNOP_send on our port `lport`. */
static void notify(uint32_t lport)
{
    uint32_t *e = &evpage[PORTS_W + lport * PORT_WORDS];
    if (__atomic_load_n(&e[P_STATE], __ATOMIC_SEQ_CST) != EVTCHNSTAT_interdomain) return;
    uint32_t rdom = __atomic_load_n(&e[P_RDOMID], __ATOMIC_SEQ_CST);
    uint32_t rport = __atomic_load_n(&e[P_RPORT], __ATOMIC_SEQ_CST);
    uint32_t rinst = __atomic_load_n(&e[P_RINST], __ATOMIC_SEQ_CST);
    uint32_t *page = evpage;
    if (rinst != my_inst) {
        if (peer_inst != rinst) {
            char name[64];
            snprintf(name, sizeof name, "evtchn-%u.%u", rdom, rinst);
            if (peer_page) munmap(peer_page, EVTCHN_PAGE_SIZE);
            peer_page = map_path(name, EVTCHN_PAGE_SIZE, 0);
            peer_inst = rinst;
        }
        page = peer_page;
    }
    raise_event(page, rport);
}

/* Consume a pending event on `lport` the way Linux's evtchn driver delivers one. */
static int take_event(uint32_t lport)
{
    uint32_t w = lport / 32, bit = 1u << (lport & 31);
    if (!(__atomic_load_n(&evpage[PENDING_W + w], __ATOMIC_SEQ_CST) & bit)) return 0;
    __atomic_fetch_or(&evpage[MASK_W + w], bit, __ATOMIC_SEQ_CST);
    __atomic_fetch_and(&evpage[PENDING_W + w], ~bit, __ATOMIC_SEQ_CST);
    __atomic_fetch_and(&evpage[MASK_W + w], ~bit, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&evpage[PENDING_W + w], __ATOMIC_SEQ_CST) & bit) {
        /* Raised while masked: re-raise our own upcall, as EVTCHNOP_unmask does. */
        if (__atomic_exchange_n(&slots[my_slot * SLOT_WORDS + S_UPCALL], 1, __ATOMIC_SEQ_CST) == 0) {
            uint8_t one = 1;
            if (write(bell, &one, 1) < 0 && errno != EAGAIN) die("doorbell %s", "write");
        }
    }
    return 1;
}

/* Block until an event arrives on `lport`: clear the upcall flag BEFORE looking at the pending bit. */
static void wait_event(uint32_t lport)
{
    for (;;) {
        __atomic_store_n(&slots[my_slot * SLOT_WORDS + S_UPCALL], 0, __ATOMIC_SEQ_CST);
        if (take_event(lport)) return;
        struct pollfd p = { .fd = bell, .events = POLLIN };
        int r = poll(&p, 1, 30000);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) die("no event in 30 s on %s", "our port: a lost wakeup");
        uint8_t buf[256];
        while (read(bell, buf, sizeof buf) > 0) {}
    }
}

/* ---- the two roles ------------------------------------------------------------------------- */

static int16_t expected_status(uint64_t sector)
{
    return sector % 5 == 0 ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY;
}

static int run_back(uint32_t front, uint32_t ring_ref, uint32_t port, uint32_t count)
{
    uint32_t in[4] = { front, 1, 1, ring_ref }, out[3];
    hc(HC_MAP, in, 4, out, 3);
    char name[64];
    snprintf(name, sizeof name, "mem-%u.%u", front, out[1]);
    blkif_sring_t *sring = map_path(name, PAGE, (off_t)out[2] * PAGE);
    uint32_t bin[2] = { front, port }, lport;
    hc(HC_BIND_INTERDOMAIN, bin, 2, &lport, 1);

    blkif_back_ring_t back;
    BACK_RING_ATTACH(&back, sring, sring->rsp_prod, PAGE);
    uint32_t served = 0;
    while (served < count) {
        while (RING_HAS_UNCONSUMED_REQUESTS(&back)) {
            if (RING_REQUEST_CONS_OVERFLOW(&back, back.req_cons)) die("%s", "request overflow");
            blkif_request_t req;
            RING_COPY_REQUEST(&back, back.req_cons, &req);
            back.req_cons++;
            blkif_response_t *rsp = RING_GET_RESPONSE(&back, back.rsp_prod_pvt);
            memset(rsp, 0, sizeof *rsp);
            rsp->id = req.id;
            rsp->operation = req.operation;
            rsp->status = expected_status(req.sector_number);
            back.rsp_prod_pvt++;
            served++;
        }
        int do_notify, more;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, do_notify);
        if (do_notify) notify(lport);
        if (served >= count) break;
        RING_FINAL_CHECK_FOR_REQUESTS(&back, more);
        if (!more) wait_event(lport);
    }
    printf("served %u req_cons %u rsp_prod %u\n", served, back.req_cons, sring->rsp_prod);
    fflush(stdout);
    /* Wait for the frontend to say it is done, then leave cleanly. */
    char line[16];
    if (!fgets(line, sizeof line, stdin)) {}
    munmap(sring, PAGE);
    hc(HC_UNMAP, &out[0], 1, NULL, 0);
    hc(HC_CLOSE_PORT, &lport, 1, NULL, 0);
    hc(HC_DETACH, NULL, 0, NULL, 0);
    return 0;
}

static int run_front(uint32_t back_domid, uint32_t count, uint32_t start)
{
    uint32_t chunk, frame, run = SIM_CHUNK;
    hc(HC_GRANT_CHUNK, NULL, 0, &chunk, 1);
    hc(HC_FRAME_RUN, &run, 1, &frame, 1);
    uint32_t ref = chunk + 8; /* refs 0..7 are reserved (GNTTAB_NR_RESERVED_ENTRIES) */
    char name[64];
    snprintf(name, sizeof name, "mem-%u.%u", my_domid, my_inst);
    void *page = map_path(name, PAGE, (off_t)frame * PAGE);
    memset(page, 0, PAGE);
    snprintf(name, sizeof name, "gnttab-%u.%u", my_domid, my_inst);
    grant_entry_v1_t *gt = map_path(name, (size_t)nr_grants * sizeof(grant_entry_v1_t), 0);
    gt[ref].domid = (domid_t)back_domid;
    gt[ref].frame = frame;
    __atomic_store_n(&gt[ref].flags, GTF_permit_access, __ATOMIC_SEQ_CST);

    blkif_sring_t *sring = page;
    SHARED_RING_INIT(sring);
    sring->req_prod = sring->rsp_prod = start;
    sring->req_event = sring->rsp_event = start + 1;
    blkif_front_ring_t front;
    FRONT_RING_ATTACH(&front, sring, start, PAGE);
    uint32_t lport;
    hc(HC_ALLOC_UNBOUND, &back_domid, 1, &lport, 1);
    printf("ring-ref %u port %u\n", ref, lport);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) die("%s", "no go from the backend");

    uint8_t *seen = calloc(count, 1);
    uint32_t sent = 0, answered = 0, dup = 0, unknown = 0, wrong = 0;
    while (answered < count) {
        while (sent < count && !RING_FULL(&front)) {
            blkif_request_t *req = RING_GET_REQUEST(&front, front.req_prod_pvt);
            memset(req, 0, sizeof *req);
            req->operation = (sent & 1) ? BLKIF_OP_WRITE : BLKIF_OP_READ;
            req->nr_segments = 1;
            req->id = ((uint64_t)0xC0FFEE << 32) | sent;
            req->sector_number = (uint64_t)sent * 3;
            req->seg[0].gref = ref;
            req->seg[0].first_sect = 0;
            req->seg[0].last_sect = 7;
            front.req_prod_pvt++;
            sent++;
        }
        int do_notify, more;
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, do_notify);
        if (do_notify) notify(lport);
        while (RING_HAS_UNCONSUMED_RESPONSES(&front)) {
            blkif_response_t rsp = *RING_GET_RESPONSE(&front, front.rsp_cons);
            front.rsp_cons++;
            uint32_t i = (uint32_t)rsp.id;
            if ((rsp.id >> 32) != 0xC0FFEE || i >= sent) { unknown++; continue; }
            if (seen[i]) { dup++; continue; }
            seen[i] = 1;
            answered++;
            if (rsp.operation != ((i & 1) ? BLKIF_OP_WRITE : BLKIF_OP_READ) || rsp.status != expected_status((uint64_t)i * 3)) wrong++;
        }
        if (answered >= count || unknown || dup) break;
        RING_FINAL_CHECK_FOR_RESPONSES(&front, more);
        if (!more && (sent == count || RING_FULL(&front))) wait_event(lport);
    }
    printf("answered %u duplicate %u unknown %u wrong %u req_prod %u\n", answered, dup, unknown, wrong, sring->req_prod);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) {}
    hc(HC_CLOSE_PORT, &lport, 1, NULL, 0);
    hc(HC_DETACH, NULL, 0, NULL, 0);
    return answered == count && !dup && !unknown && !wrong ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 8 && strcmp(argv[1], "back") == 0) {
        dir = argv[2];
        attach((uint32_t)strtoul(argv[3], NULL, 0));
        return run_back((uint32_t)strtoul(argv[4], NULL, 0), (uint32_t)strtoul(argv[5], NULL, 0),
                        (uint32_t)strtoul(argv[6], NULL, 0), (uint32_t)strtoul(argv[7], NULL, 0));
    }
    if (argc >= 7 && strcmp(argv[1], "front") == 0) {
        dir = argv[2];
        attach((uint32_t)strtoul(argv[3], NULL, 0));
        return run_front((uint32_t)strtoul(argv[4], NULL, 0), (uint32_t)strtoul(argv[5], NULL, 0),
                         (uint32_t)strtoul(argv[6], NULL, 0));
    }
    fprintf(stderr, "usage: sim-peer back DIR DOMID FRONT_DOMID RING_REF PORT COUNT\n"
                    "       sim-peer front DIR DOMID BACK_DOMID COUNT START\n");
    return 2;
}
