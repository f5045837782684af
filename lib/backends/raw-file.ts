// A raw disk image in a regular file (sparse or not) or a block device node, read and written
// with preadv/pwritev straight into the caller's buffers (blkback passes the guest's mapped
// pages: zero copy). Many calls may be in flight at once; libuv runs them on its threadpool.
//
// O_DIRECT where the filesystem allows it (tmpfs refuses it at open): it bypasses the page
// cache so dom0 memory is not filled with guest data, as Linux's loop driver does in direct
// I/O mode. O_DIRECT also demands sector-aligned memory; a request whose buffers are not
// aligned fails with EINVAL and is retried once on a second, buffered descriptor (the kernel
// keeps the page cache coherent with direct I/O on the same file). Either way a flush is
// fdatasync(2): O_DIRECT does not empty the drive's cache.
//
// Discard is fallocate(PUNCH_HOLE | KEEP_SIZE) when the filesystem supports it (probed at
// open, past the end of the file where it changes nothing); secure discard overwrites the
// range with zeros and syncs before punching, since a hole alone may leave the old blocks
// readable on the medium.
//
// On the O_DIRECT descriptor, reads and writes go through the kernel's asynchronous I/O:
// io_uring (native/io-uring.ts) where the kernel allows it, else Linux native AIO
// (native/aio.ts). Either way everything blkback issues in one pass over its ring is one system
// call, and completions come back in batches through one eventfd, with no thread per I/O.
// io_uring also takes registered memory (registerMemory: blkback's persistent grants), which the
// kernel pins once instead of at every I/O. Whatever the engine refuses or cannot take (queue
// full, memory O_DIRECT rejects) takes the threadpool path below.
//
// Otherwise reads and writes use the callback fs.readv/fs.writev on the descriptors, not FileHandle's
// promise methods: those add per-call bookkeeping (a promise-based request, handle
// reference counting) that showed as a large share of the backend's time on 4 KiB I/O. Each I/O in
// flight is a reused Transfer whose callbacks are bound once; the only allocations per I/O are
// the promise the BlockBackend interface returns and libuv's request. Since the descriptors'
// FileHandles do not see these calls, close() waits for them before closing.
import { constants as fsc, fstatSync, promises as fsp, readv as fsReadv, writev as fsWritev } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { BlockBackend, BlockBackendCapabilities, DiscardOptions } from './block-backend.ts';
import { BackendError } from './block-backend.ts';
import { FallocateError, punchHole } from './fallocate.ts';
import { AioContext } from '../../native/aio.ts';
import type { IoCallback } from '../../native/io-slots.ts';
import { IoUring } from '../../native/io-uring.ts';

/** I/Os one disk keeps in flight through AIO or io_uring (beyond that the threadpool takes them). */
const AIO_CAPACITY = 512;

/** How O_DIRECT reads and writes reach the kernel. */
export type IoEngine = 'io_uring' | 'aio' | 'threadpool';

/** What the transfers need of an asynchronous engine: AioContext and IoUring both are one. */
interface AsyncEngine {
  submit(write: boolean, fd: number, offset: number, buffers: readonly Uint8Array[], cb: IoCallback): number;
  close(): void;
}

export interface RawFileOptions {
  readonly readonly?: boolean;
  /** 'auto' (default): O_DIRECT if the filesystem accepts it; 'on': require it; 'off': buffered only. */
  readonly direct?: 'auto' | 'on' | 'off';
  /** Logical sector size advertised (blkif sector-size): 512 (default) or 4096. */
  readonly sectorSize?: 512 | 4096;
  /** Physical sector size advertised; default the logical one. */
  readonly physicalSectorSize?: number;
  /** Create the file with this size in bytes if it does not exist (sparse). */
  readonly create?: number;
  /**
   * The engine for O_DIRECT I/O: 'auto' (default) is io_uring where the kernel allows it, else
   * Linux AIO, else the threadpool; naming one requires it (BackendError `open` when refused).
   * XENBLK_IO_ENGINE in the environment sets the default.
   */
  readonly engine?: IoEngine | 'auto';
}

