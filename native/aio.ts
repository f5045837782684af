// Linux native AIO (io_setup/io_submit/io_getevents, include/uapi/linux/aio_abi.h) for
// O_DIRECT descriptors: every read and write queued during one synchronous pass of the caller
// (blkback consuming a ring) goes to the kernel in a single io_submit, and completions come back
// through one eventfd (IOCB_FLAG_RESFD) watched by the event loop, each wake reaping every
// finished I/O with one io_getevents. This is how userspace block backends avoid a thread per
// request: tapdisk's tapdisk-queue and QEMU's linux-aio do the same. Compared with libuv's
// threadpool (a futex wake, a thread switch and a completion write per I/O) it saves most
// system calls per request, which is what costs most in a PV dom0, where each one traps
// through Xen.
//
// Only O_DIRECT I/O is asynchronous this way (buffered AIO blocks in io_submit), so callers use
// it for their O_DIRECT descriptor only. Anything the kernel refuses at submission (EINVAL for
// memory O_DIRECT cannot use, EAGAIN) is reported to the I/O's callback like a failed completion,
// and the caller falls back to its synchronous path.
import { EFD, NativeError, SYS, bufferAddress, errno, errnoName, fail, libc } from './libc.ts';
import { FdWatch } from './fd-watch.ts';

/** aio_abi.h: struct iocb is 64 bytes; fields at these offsets (little-endian layout). */
export const IOCB = {
  size: 64, data: 0, key: 8, rwFlags: 12, opcode: 16, reqprio: 18, fildes: 20,
  buf: 24, nbytes: 32, offset: 40, reserved2: 48, flags: 56, resfd: 60,
} as const;
/** aio_abi.h: struct io_event is 32 bytes: data, obj, res, res2. */
export const IO_EVENT = { size: 32, data: 0, obj: 8, res: 16, res2: 24 } as const;
/** aio_abi.h: IOCB_CMD_*. */
export const IOCB_CMD = { PREAD: 0, PWRITE: 1, FSYNC: 2, FDSYNC: 3, NOOP: 6, PREADV: 7, PWRITEV: 8 } as const;
/** aio_abi.h: signal completions on aio_resfd. */
export const IOCB_FLAG_RESFD = 1;
/** struct iovec: base pointer and length, 16 bytes. */
const IOVEC_SIZE = 16;

/** Where each ArrayBuffer's memory starts: asking koffi costs a native call (slow under emulation), and blkback's buffers are the same grant mappings again and again. */
const bases = new WeakMap<ArrayBufferLike, number>();
function addressOf(b: Uint8Array): number {
  let base = bases.get(b.buffer);
  if (base === undefined) {
    base = bufferAddress(b) - b.byteOffset;
    bases.set(b.buffer, base);
  }
  return base + b.byteOffset;
}

/** Scheduling through a settled promise: queueMicrotask wraps each callback in an AsyncResource. */
const SETTLED = Promise.resolve();

const EINTR = 4;
const EAGAIN = 11;

/** What an I/O ended with: bytes transferred (>= 0) or -errno. */
export type AioCallback = (res: number) => void;

/** One process's AIO context with room for `capacity` I/Os in flight. */
export class AioContext {
  private ctx: number;
  private readonly efd: number;
  private readonly watch: FdWatch;
  private readonly iocbs: Buffer;
  private readonly iocbBase: number;
  private readonly ptrs: Buffer;
  private readonly events: Buffer;
  private readonly noWait = Buffer.alloc(16);
  private readonly counter = Buffer.alloc(8);
  private readonly free: number[] = [];
  private readonly callbacks: (AioCallback | undefined)[];
  /** The caller's buffers of each I/O in flight, referenced until it completes. */
  private readonly held: (readonly Uint8Array[] | undefined)[];
  private readonly iovecs: (Buffer | undefined)[];
  private pending: number[] = [];
  private flushQueued = false;
  private inFlight = 0;
  private closed = false;
  /** io_submit calls made and I/Os they carried (their ratio is the batching achieved). */
  submitCalls = 0;
  submitted = 0;

  /** `new AioContext(capacity)` is io_setup(capacity) plus its completion eventfd; NativeError when refused (e.g. aio-max-nr reached). */
  constructor(readonly capacity = 256) {
    const c = Buffer.alloc(8);
    if (libc.ioSetup(SYS.io_setup, capacity, c) < 0) throw fail('io_setup', `${capacity} events`);
    this.ctx = Number(c.readBigUInt64LE(0));
    const efd = libc.eventfd(0, EFD.NONBLOCK | EFD.CLOEXEC);
    if (efd < 0) {
      const e = fail('eventfd');
      libc.ioDestroy(SYS.io_destroy, this.ctx);
      throw e;
    }
    this.efd = efd;
    this.iocbs = Buffer.alloc(capacity * IOCB.size);
    this.iocbBase = bufferAddress(this.iocbs);
    this.ptrs = Buffer.alloc(capacity * 8);
    this.events = Buffer.alloc(capacity * IO_EVENT.size);
    this.callbacks = new Array<AioCallback | undefined>(capacity).fill(undefined);
    this.held = new Array<readonly Uint8Array[] | undefined>(capacity).fill(undefined);
    this.iovecs = new Array<Buffer | undefined>(capacity).fill(undefined);
    for (let i = capacity - 1; i >= 0; i--) this.free.push(i);
    this.watch = new FdWatch(efd, () => this.reap());
    this.watch.unref();
  }

  /** `busy` is how many I/Os are queued or in flight. */
  get busy(): number {
    return this.inFlight;
  }

