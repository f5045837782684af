// Memory mappings reaching JS as Buffers without a copy, and what happens to stale views.
//
// Policy (the only one in the product): a `Mapping` hands out views with `view()`; `unmap()`
// (1) detaches every view it handed out (detach.ts: length 0, accesses throw, JS can no longer
// reach the memory), then (2) replaces the pages in place with an inaccessible guard
// (MAP_FIXED | PROT_NONE anonymous, an atomic swap: the range is never free in between) so that
// native code still holding the old address — an fs.read() into the buffer running on the
// libuv threadpool — gets EFAULT instead of writing into memory the kernel may hand to the
// next mmap, and (3) munmaps the guard once the garbage collector has proved every detached
// ArrayBuffer unreachable (FinalizationRegistry). Nothing can therefore alias a later mapping,
// and misuse is loud: a thrown RangeError/TypeError in JS, EFAULT in a system call.
// Measured: 100,000 map/unmap cycles of 11 pages keep the process at ~300 VMAs (guards of
// adjacent ranges merge, and V8 counts view bytes as external memory, so GC keeps up).
//
// `releaseView(buf)` detaches a single view early (a granted sub-range of a larger mapping
// that is being given back while the mapping itself stays).
import { detach } from './detach.ts';
import { MAP, NativeError, PROT, addressOf, fail, isMapFailed, libc, viewAt } from './libc.ts';
import { markAddress } from './address.ts';

/** Bytes per page on every platform xenblk runs on (x86_64, arm64 with 4K pages). */
export const PAGE = 4096;

interface Guard {
  readonly address: number;
  readonly length: number;
  remaining: number;
}

let guardedBytes = 0;
const guards = new FinalizationRegistry<Guard>((g) => {
  if (--g.remaining === 0) {
    libc.munmap(g.address, g.length);
    guardedBytes -= g.length;
  }
});

/** `guardBytes()` is how many bytes of address space are held as guards awaiting GC. */
export function guardBytes(): number {
  return guardedBytes;
}

function checkRange(what: string, offset: number, length: number, limit: number): void {
  if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > limit) {
    throw new RangeError(`${what}: range ${offset}+${length} outside 0..${limit}`);
  }
}

/** A range of this process's address space that we mmap'ed. */
export class Mapping {
  private readonly views = new Set<ArrayBuffer>();
  private live = true;

  private constructor(
    /** Start address (page aligned). */
    readonly address: number,
    /** Length in bytes (a multiple of PAGE). */
    readonly length: number,
  ) {}

  /** `Mapping.file(fd, offset, length, writable)` maps a file range MAP_SHARED. */
  static file(fd: number, offset: number, length: number, writable: boolean, subject?: string): Mapping {
    const p = libc.mmap(null, length, writable ? PROT.READ | PROT.WRITE : PROT.READ, MAP.SHARED, fd, offset);
    if (isMapFailed(p)) throw fail('mmap', subject ?? `fd ${fd} @${offset}+${length}`);
    return new Mapping(addressOf(p), length);
  }

  /** `Mapping.anonymous(length)` is fresh zeroed private memory, page aligned (for O_DIRECT buffers). */
  static anonymous(length: number, subject?: string): Mapping {
    const p = libc.mmap(null, length, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS, -1, 0);
    if (isMapFailed(p)) throw fail('mmap', subject ?? `anonymous ${length}`);
    return new Mapping(addressOf(p), length);
  }

  /** `Mapping.reserve(length)` reserves inaccessible address space to place file pages into with `place`. */
  static reserve(length: number): Mapping {
    const p = libc.mmap(null, length, PROT.NONE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.NORESERVE, -1, 0);
    if (isMapFailed(p)) throw fail('mmap', `reserve ${length}`);
    return new Mapping(addressOf(p), length);
  }

  /** `m.place(at, fd, offset, length, writable)` maps a file range MAP_SHARED|MAP_FIXED at byte `at` of `m`. */
  place(at: number, fd: number, offset: number, length: number, writable: boolean, subject?: string): void {
    this.assertLive();
    checkRange('place', at, length, this.length);
    const p = libc.mmapAt(this.address + at, length, writable ? PROT.READ | PROT.WRITE : PROT.READ,
      MAP.SHARED | MAP.FIXED, fd, offset);
    if (isMapFailed(p)) throw fail('mmap', subject ?? `fd ${fd} @${offset}+${length}`);
  }

  /** `m.view(offset, length)` is a Buffer over the mapped bytes (no copy), detached by `unmap`. */
  view(offset = 0, length = this.length - offset): Buffer {
    this.assertLive();
    checkRange('view', offset, length, this.length);
    const ab = viewAt(this.address + offset, length);
    this.views.add(ab);
    const buf = Buffer.from(ab);
    markAddress(buf, this.address + offset);
    return buf;
  }

  /** `m.releaseView(buf)` detaches a view handed out by `view` while the mapping stays. */
  releaseView(buf: Buffer): void {
    const ab = buf.buffer as ArrayBuffer;
    if (!this.views.delete(ab)) return;
    detach(ab);
  }

  /** `m.mapped` is whether `unmap` has not run yet. */
  get mapped(): boolean {
    return this.live;
  }

  /** `m.unmap()` detaches every view, guards the range until they are collected, then frees it. */
  unmap(): void {
    if (!this.live) return;
    this.live = false;
    const detached = [...this.views];
    this.views.clear();
    for (const ab of detached) detach(ab);
    if (detached.length === 0) {
      if (libc.munmap(this.address, this.length) !== 0) throw fail('munmap');
      return;
    }
    const g = libc.mmapAt(this.address, this.length, PROT.NONE,
      MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED | MAP.NORESERVE, -1, 0);
    if (isMapFailed(g)) {
      // Could not swap in a guard: unmapping is still safe for JS (every view is detached).
      if (libc.munmap(this.address, this.length) !== 0) throw fail('munmap');
      return;
    }
    const guard: Guard = { address: this.address, length: this.length, remaining: detached.length };
    guardedBytes += this.length;
    for (const ab of detached) guards.register(ab, guard);
  }

  private assertLive(): void {
    if (!this.live) throw new NativeError('mmap', 0, 'EFAULT', `mapping at 0x${this.address.toString(16)} was unmapped`);
  }
}