/** A raw file disk; `direct` tells whether O_DIRECT is in use, `directFallbacks` how many I/Os needed the buffered path. */
export interface RawFileDisk extends BlockBackend {
  readonly path: string;
  readonly direct: boolean;
  readonly directFallbacks: number;
  /** How O_DIRECT reads and writes reach the kernel ('threadpool' also when O_DIRECT is off). */
  readonly engine: IoEngine;
}

const ZERO_CHUNK = 1 << 20;

/** `openRawFile(path, opts)` opens a raw image; BackendError `open` when it cannot be opened as asked. */
export async function openRawFile(path: string, opts: RawFileOptions = {}): Promise<RawFileDisk> {
  const ro = opts.readonly ?? false;
  const sectorSize = opts.sectorSize ?? 512;
  if (sectorSize !== 512 && sectorSize !== 4096) throw new BackendError(`sector size ${String(sectorSize)} is not 512 or 4096`, 'open', 'EINVAL');
  const physicalSectorSize = opts.physicalSectorSize ?? sectorSize;
  if (physicalSectorSize < sectorSize || physicalSectorSize % sectorSize !== 0) {
    throw new BackendError(`physical sector size ${physicalSectorSize} is not a multiple of ${sectorSize}`, 'open', 'EINVAL');
  }
  const mode = opts.direct ?? 'auto';
  const base = ro ? fsc.O_RDONLY : fsc.O_RDWR;

  if (opts.create !== undefined && !ro) {
    const h = await wrap('open', path, () => fsp.open(path, fsc.O_RDWR | fsc.O_CREAT, 0o644));
    try {
      const st = await h.stat();
      if (st.size === 0) await h.truncate(opts.create);
    } finally {
      await h.close();
    }
  }

  const buffered = await wrap('open', path, () => fsp.open(path, base));
  let direct: FileHandle | undefined;
  try {
    if (mode !== 'off') {
      try {
        direct = await fsp.open(path, base | fsc.O_DIRECT);
      } catch (e) {
        if (mode === 'on') throw new BackendError(`${path}: O_DIRECT refused (${codeOf(e)})`, 'open', codeOf(e));
      }
    }
    const st = await buffered.stat();
    const isBlock = st.isBlockDevice();
    if (!st.isFile() && !isBlock) throw new BackendError(`${path} is neither a regular file nor a block device`, 'open', 'EINVAL');
    const canPunch = !ro && !isBlock && await probePunchHole(buffered.fd, st.size);
    const caps: BlockBackendCapabilities = {
      flush: true,
      discard: canPunch,
      discardSecure: canPunch,
      // A hole frees whole filesystem blocks; partial blocks are zeroed by the filesystem.
      discardGranularity: canPunch ? Math.max(st.blksize, sectorSize) : 0,
      discardAlignment: 0,
    };
    const engine = direct === undefined ? undefined : openEngine(path, opts.engine ?? engineDefault());
    return makeDisk(path, buffered, direct, ro, sectorSize, physicalSectorSize, caps, isBlock, engine);
  } catch (e) {
    await direct?.close().catch(() => undefined);
    await buffered.close().catch(() => undefined);
    throw e;
  }
}

/** The default engine: XENBLK_IO_ENGINE if set (checked), else 'auto'. */
function engineDefault(): IoEngine | 'auto' {
  const v = process.env.XENBLK_IO_ENGINE;
  if (v === undefined || v === '') return 'auto';
  if (v === 'auto' || v === 'io_uring' || v === 'aio' || v === 'threadpool') return v;
  throw new BackendError(`XENBLK_IO_ENGINE=${v}: not auto, io_uring, aio or threadpool`, 'open', 'EINVAL');
}

