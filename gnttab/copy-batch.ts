// A batch of grant copies: pieces of other domains' granted pages copied to or from one local
// buffer by the hypervisor, without mapping them (grant_table.h GNTTABOP_copy; Linux gntdev
// IOCTL_GNTDEV_GRANT_COPY). QEMU's qdisk serves blkif this way: the guest's pages are never in
// the backend's address space, so nothing is pinned per page and nothing stays mapped.
//
// The batch is plain typed arrays reused from request to request (the data path must not
// allocate an object per segment). grant_table.h: a piece lies within one page of the grant
// (offset + length <= 4096); the local side may be any bytes of the buffer.
import { PAGE_SIZE } from './gnttab.ts';
import { GnttabError } from './error.ts';

/** Pieces one batch may hold: a whole blkif request of the most indirect segments we serve (BLKIF_MAX_INDIRECT_SEGMENTS, 4096). */
export const GRANT_COPY_MAX = 4096;

/** A reusable list of (grant ref, offset in its page, length, offset in the local buffer). */
export class GrantCopyBatch {
  count = 0;
  readonly refs: Uint32Array;
  readonly offsets: Uint16Array;
  readonly lengths: Uint16Array;
  readonly localOffsets: Float64Array;

  /** `new GrantCopyBatch(capacity)` holds up to `capacity` pieces. */
  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > GRANT_COPY_MAX) {
      throw new RangeError(`grant copy batch of ${capacity} pieces: outside 1..${GRANT_COPY_MAX}`);
    }
    this.refs = new Uint32Array(capacity);
    this.offsets = new Uint16Array(capacity);
    this.lengths = new Uint16Array(capacity);
    this.localOffsets = new Float64Array(capacity);
  }

  /** `add(ref, offset, length, localOffset)` appends a piece; a piece crossing its page's end is refused, as Xen refuses it. */
  add(ref: number, offset: number, length: number, localOffset: number): void {
    if (this.count >= this.capacity) throw new RangeError(`grant copy batch full (${this.capacity} pieces)`);
    if (!(offset >= 0 && length > 0 && offset + length <= PAGE_SIZE) || !Number.isInteger(offset) || !Number.isInteger(length)) {
      throw new RangeError(`grant copy of ${length} bytes at offset ${offset} of ref ${ref}: not within one ${PAGE_SIZE}-byte page`);
    }
    const i = this.count++;
    this.refs[i] = ref;
    this.offsets[i] = offset;
    this.lengths[i] = length;
    this.localOffsets[i] = localOffset;
  }

  /** `clear()` empties the batch for reuse. */
  clear(): void {
    this.count = 0;
  }
}

/**
 * `checkCopy(domid, batch, local)` throws GnttabError EINVAL when a piece's local side falls
 * outside `local` (checked before the hypervisor is asked: a copy must never touch memory
 * beyond the caller's buffer).
 */
export function checkCopy(domid: number, batch: GrantCopyBatch, local: Uint8Array): void {
  if (batch.count < 1) throw new GnttabError('EINVAL', 'copy', domid, undefined, 'empty grant copy batch');
  for (let i = 0; i < batch.count; i++) {
    const at = batch.localOffsets[i]!;
    if (!Number.isInteger(at) || at < 0 || at + batch.lengths[i]! > local.byteLength) {
      throw new GnttabError('EINVAL', 'copy', domid, batch.refs[i], `local range ${at}+${batch.lengths[i]} outside the ${local.byteLength}-byte buffer`);
    }
  }
}
