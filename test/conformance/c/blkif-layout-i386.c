/*
 * blkif.h compiled for i386 (gcc -m32 -ffreestanding -S; never linked): the layout table as a
 * const array whose `.long` values the conformance test reads from the assembly. This is the
 * ground truth for the x86_32 ABI, straight from Xen's header, without 32-bit libraries.
 */
#include <stdint.h>
#include <xen/io/blkif.h>
#include "blkif-layout.h"

#define XB_VALUE(name, value) (unsigned int)(value),

const unsigned int xenblk_blkif_layout_i386[] = {
    BLKIF_LAYOUT(XB_VALUE, struct blkif_request, struct blkif_request_segment,
                 struct blkif_request_discard, struct blkif_request_indirect,
                 struct blkif_response, blkif)
};