/** The asynchronous engine `want` asks for: 'auto' takes the first the kernel allows; a named one must open. */
function openEngine(path: string, want: IoEngine | 'auto'): { name: IoEngine; io: AsyncEngine | undefined } {
  if (want === 'io_uring' || want === 'auto') {
    try {
      return { name: 'io_uring', io: new IoUring(AIO_CAPACITY) };
    } catch (e) {
      // No io_uring in this kernel, io_uring_disabled, or a seccomp filter (containers often refuse it).
      if (want === 'io_uring') throw new BackendError(`${path}: io_uring refused (${(e as Error).message})`, 'open', codeOf(e));
    }
  }
  if (want === 'aio' || want === 'auto') {
    try {
      return { name: 'aio', io: new AioContext(AIO_CAPACITY) };
    } catch (e) {
      // io_setup refused (no AIO in this kernel, or aio-max-nr reached): the threadpool serves.
      if (want === 'aio') throw new BackendError(`${path}: Linux AIO refused (${(e as Error).message})`, 'open', codeOf(e));
    }
  }
  return { name: 'threadpool', io: undefined };
}

function makeDisk(
  path: string, buffered: FileHandle, direct: FileHandle | undefined, ro: boolean,
  sectorSize: number, physicalSectorSize: number, caps: BlockBackendCapabilities, isBlock: boolean,
  engine: ReturnType<typeof openEngine> | undefined,
): RawFileDisk {
  let closed = false;
  let zeros: Buffer | undefined;
  const kernelIo = engine?.io;
  const uring = kernelIo instanceof IoUring ? kernelIo : undefined;
  const io = new TransferPool(path, buffered.fd, direct?.fd, kernelIo);
  const engineNote = (): string => {
    if (uring !== undefined) {
      const fixed = uring.registerRefused !== undefined ? `registration refused: ${uring.registerRefused}` : `${uring.registered} buffer(s) registered`;
      return `, io_uring, ${fixed}, ${uring.fixedSubmitted} of ${uring.submitted} I/Os on registered memory`;
    }
    return engine?.name === 'aio' ? ', Linux AIO' : '';
  };

  function live(op: 'read' | 'write' | 'flush' | 'discard' | 'size'): void {
    if (closed) throw new BackendError(`${path} is closed`, op, 'EBADF');
  }

  function transfer(op: 'read' | 'write', offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    if (closed) return Promise.reject(new BackendError(`${path} is closed`, op, 'EBADF'));
    if (op === 'write' && ro) return Promise.reject(new BackendError(`${path} is read-only`, 'write', 'EROFS', offset));
    return io.start(op, offset, buffers, true);
  }

  return {
    path,
    get description() { return `raw ${isBlock ? 'device' : 'file'} ${path}${direct !== undefined ? ` (O_DIRECT${engineNote()})` : ''}`; },
    get direct() { return direct !== undefined; },
    engine: engine?.name ?? 'threadpool',
    get directFallbacks() { return io.fallbacks; },
    sectorSize,
    physicalSectorSize,
    readonly: ro,
    capabilities: caps,
    async size() {
      live('size');
      let bytes: number;
      try {
        if (isBlock) {
          // A block device's stat size is 0: its size is where a seek to the end lands.
          const fh = await fsp.open(path, fsc.O_RDONLY);
          try { bytes = await blockDeviceSize(fh); } finally { await fh.close(); }
        } else {
          // Synchronous, as QEMU's raw driver reads a file's length (lseek in its main loop): one
          // fstat of an open file, where the promise API's round trip through the threadpool was
          // ~1.5% of `xenblk serve`'s CPU on real Xen for the once-a-second resize check.
          bytes = fstatSync(buffered.fd).size;
        }
      } catch (e) {
        throw new BackendError(`${path}: size: ${codeOf(e)}`, 'size', codeOf(e));
      }
      return bytes - (bytes % sectorSize);
    },
    read: (offset, buffers) => transfer('read', offset, buffers),
    write: (offset, buffers) => transfer('write', offset, buffers),
    async flush() {
      live('flush');
      try {
        await buffered.datasync();
      } catch (e) {
        throw new BackendError(`${path}: fdatasync: ${codeOf(e)}`, 'flush', codeOf(e));
      }
    },
    async discard(offset: number, length: number, opts: DiscardOptions) {
      live('discard');
      if (ro) throw new BackendError(`${path} is read-only`, 'discard', 'EROFS', offset, length);
      if (!caps.discard) throw new BackendError(`${path}: the filesystem cannot punch holes`, 'discard', 'EOPNOTSUPP', offset, length);
      try {
        if (opts.secure) {
          zeros ??= Buffer.alloc(ZERO_CHUNK);
          for (let pos = offset; pos < offset + length; pos += ZERO_CHUNK) {
            const n = Math.min(ZERO_CHUNK, offset + length - pos);
            await io.start('write', pos, [zeros.subarray(0, n)], false);
          }
          await buffered.datasync();
        }
        await punchHole(buffered.fd, offset, length);
      } catch (e) {
        if (e instanceof FallocateError) throw new BackendError(`${path}: ${e.message}`, 'discard', e.code, offset, length);
        throw new BackendError(`${path}: discard of [${offset}, ${offset + length}): ${codeOf(e)}`, 'discard', codeOf(e), offset, length);
      }
    },
    registerMemory(mem: Uint8Array) {
      return closed || uring === undefined ? undefined : uring.register(mem);
    },
    async close() {
      if (closed) return;
      closed = true;
      await io.idle();
      kernelIo?.close();
      await direct?.close().catch(() => undefined);
      await buffered.close();
    },
  };
}

