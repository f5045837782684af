/*
 * xenblk conformance: the reference side of test/conformance/blkif-codec.test.ts.
 *
 *   blkif-conformance layout
 *       "layout <abi> <name> <value>" for every entry of blkif-layout.h, evaluated on Xen's
 *       blkif.h as compiled here (x86_64) and on our x86_32 mirror; then
 *       "ring_size <abi> <order> <n>" from __RING_SIZE on a real ring of 4096 << order bytes.
 *   blkif-conformance vectors <seed> <requests> <responses>
 *       A seeded pseudo-random set of requests and responses for each ABI, filled into the
 *       header's structs by C assignment, zero-initialised first (what a careful frontend or
 *       backend does), and printed with their field values and their bytes:
 *         req abi=.. expect=.. op=.. [fields] entry=<hex of the ring entry> [pages=<hex>]
 *         rsp abi=.. id=.. op=.. status=.. entry=<hex of struct blkif_response>
 *       expect=ok for a well-formed request; otherwise the request was built valid and then
 *       broken in exactly one field, and expect names that field (blkif.h's spelling).
 *
 * Our program, our code; layouts and numbers come from Xen's public headers.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xen/io/blkif.h>
#include "blkif-layout.h"
#include "blkif-mirror-x86_32.h"

#define SEGS_PER_PAGE (4096 / sizeof(struct blkif_request_segment))
#define MAX_INDIRECT_SEGS (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGS_PER_PAGE)

_Static_assert(sizeof(struct blkif_request_segment) == sizeof(struct x32_blkif_request_segment),
               "a segment is the same on both ABIs");

/* ---- layout ---------------------------------------------------------------------------- */

static const char *abi_name;
#define XB_PRINT(name, value) printf("layout %s %s %u\n", abi_name, name, (unsigned int)(value));

static void print_layout(void)
{
    abi_name = "x86_64";
    BLKIF_LAYOUT(XB_PRINT, struct blkif_request, struct blkif_request_segment,
                 struct blkif_request_discard, struct blkif_request_indirect,
                 struct blkif_response, blkif)
    abi_name = "x86_32";
    BLKIF_LAYOUT(XB_PRINT, struct x32_blkif_request, struct x32_blkif_request_segment,
                 struct x32_blkif_request_discard, struct x32_blkif_request_indirect,
                 struct x32_blkif_response, blkif_x86_32)

    /* __RING_SIZE evaluated at run time on a ring in memory, as FRONT/BACK_RING_INIT do. */
    for (int order = 0; order <= 4; order++) {
        size_t bytes = (size_t)4096 << order;
        void *page = aligned_alloc(4096, bytes);
        if (!page) { perror("aligned_alloc"); exit(1); }
        blkif_sring_t *s64 = page;
        blkif_x86_32_sring_t *s32 = page;
        printf("ring_size x86_64 %d %u\n", order, (unsigned int)__RING_SIZE(s64, bytes));
        printf("ring_size x86_32 %d %u\n", order, (unsigned int)__RING_SIZE(s32, bytes));
        free(page);
    }
}

/* ---- seeded generator -------------------------------------------------------------------- */

static uint64_t rng_state;
static uint64_t rnd64(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint32_t rnd(uint32_t n) { return (uint32_t)(rnd64() % n); }

/* Sector-like u64 values that a double carries exactly (< 2^53), biased to the edges. */
static uint64_t rnd_sector(void)
{
    switch (rnd(5)) {
    case 0: return rnd(1u << 20);
    case 1: return 0xFFFFFFFFull - 4 + rnd(8);                 /* across the 32-bit boundary */
    case 2: return (1ull << 53) - 1 - rnd(16);                 /* just below 2^53 */
    default: return rnd64() & ((1ull << 53) - 1);
    }
}

/* A request in neutral form, filled into either ABI's structs by the fill_* functions. */
struct vec {
    uint8_t op, indirect_op, flag;
    unsigned nseg;          /* nr_segments as put on the wire */
    uint16_t handle;
    uint64_t id, sector, nr_sectors;
    uint32_t grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
    unsigned npages;        /* indirect pages referenced */
    unsigned max;           /* feature-max-indirect-segments the decoder is given */
    unsigned nwritten;      /* segments actually stored (in the entry or the indirect pages) */
    struct blkif_request_segment seg[MAX_INDIRECT_SEGS];
    char expect[32];
};
static struct vec v;

static void random_segments(unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        v.seg[i].gref = (uint32_t)rnd64();
        v.seg[i].first_sect = (uint8_t)rnd(8);
        v.seg[i].last_sect = (uint8_t)(v.seg[i].first_sect + rnd(8 - v.seg[i].first_sect));
    }
    v.nwritten = n;
}

