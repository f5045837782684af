// Where a buffer's memory starts, for the system calls that take addresses (io_submit's iocbs
// and iovecs). Asking koffi costs a native call, and blkback passes the same grant mappings
// again and again (a merged 1 MiB read is 256 of them), so the address is kept under a
// private symbol where it is known for free:
//  - on each view a Mapping hands out (memory.ts), which is where grant mappings come from:
//    reading it there also skips the `buffer` getter, a call into V8's C++ runtime for a view
//    of external memory (~1.5% of blkback on 1 MiB reads, `perf`);
//  - on the ArrayBuffer of any other buffer, the first time it is asked for: later views of it
//    (a per-request subarray) cost a property read. A property read is cheaper than a WeakMap
//    lookup, which under the real-Xen benchmark's emulation cost more than the io_submit it fed.
// Callers' own views are never changed. Reading `buffer` before asking koffi moves a small
// on-heap typed array's bytes off the heap for good, so the address taken is stable.
import { bufferAddress } from './libc.ts';

const ADDRESS = Symbol('xenblk.address');
type Tagged = { [ADDRESS]?: number };

/** `markAddress(view, address)` records that `view`'s bytes start at `address` (not enumerable: the view compares as before). */
export function markAddress(view: Uint8Array, address: number): void {
  Object.defineProperty(view, ADDRESS, { value: address });
}

/** `bytesAddress(b)` is the address of `b`'s first byte. */
export function bytesAddress(b: Uint8Array): number {
  const own = (b as Uint8Array & Tagged)[ADDRESS];
  if (own !== undefined) return own;
  const ab = b.buffer as ArrayBufferLike & Tagged;
  let base = ab[ADDRESS];
  if (base === undefined) {
    base = bufferAddress(b) - b.byteOffset;
    if (Object.isExtensible(ab)) ab[ADDRESS] = base;
  }
  return base + b.byteOffset;
}