/** The reads and writes of one disk in flight, each a reused Transfer. */
class TransferPool {
  /** I/Os that needed the buffered descriptor after O_DIRECT refused their memory. */
  fallbacks = 0;
  private readonly free: Transfer[] = [];
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(readonly path: string, readonly bufferedFd: number, readonly directFd: number | undefined, readonly kernelIo: AsyncEngine | undefined) {}

  /**
   * `start(op, offset, buffers, preferDirect)` transfers all of `buffers` at `offset`, through
   * O_DIRECT when it is open and `preferDirect`; a BackendError on failure.
   */
  start(op: 'read' | 'write', offset: number, buffers: readonly Uint8Array[], preferDirect: boolean): Promise<void> {
    const t = this.free.pop() ?? new Transfer(this);
    t.op = op;
    t.offset = offset;
    t.pos = offset;
    t.buffers = buffers;
    t.bufs = buffers;
    t.fd = preferDirect && this.directFd !== undefined ? this.directFd : this.bufferedFd;
    this.inFlight++;
    return new Promise<void>(t.executor);
  }

  /** `finish(t)` returns `t` to the pool once its promise is settled. */
  finish(t: Transfer): void {
    t.buffers = t.bufs = NO_BUFFERS;
    t.resolve = t.reject = undefined;
    this.free.push(t);
    if (--this.inFlight === 0 && this.idleWaiters.length > 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** `idle()` resolves when no transfer is in flight (the descriptors may then be closed). */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }
}

const NO_BUFFERS: readonly Uint8Array[] = [];

/** One read or write in flight: continues after short transfers, falls back from O_DIRECT on EINVAL. */
class Transfer {
  op: 'read' | 'write' = 'read';
  fd = -1;
  /** Disk offset of the whole transfer (for errors) and of what is left. */
  offset = 0;
  pos = 0;
  /** The caller's buffers, and what is left of them. */
  buffers: readonly Uint8Array[] = NO_BUFFERS;
  bufs: readonly Uint8Array[] = NO_BUFFERS;
  resolve: (() => void) | undefined;
  reject: ((e: unknown) => void) | undefined;
  /** The kernel engine (io_uring or AIO) refused or failed this transfer once: the rest of it takes the threadpool. */
  noKernelIo = false;
  /** Bytes the kernel engine's submission of `bufs` asked for (-1: not through it): a completion of exactly that many is the whole transfer. */
  asked = -1;

  constructor(private readonly pool: TransferPool) {}

  readonly executor = (resolve: () => void, reject: (e: unknown) => void): void => {
    this.resolve = resolve;
    this.reject = reject;
    this.noKernelIo = false;
    this.issue();
  };

