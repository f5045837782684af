/*
 * The sizes and offsets of blkif.h's structs that xenblk's codecs depend on, as one X-macro
 * table so the same list is evaluated against several layouts:
 *   - Xen's header compiled natively on x86_64 (the x86_64 ABI),
 *   - our x86_32 mirror structs (blkif-mirror-x86_32.h) compiled natively,
 *   - Xen's header compiled for i386 (gcc -m32 -S), the ground truth for the x86_32 ABI.
 * X(name, value): name is "struct.field" or "struct.sizeof" as protocol/blkif.ts's
 * blkifLayout() spells it. RING is the DEFINE_RING_TYPES name (blkif, blkif_x86_32).
 */
#ifndef XENBLK_BLKIF_LAYOUT_H
#define XENBLK_BLKIF_LAYOUT_H

#include <stddef.h>

#define XB_SRING(RING) struct RING##_sring

#define BLKIF_LAYOUT(X, REQ, SEG, DISCARD, INDIRECT, RSP, RING)                      \
    X("blkif_request.sizeof", sizeof(REQ))                                            \
    X("blkif_request.operation", offsetof(REQ, operation))                            \
    X("blkif_request.nr_segments", offsetof(REQ, nr_segments))                        \
    X("blkif_request.handle", offsetof(REQ, handle))                                  \
    X("blkif_request.id", offsetof(REQ, id))                                          \
    X("blkif_request.sector_number", offsetof(REQ, sector_number))                    \
    X("blkif_request.seg", offsetof(REQ, seg))                                        \
    X("blkif_request_segment.sizeof", sizeof(SEG))                                    \
    X("blkif_request_segment.gref", offsetof(SEG, gref))                              \
    X("blkif_request_segment.first_sect", offsetof(SEG, first_sect))                  \
    X("blkif_request_segment.last_sect", offsetof(SEG, last_sect))                    \
    X("blkif_request_discard.sizeof", sizeof(DISCARD))                                \
    X("blkif_request_discard.operation", offsetof(DISCARD, operation))                \
    X("blkif_request_discard.flag", offsetof(DISCARD, flag))                          \
    X("blkif_request_discard.handle", offsetof(DISCARD, handle))                      \
    X("blkif_request_discard.id", offsetof(DISCARD, id))                              \
    X("blkif_request_discard.sector_number", offsetof(DISCARD, sector_number))        \
    X("blkif_request_discard.nr_sectors", offsetof(DISCARD, nr_sectors))              \
    X("blkif_request_indirect.sizeof", sizeof(INDIRECT))                              \
    X("blkif_request_indirect.operation", offsetof(INDIRECT, operation))              \
    X("blkif_request_indirect.indirect_op", offsetof(INDIRECT, indirect_op))          \
    X("blkif_request_indirect.nr_segments", offsetof(INDIRECT, nr_segments))          \
    X("blkif_request_indirect.id", offsetof(INDIRECT, id))                            \
    X("blkif_request_indirect.sector_number", offsetof(INDIRECT, sector_number))      \
    X("blkif_request_indirect.handle", offsetof(INDIRECT, handle))                    \
    X("blkif_request_indirect.indirect_grefs", offsetof(INDIRECT, indirect_grefs))    \
    X("blkif_response.sizeof", sizeof(RSP))                                           \
    X("blkif_response.id", offsetof(RSP, id))                                         \
    X("blkif_response.operation", offsetof(RSP, operation))                           \
    X("blkif_response.status", offsetof(RSP, status))                                 \
    X("blkif_sring_entry.sizeof", sizeof(((XB_SRING(RING) *)0)->ring[0]))             \
    X("blkif_sring.req_prod", offsetof(XB_SRING(RING), req_prod))                     \
    X("blkif_sring.req_event", offsetof(XB_SRING(RING), req_event))                   \
    X("blkif_sring.rsp_prod", offsetof(XB_SRING(RING), rsp_prod))                     \
    X("blkif_sring.rsp_event", offsetof(XB_SRING(RING), rsp_event))                   \
    X("blkif_sring.ring", offsetof(XB_SRING(RING), ring))                             \
    X("ring_size.order0", __CONST_RING_SIZE(RING, 4096 << 0))                         \
    X("ring_size.order1", __CONST_RING_SIZE(RING, 4096 << 1))                         \
    X("ring_size.order2", __CONST_RING_SIZE(RING, 4096 << 2))                         \
    X("ring_size.order3", __CONST_RING_SIZE(RING, 4096 << 3))                         \
    X("ring_size.order4", __CONST_RING_SIZE(RING, 4096 << 4))

#endif