  /**
   * `submit(write, fd, offset, buffers, cb)` queues a read (or write) of all of `buffers` at
   * `offset` of `fd`, submitted with everything else queued in this synchronous pass; `cb` gets
   * the byte count or -errno. False, with nothing queued, when the context is full or closed.
   */
  submit(write: boolean, fd: number, offset: number, buffers: readonly Uint8Array[], cb: AioCallback): boolean {
    if (this.closed || buffers.length === 0) return false;
    const slot = this.free.pop();
    if (slot === undefined) return false;
    const b = this.iocbs;
    const at = slot * IOCB.size;
    b.fill(0, at, at + IOCB.size);
    b.writeUInt32LE(slot, at + IOCB.data);
    b.writeUInt32LE(fd, at + IOCB.fildes);
    b.writeUInt32LE(offset % 0x100000000, at + IOCB.offset);
    b.writeUInt32LE(Math.floor(offset / 0x100000000), at + IOCB.offset + 4);
    b.writeUInt32LE(IOCB_FLAG_RESFD, at + IOCB.flags);
    b.writeUInt32LE(this.efd, at + IOCB.resfd);
    if (buffers.length === 1) {
      const one = buffers[0]!;
      b.writeUInt16LE(write ? IOCB_CMD.PWRITE : IOCB_CMD.PREAD, at + IOCB.opcode);
      writeU64(b, at + IOCB.buf, addressOf(one));
      writeU64(b, at + IOCB.nbytes, one.byteLength);
    } else {
      // The kernel copies the iovec array during io_submit (aio_setup_rw); it is kept per slot
      // only to reuse its memory.
      let iov = this.iovecs[slot];
      if (iov === undefined || iov.length < buffers.length * IOVEC_SIZE) {
        iov = Buffer.alloc(Math.max(buffers.length, 16) * IOVEC_SIZE);
        this.iovecs[slot] = iov;
      }
      for (let i = 0; i < buffers.length; i++) {
        writeU64(iov, i * IOVEC_SIZE, addressOf(buffers[i]!));
        writeU64(iov, i * IOVEC_SIZE + 8, buffers[i]!.byteLength);
      }
      b.writeUInt16LE(write ? IOCB_CMD.PWRITEV : IOCB_CMD.PREADV, at + IOCB.opcode);
      writeU64(b, at + IOCB.buf, addressOf(iov));
      writeU64(b, at + IOCB.nbytes, buffers.length);
    }
    this.callbacks[slot] = cb;
    this.held[slot] = buffers;
    if (this.inFlight++ === 0) this.watch.ref();
    this.pending.push(slot);
    if (!this.flushQueued) {
      this.flushQueued = true;
      void SETTLED.then(this.flush);
    }
    return true;
  }

  /** `close()` is io_destroy (which waits for I/Os in flight) and the eventfd's close; callers drain first. */
  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.watch.close();
    libc.ioDestroy(SYS.io_destroy, this.ctx);
    this.ctx = 0;
    libc.close(this.efd);
    // Anything still in flight was waited for by io_destroy; its events are gone with the ring.
    for (let s = 0; s < this.capacity; s++) {
      const cb = this.callbacks[s];
      if (cb === undefined) continue;
      this.release(s);
      cb(-EAGAIN);
    }
  }

  /** Submits every queued iocb, in as few io_submit calls as the kernel takes them. */
  private readonly flush = (): void => {
    this.flushQueued = false;
    const list = this.pending;
    if (list.length === 0 || this.closed) return;
    this.pending = [];
    const p = this.ptrs;
    for (let i = 0; i < list.length; i++) writeU64(p, i * 8, this.iocbBase + list[i]! * IOCB.size);
    let i = 0;
    while (i < list.length) {
      const r = libc.ioSubmit(SYS.io_submit, this.ctx, list.length - i, i === 0 ? p : p.subarray(i * 8));
      this.submitCalls++;
      if (r > 0) {
        this.submitted += r;
        i += r;
        continue;
      }
      const e = r < 0 ? errno() : EAGAIN;
      if (e === EINTR) continue;
      // io_submit refused the iocb at i (EINVAL: memory or offset O_DIRECT cannot use; EAGAIN:
      // no room): it ends now with that error and the rest are tried again.
      const slot = list[i++]!;
      const cb = this.callbacks[slot]!;
      this.release(slot);
      cb(-e);
    }
  };

  /** Reads the eventfd and delivers every finished I/O. */
  private reap(): void {
    if (this.closed) return;
    libc.read(this.efd, this.counter, 8);
    const ev = this.events;
    for (;;) {
      const n = libc.ioGetevents(SYS.io_getevents, this.ctx, 0, this.capacity, ev, this.noWait);
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        throw new NativeError('io_getevents', e, errnoName(e), `aio context ${this.ctx}`);
      }
      for (let i = 0; i < n; i++) {
        const at = i * IO_EVENT.size;
        const slot = ev.readUInt32LE(at + IO_EVENT.data);
        const res = ev.readInt32LE(at + IO_EVENT.res + 4) * 0x100000000 + ev.readUInt32LE(at + IO_EVENT.res);
        const cb = this.callbacks[slot];
        if (cb === undefined) continue;
        this.release(slot);
        cb(res);
      }
      if (n < this.capacity) return;
    }
  }

  private release(slot: number): void {
    this.callbacks[slot] = undefined;
    this.held[slot] = undefined;
    this.free.push(slot);
    if (--this.inFlight === 0 && !this.closed) this.watch.unref();
  }
}

/** Writes a non-negative integer below 2^53 as a little-endian u64. */
function writeU64(b: Buffer, at: number, v: number): void {
  b.writeUInt32LE(v % 0x100000000, at);
  b.writeUInt32LE(Math.floor(v / 0x100000000), at + 4);
}