  private issue(): void {
    const k = this.pool.kernelIo;
    this.asked = k !== undefined && !this.noKernelIo && this.fd === this.pool.directFd ? k.submit(this.op === 'write', this.fd, this.pos, this.bufs, this.kernelDone) : -1;
    if (this.asked >= 0) return;
    if (this.op === 'read') fsReadv(this.fd, this.bufs as Uint8Array[], this.pos, this.done);
    else fsWritev(this.fd, this.bufs as Uint8Array[], this.pos, this.done);
  }

  /** A kernel engine's completion: bytes as the threadpool would report them; an error is retried there once (it then decides: EINVAL falls back to buffered I/O, anything else fails). */
  private readonly kernelDone = (res: number): void => {
    if (res === this.asked) {
      // All of it (the usual case): no walk over the buffers.
      this.settle(undefined);
      return;
    }
    if (res >= 0) {
      this.done(null, res);
      return;
    }
    this.noKernelIo = true;
    this.issue();
  };

  private readonly done = (err: NodeJS.ErrnoException | null, n: number): void => {
    if (err !== null) {
      const pool = this.pool;
      if (this.fd === pool.directFd && err.code === 'EINVAL') {
        // O_DIRECT refuses memory that is not sector-aligned with EINVAL: redo it buffered.
        pool.fallbacks++;
        this.fd = pool.bufferedFd;
        this.pos = this.offset;
        this.bufs = this.buffers;
        this.issue();
        return;
      }
      this.settle(ioError(this.op, pool.path, this.offset, err));
      return;
    }
    const bufs = this.bufs;
    let rest = n;
    let i = 0;
    while (i < bufs.length && rest >= bufs[i]!.byteLength) { rest -= bufs[i]!.byteLength; i++; }
    if (i === bufs.length) {
      this.settle(undefined);
      return;
    }
    if (n === 0) {
      if (this.op === 'write') {
        this.settle(ioError('write', this.pool.path, this.offset, Object.assign(new Error('write made no progress'), { code: 'EIO' })));
        return;
      }
      // Past the end of a file that shrank under us: what is not there reads as zeros.
      for (let j = i; j < bufs.length; j++) bufs[j]!.fill(0);
      this.settle(undefined);
      return;
    }
    // A short transfer (rare): continue with what is left.
    this.bufs = [bufs[i]!.subarray(rest), ...bufs.slice(i + 1)];
    this.pos += n;
    this.issue();
  };

  private settle(e: BackendError | undefined): void {
    const resolve = this.resolve!;
    const reject = this.reject!;
    this.pool.finish(this);
    if (e === undefined) resolve();
    else reject(e);
  }
}

async function blockDeviceSize(fh: FileHandle): Promise<number> {
  // stat reports 0 bytes for a device node and fs has no lseek(SEEK_END): read the size (in
  // 512-byte units) that the kernel publishes in sysfs for the device's major:minor.
  const st = await fh.stat();
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((Math.floor(st.rdev / 4096) & 0xfff00));
  const text = await fsp.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
  return Number(text.trim()) * 512;
}

async function probePunchHole(fd: number, size: number): Promise<boolean> {
  try {
    await punchHole(fd, size, 4096);
    return true;
  } catch {
    return false;
  }
}

async function wrap<T>(op: 'open', path: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw new BackendError(`${path}: ${op}: ${codeOf(e)}`, op, codeOf(e));
  }
}

function ioError(op: 'read' | 'write', path: string, offset: number, e: unknown): BackendError {
  if (e instanceof BackendError) return e;
  return new BackendError(`${path}: ${op} at ${offset}: ${codeOf(e)}`, op, codeOf(e), offset);
}

function codeOf(e: unknown): string {
  if (typeof e === 'object' && e !== null && 'code' in e && typeof (e as { code: unknown }).code === 'string') return (e as { code: string }).code;
  return e instanceof Error ? e.message : String(e);
}
