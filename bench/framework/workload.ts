// An fio-like workload engine shared by every side of a full-stack comparison, so the frontend
// (blkfront) and the direct reference (the same file through the same Node I/O calls) run the
// exact same loop: `qd` lanes, each issuing one I/O at a time until the deadline, offsets
// uniformly random (block-aligned, xorshift32) or sequential (one shared cursor, wrapping at
// the end of the span, kept across samples so consecutive samples move on through the file).
// Buffers are page-aligned (anonymous mmap, on 2 MiB pages where granted) so that O_DIRECT
// accepts them on the direct side;
// a target may allocate its own instead (blkfront's I/O buffers, granted to the backend once,
// as fio's engines choose their `iomem`).
import fs from 'node:fs';
import { MADV, MAP, PROT, addressOf, isMapFailed, libc, viewAt } from '../../native/libc.ts';

/** One workload. */
export interface Workload {
  readonly op: 'read' | 'write';
  readonly pattern: 'rand' | 'seq';
  /** Block size in bytes (a multiple of 4096). */
  readonly bs: number;
  readonly qd: number;
  /** Duration of the sample in ms (lanes finish the I/O they have in flight). */
  readonly ms: number;
  /** Bytes of the target used, from offset 0. */
  readonly span: number;
  readonly seed: number;
}

/** What a sample did. */
export interface WorkloadResult {
  readonly ops: number;
  readonly bytes: number;
  readonly ns: number;
  /** CPU time (user + system, all threads) this process used meanwhile, in microseconds. */
  readonly cpuUs: number;
}

/** Where the I/O goes: byte offsets, whole buffers. */
export interface IoTarget {
  read(offset: number, buf: Uint8Array): Promise<unknown>;
  write(offset: number, buf: Uint8Array): Promise<unknown>;
  /** Page-aligned memory for the lanes' buffers, when the target has its own kind (default: alignedBuffer). */
  readonly alloc?: (bytes: number) => Buffer;
}

const SUPERPAGE = 2 << 20;
/** The rest of the current 2 MiB-backed region: [next, end) of its address space. */
let arena = { next: 0, end: 0 };

/**
 * `alignedBuffer(bytes)` is a page-aligned, zeroed Buffer of anonymous memory (kept for the
 * process's life), carved from regions on 2 MiB pages where the kernel grants them
 * (MADV_HUGEPAGE; transparent huge pages in "madvise" or "always" mode). Physically contiguous
 * memory is what lets the block layer merge sequential direct I/O into large requests (a
 * request holds at most the device's max_segments physical pieces, 254 on a virtio disk), and
 * the simulator's guest RAM is on 2 MiB pages in the full-stack benchmark too
 * (lib/sim/superpages.ts): with 4 KiB pages, whether the direct side's buffers came out of the
 * host's allocator contiguous or scattered decided how large its disk requests were, and its
 * 1 MiB figure moved with that from one run to the next.
 */
export function alignedBuffer(bytes: number): Buffer {
  const len = Math.ceil(bytes / 4096) * 4096;
  if (arena.end - arena.next < len) {
    const size = Math.ceil(len / SUPERPAGE) * SUPERPAGE + 3 * SUPERPAGE;
    const p = libc.mmap(null, size + SUPERPAGE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS, -1, 0);
    if (isMapFailed(p)) throw new Error(`mmap of ${size} bytes failed`);
    const start = Math.ceil(addressOf(p) / SUPERPAGE) * SUPERPAGE;
    // Refused (THP "never", an old kernel): ordinary pages, as before.
    libc.madvise(start, size, MADV.HUGEPAGE);
    arena = { next: start, end: start + size };
  }
  const at = arena.next;
  arena.next += len;
  return Buffer.from(viewAt(at, len)).subarray(0, bytes);
}

/** `hugeAnonKiB()` is this process's anonymous memory on 2 MiB pages (smaps_rollup AnonHugePages), or undefined. */
export function hugeAnonKiB(): number | undefined {
  try {
    const m = /^AnonHugePages:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/self/smaps_rollup', 'utf8'));
    return m === null ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

/** The lanes' buffers of each target, by queue depth and block size (made once, reused by every sample). */
const buffers = new WeakMap<IoTarget, Map<string, Buffer[]>>();

function lanesBuffers(target: IoTarget, qd: number, bs: number): Buffer[] {
  const key = `${qd}/${bs}`;
  let mine = buffers.get(target);
  if (mine === undefined) buffers.set(target, (mine = new Map()));
  let b = mine.get(key);
  if (b === undefined) {
    b = [];
    for (let i = 0; i < qd; i++) {
      const buf = target.alloc !== undefined ? target.alloc(bs) : alignedBuffer(bs);
      for (let j = 0; j < bs; j += 512) buf[j] = (i + j) & 0xff; // writes carry non-zero data
      b.push(buf);
    }
    mine.set(key, b);
  }
  return b;
}

const cursors = new Map<number, number>();

/** `runWorkload(target, w)` runs `w` against `target` and is what it did. */
export async function runWorkload(target: IoTarget, w: Workload): Promise<WorkloadResult> {
  const blocks = Math.floor(w.span / w.bs);
  if (blocks < 1) throw new Error(`span ${w.span} smaller than one ${w.bs}-byte block`);
  const bufs = lanesBuffers(target, w.qd, w.bs);
  let seed = w.seed >>> 0 || 1;
  let cursor = cursors.get(w.bs) ?? 0;
  const next = w.pattern === 'rand'
    ? (): number => {
      seed ^= seed << 13; seed >>>= 0;
      seed ^= seed >>> 17;
      seed ^= seed << 5; seed >>>= 0;
      return (seed % blocks) * w.bs;
    }
    : (): number => {
      const off = cursor * w.bs;
      cursor = cursor + 1 === blocks ? 0 : cursor + 1;
      return off;
    };
  let ops = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const deadline = performance.now() + w.ms;
  const lane = async (buf: Buffer): Promise<void> => {
    if (w.op === 'read') {
      while (performance.now() < deadline) { await target.read(next(), buf); ops++; }
    } else {
      while (performance.now() < deadline) { await target.write(next(), buf); ops++; }
    }
  };
  await Promise.all(bufs.map(lane));
  const ns = Number(process.hrtime.bigint() - t0);
  const cpu = process.cpuUsage(cpu0);
  cursors.set(w.bs, cursor);
  return { ops, bytes: ops * w.bs, ns, cpuUs: cpu.user + cpu.system };
}