/* Break segment i in one field and name it as protocol/blkif.ts does. */
static void break_segment(unsigned i)
{
    if (rnd(2)) {
        v.seg[i].last_sect = (uint8_t)(8 + rnd(248));
        snprintf(v.expect, sizeof v.expect, "seg[%u].last_sect", i);
    } else {
        v.seg[i].last_sect = (uint8_t)rnd(7);
        v.seg[i].first_sect = (uint8_t)(v.seg[i].last_sect + 1 + rnd(7 - v.seg[i].last_sect));
        snprintf(v.expect, sizeof v.expect, "seg[%u].first_sect", i);
    }
}

static void generate(void)
{
    static const unsigned edge_counts[] = { 1, 2, 511, 512, 513, 1024, 4095, 4096 };
    static const uint8_t ops[] = { BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
                                   BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT };
    int broken = rnd(4) == 0;

    memset(&v, 0, offsetof(struct vec, seg));
    strcpy(v.expect, "ok");
    v.op = ops[rnd(sizeof ops)];
    v.id = rnd64();
    v.handle = (uint16_t)rnd64();
    v.sector = rnd_sector();
    v.max = MAX_INDIRECT_SEGS;

    switch (v.op) {
    case BLKIF_OP_READ: case BLKIF_OP_WRITE:
    case BLKIF_OP_WRITE_BARRIER: case BLKIF_OP_FLUSH_DISKCACHE: {
        int rw = v.op == BLKIF_OP_READ || v.op == BLKIF_OP_WRITE;
        v.nseg = rw ? 1 + rnd(BLKIF_MAX_SEGMENTS_PER_REQUEST) : rnd(BLKIF_MAX_SEGMENTS_PER_REQUEST + 1);
        random_segments(v.nseg);
        if (broken) {
            unsigned kind = rnd(3);
            if (kind == 0) {
                v.nseg = rw && rnd(2) ? 0 : BLKIF_MAX_SEGMENTS_PER_REQUEST + 1 + rnd(255 - BLKIF_MAX_SEGMENTS_PER_REQUEST);
                v.nwritten = v.nseg < BLKIF_MAX_SEGMENTS_PER_REQUEST ? v.nseg : BLKIF_MAX_SEGMENTS_PER_REQUEST;
                random_segments(v.nwritten);
                strcpy(v.expect, "nr_segments");
            } else if (kind == 1 && v.nseg > 0) {
                break_segment(rnd(v.nseg));
            } else {
                v.op = rnd(2) ? BLKIF_OP_RESERVED_1 : (uint8_t)(7 + rnd(249));
                v.nwritten = 0; /* an unknown operation has no segments to speak of */
                strcpy(v.expect, "operation");
            }
        }
        break;
    }
    case BLKIF_OP_DISCARD:
        v.flag = rnd(2) ? BLKIF_DISCARD_SECURE : 0;
        v.nr_sectors = rnd_sector();
        if (broken) {
            v.op = rnd(2) ? BLKIF_OP_RESERVED_1 : (uint8_t)(7 + rnd(249));
            strcpy(v.expect, "operation");
        }
        break;
    case BLKIF_OP_INDIRECT:
        v.indirect_op = rnd(2) ? BLKIF_OP_WRITE : BLKIF_OP_READ;
        v.nseg = rnd(10) < 3 ? edge_counts[rnd(8)] : 1 + rnd(600);
        if (rnd(3) == 0) v.max = v.nseg + rnd(MAX_INDIRECT_SEGS - v.nseg + 1); /* a smaller advertised max */
        random_segments(v.nseg);
        if (broken) {
            unsigned kind = rnd(3);
            if (kind == 0) {
                v.indirect_op = (uint8_t)(BLKIF_OP_WRITE + 1 + rnd(254));
                strcpy(v.expect, "indirect_op");
            } else if (kind == 1) {
                if (rnd(2)) { v.nseg = 0; }
                else { v.max = 1 + rnd(MAX_INDIRECT_SEGS); v.nseg = v.max + 1 + rnd(65535 - v.max); }
                v.nwritten = 0;
                strcpy(v.expect, "nr_segments");
            } else {
                break_segment(rnd(v.nseg));
            }
        }
        v.npages = v.nseg == 0 ? 0 : (v.nseg + SEGS_PER_PAGE - 1) / SEGS_PER_PAGE;
        if (v.npages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) v.npages = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST;
        for (unsigned i = 0; i < v.npages; i++) v.grefs[i] = (uint32_t)rnd64();
        break;
    }
}

