/*
 * The x86_32 blkif ABI as seen from a 64-bit backend. An i386 compiler aligns uint64_t to 4
 * bytes, so blkif.h's structs are laid out tighter there than on x86_64 (id at 4 instead of 8,
 * a 108-byte request). A 64-bit backend serving a 32-bit frontend needs that layout; Linux's
 * xen-blkback declares packed copies in common.h. Ours: the same declarations as blkif.h,
 * under #pragma pack(4), which caps every member's alignment at 4 exactly as i386 does.
 * blkif-conformance checks this mirror against blkif.h itself compiled with gcc -m32.
 */
#ifndef XENBLK_BLKIF_MIRROR_X86_32_H
#define XENBLK_BLKIF_MIRROR_X86_32_H

#include <stdint.h>
#include <xen/io/blkif.h>

#pragma pack(push, 4)
struct x32_blkif_request_segment {
    uint32_t gref;
    uint8_t first_sect, last_sect;
};
struct x32_blkif_request {
    uint8_t operation;
    uint8_t nr_segments;
    uint16_t handle;
    uint64_t id;
    uint64_t sector_number;
    struct x32_blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
};
struct x32_blkif_request_discard {
    uint8_t operation;
    uint8_t flag;
    uint16_t handle;
    uint64_t id;
    uint64_t sector_number;
    uint64_t nr_sectors;
};
struct x32_blkif_request_indirect {
    uint8_t operation;
    uint8_t indirect_op;
    uint16_t nr_segments;
    uint64_t id;
    uint64_t sector_number;
    uint16_t handle;
    uint32_t indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
    uint64_t pad; /* blkif.h adds this under __i386__ */
};
struct x32_blkif_response {
    uint64_t id;
    uint8_t operation;
    int16_t status;
};
#pragma pack(pop)

DEFINE_RING_TYPES(blkif_x86_32, struct x32_blkif_request, struct x32_blkif_response);

#endif