/* ---- filling the header's structs ---------------------------------------------------------- */

/* One filler per ABI, same code over different struct types. */
#define DEFINE_FILL(ABI, REQ, SEG, DISCARD, INDIRECT)                                     \
static void fill_##ABI(unsigned char *entry, size_t entry_size)                           \
{                                                                                         \
    memset(entry, 0, entry_size);                                                         \
    switch (v.op) {                                                                       \
    case BLKIF_OP_READ: case BLKIF_OP_WRITE:                                              \
    case BLKIF_OP_WRITE_BARRIER: case BLKIF_OP_FLUSH_DISKCACHE: {                         \
        REQ r;                                                                            \
        memset(&r, 0, sizeof r);                                                          \
        r.operation = v.op;                                                               \
        r.nr_segments = (uint8_t)v.nseg;                                                  \
        r.handle = v.handle;                                                              \
        r.id = v.id;                                                                      \
        r.sector_number = v.sector;                                                       \
        for (unsigned i = 0; i < v.nwritten; i++) {                                       \
            r.seg[i].gref = v.seg[i].gref;                                                \
            r.seg[i].first_sect = v.seg[i].first_sect;                                    \
            r.seg[i].last_sect = v.seg[i].last_sect;                                      \
        }                                                                                 \
        memcpy(entry, &r, sizeof r);                                                      \
        break;                                                                            \
    }                                                                                     \
    case BLKIF_OP_DISCARD: {                                                              \
        DISCARD d;                                                                        \
        memset(&d, 0, sizeof d);                                                          \
        d.operation = v.op;                                                               \
        d.flag = v.flag;                                                                  \
        d.handle = v.handle;                                                              \
        d.id = v.id;                                                                      \
        d.sector_number = v.sector;                                                       \
        d.nr_sectors = v.nr_sectors;                                                      \
        memcpy(entry, &d, sizeof d);                                                      \
        break;                                                                            \
    }                                                                                     \
    case BLKIF_OP_INDIRECT: {                                                             \
        INDIRECT in;                                                                      \
        memset(&in, 0, sizeof in);                                                        \
        in.operation = v.op;                                                              \
        in.indirect_op = v.indirect_op;                                                   \
        in.nr_segments = (uint16_t)v.nseg;                                                \
        in.id = v.id;                                                                     \
        in.sector_number = v.sector;                                                      \
        in.handle = v.handle;                                                             \
        for (unsigned i = 0; i < v.npages; i++) in.indirect_grefs[i] = v.grefs[i];       \
        memcpy(entry, &in, sizeof in);                                                    \
        break;                                                                            \
    }                                                                                     \
    default: { /* an unknown operation: the rw layout, as the frontend wrote it */        \
        REQ r;                                                                            \
        memset(&r, 0, sizeof r);                                                          \
        r.operation = v.op;                                                               \
        r.nr_segments = (uint8_t)v.nseg;                                                  \
        r.handle = v.handle;                                                              \
        r.id = v.id;                                                                      \
        r.sector_number = v.sector;                                                       \
        memcpy(entry, &r, sizeof r);                                                      \
        break;                                                                            \
    }                                                                                     \
    }                                                                                     \
}

DEFINE_FILL(x86_64, struct blkif_request, struct blkif_request_segment,
            struct blkif_request_discard, struct blkif_request_indirect)
DEFINE_FILL(x86_32, struct x32_blkif_request, struct x32_blkif_request_segment,
            struct x32_blkif_request_discard, struct x32_blkif_request_indirect)

static void hex(const char *key, const void *p, size_t n)
{
    const unsigned char *b = p;
    printf(" %s=", key);
    for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
}

static void print_request(const char *abi, const unsigned char *entry, size_t entry_size)
{
    printf("req abi=%s expect=%s op=%u id=%016" PRIx64 " handle=%u sector=%" PRIu64,
           abi, v.expect, v.op, v.id, v.handle, v.sector);
    if (v.op == BLKIF_OP_DISCARD) {
        printf(" flag=%u nr_sectors=%" PRIu64, v.flag, v.nr_sectors);
    } else if (v.op == BLKIF_OP_INDIRECT) {
        printf(" indirect_op=%u nseg=%u max=%u grefs=", v.indirect_op, v.nseg, v.max);
        for (unsigned i = 0; i < v.npages; i++) printf("%s%" PRIx32, i ? "," : "", v.grefs[i]);
    } else {
        printf(" nseg=%u", v.nseg);
    }
    if (v.nwritten) {
        printf(" segs=");
        for (unsigned i = 0; i < v.nwritten; i++)
            printf("%s%" PRIx32 ":%u:%u", i ? "," : "", v.seg[i].gref, v.seg[i].first_sect, v.seg[i].last_sect);
    }
    hex("entry", entry, entry_size);
    if (v.op == BLKIF_OP_INDIRECT && v.nwritten) {
        /* The indirect pages: an array of struct blkif_request_segment, 512 per 4 KiB page. */
        static struct blkif_request_segment pages[MAX_INDIRECT_SEGS];
        memset(pages, 0, sizeof pages);
        for (unsigned i = 0; i < v.nwritten; i++) {
            pages[i].gref = v.seg[i].gref;
            pages[i].first_sect = v.seg[i].first_sect;
            pages[i].last_sect = v.seg[i].last_sect;
        }
        hex("pages", pages, v.nwritten * sizeof pages[0]);
    }
    printf("\n");
}

static void print_vectors(uint64_t seed, unsigned nreq, unsigned nrsp)
{
    rng_state = seed;
    for (unsigned i = 0; i < nreq; i++) {
        union blkif_sring_entry e64;
        union blkif_x86_32_sring_entry e32;
        generate();
        fill_x86_64((unsigned char *)&e64, sizeof e64);
        print_request("x86_64", (unsigned char *)&e64, sizeof e64);
        generate();
        fill_x86_32((unsigned char *)&e32, sizeof e32);
        print_request("x86_32", (unsigned char *)&e32, sizeof e32);
    }
    for (unsigned i = 0; i < nrsp; i++) {
        static const int16_t statuses[] = { BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP };
        uint64_t id = rnd64();
        uint8_t op = (uint8_t)rnd64();
        int16_t status = rnd(2) ? statuses[rnd(3)] : (int16_t)(uint16_t)rnd64();
        struct blkif_response r64;
        struct x32_blkif_response r32;
        memset(&r64, 0, sizeof r64);
        r64.id = id; r64.operation = op; r64.status = status;
        printf("rsp abi=x86_64 id=%016" PRIx64 " op=%u status=%d", id, op, status);
        hex("entry", &r64, sizeof r64);
        printf("\n");
        memset(&r32, 0, sizeof r32);
        r32.id = id; r32.operation = op; r32.status = status;
        printf("rsp abi=x86_32 id=%016" PRIx64 " op=%u status=%d", id, op, status);
        hex("entry", &r32, sizeof r32);
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "layout")) {
        print_layout();
    } else if (argc == 5 && !strcmp(argv[1], "vectors")) {
        print_vectors(strtoull(argv[2], NULL, 0), (unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]));
    } else {
        fprintf(stderr, "usage: %s layout | vectors <seed> <requests> <responses>\n", argv[0]);
        return 2;
    }
    return ferror(stdout) ? 1 : 0;
}
