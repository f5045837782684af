// Linux native AIO (io_setup/io_submit/io_getevents, include/uapi/linux/aio_abi.h) for
// O_DIRECT descriptors: every read and write queued during one synchronous pass of the caller
// (blkback consuming a ring) goes to the kernel in a single io_submit, and completions come back
// through one eventfd (IOCB_FLAG_RESFD) watched by the event loop, each wake taking every
// finished I/O from the completion ring the kernel maps into the process (io_getevents where
// that ring's layout is not the one we know). This is how userspace block backends avoid a thread per
// request: tapdisk's tapdisk-queue and QEMU's linux-aio do the same. Compared with libuv's
// threadpool (a futex wake, a thread switch and a completion write per I/O) it saves most
// system calls per request, which is what costs most in a PV dom0, where each one traps
// through Xen.
//
// Only O_DIRECT I/O is asynchronous this way (buffered AIO blocks in io_submit), so callers use
// it for their O_DIRECT descriptor only. Anything the kernel refuses at submission (EINVAL for
// memory O_DIRECT cannot use, EAGAIN) is reported to the I/O's callback like a failed completion,
// and the caller falls back to its synchronous path.
import { EFD, ERRNO, NativeError, SYS, bufferAddress, errno, errnoName, fail, libc, viewAt } from './libc.ts';
import { bytesAddress } from './address.ts';
import { FdWatch } from './fd-watch.ts';
import { IoSlots, type IoCallback } from './io-slots.ts';

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

/**
 * Stores a non-negative integer below 2^53 as a little-endian u64 at word `at` of `w`. `>>> 0`
 * is ToUint32, the value modulo 2^32, done with a truncation; `%` on a number beyond the 31-bit
 * small integers (every address is) is a call into V8's runtime (fmod), which a CPU profile of
 * `xenblk serve` on real Xen showed as one of the costliest lines of the submission path.
 */
export function putU64(w: Uint32Array, at: number, v: number): void {
  w[at] = v >>> 0;
  w[at + 1] = (v / 0x100000000) >>> 0;
}

/** The u32 `data` (our slot) and the s64 `res` of the io_event at word `at` of `w`, into `out` at `n`. */
function takeEvent(w: Uint32Array, at: number, out: number[], n: number): void {
  out[n] = w[at + IO_EVENT.data / 4]!;
  out[n + 1] = (w[at + IO_EVENT.res / 4 + 1]! | 0) * 0x100000000 + w[at + IO_EVENT.res / 4]!;
}

/** Scheduling through a settled promise: queueMicrotask wraps each callback in an AsyncResource. */
const SETTLED = Promise.resolve();

const { EAGAIN, EINTR } = ERRNO;

/** fs/aio.c struct aio_ring, in u32 words: id, nr, head, tail, magic, compat and incompat features, header length, then the events. */
const AIO_RING = { nr: 1, head: 2, tail: 3, magic: 4, incompat: 6, headerLength: 7, events: 8 } as const;
const AIO_RING_MAGIC = 0xa10a10a1;

/** `completionRing(ctx)` is a view of the completion ring at address `ctx`, or undefined when its header is not the one fs/aio.c documents. */
function completionRing(ctx: number): Uint32Array | undefined {
  try {
    const head = new Uint32Array(viewAt(ctx, 32));
    if (head[AIO_RING.magic] !== AIO_RING_MAGIC || head[AIO_RING.incompat] !== 0 || head[AIO_RING.headerLength] !== 32) return undefined;
    const nr = head[AIO_RING.nr]!;
    return new Uint32Array(viewAt(ctx, 32 + nr * IO_EVENT.size));
  } catch {
    return undefined;
  }
}


/** One process's AIO context with room for `capacity` I/Os in flight. */
export class AioContext {
  private ctx: number;
  private readonly efd: number;
  private readonly watch: FdWatch;
  private readonly iocbs: Buffer;
  private readonly iocbBase: number;
  private readonly ptrs: Buffer;
  private readonly ptrWords: Uint32Array;
  private readonly events: Buffer;
  private readonly eventWords: Uint32Array;
  private readonly noWait = Buffer.alloc(16);
  private readonly counter = Buffer.alloc(8);
  private readonly slots: IoSlots;
  private readonly iovecs: (Uint32Array | undefined)[];
  private readonly iovecAddr: number[];
  private readonly words: Uint32Array;
  /** The kernel's completion ring, when it has the layout we know; else io_getevents. */
  private readonly ring: Uint32Array | undefined;
  private readonly done: number[];
  private pending: number[] = [];
  private flushQueued = false;
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
    this.ptrWords = new Uint32Array(this.ptrs.buffer, this.ptrs.byteOffset, capacity * 2);
    this.events = Buffer.alloc(capacity * IO_EVENT.size);
    this.eventWords = new Uint32Array(this.events.buffer, this.events.byteOffset, this.events.byteLength / 4);
    this.slots = new IoSlots(capacity);
    this.iovecs = new Array<Uint32Array | undefined>(capacity).fill(undefined);
    this.iovecAddr = new Array<number>(capacity).fill(0);
    this.words = new Uint32Array(this.iocbs.buffer, this.iocbs.byteOffset, this.iocbs.byteLength / 4);
    this.ring = completionRing(this.ctx);
    this.done = new Array<number>(2 * capacity).fill(0);
    this.watch = new FdWatch(efd, () => this.reap(), { buffer: this.counter }); // reads (resets) the eventfd
    this.watch.unref();
    this.slots.watch = this.watch;
  }

  /** `userReap` is whether completions are taken from the shared ring without io_getevents. */
  get userReap(): boolean {
    return this.ring !== undefined;
  }

  /** `busy` is how many I/Os are queued or in flight. */
  get busy(): number {
    return this.slots.inFlight;
  }

  /**
   * `submit(write, fd, offset, buffers, cb)` queues a read (or write) of all of `buffers` at
   * `offset` of `fd`, submitted with everything else queued in this synchronous pass; `cb` gets
   * the byte count or -errno. The result is the number of bytes asked for (so the caller can
   * tell a complete transfer without summing the buffers again), or -1, with nothing queued,
   * when the context is full or closed.
   */
  submit(write: boolean, fd: number, offset: number, buffers: readonly Uint8Array[], cb: IoCallback): number {
    if (this.closed || buffers.length === 0) return -1;
    const slot = this.slots.take(cb, buffers);
    if (slot < 0) return -1;
    // The iocb is written through a Uint32Array: Buffer's write methods check their arguments
    // in JavaScript, which the real-Xen profile showed as a tenth of the backend's time.
    const w = this.words;
    const at = slot * (IOCB.size / 4);
    for (let i = at; i < at + IOCB.size / 4; i++) w[i] = 0;
    w[at + IOCB.data / 4] = slot;
    w[at + IOCB.fildes / 4] = fd;
    putU64(w, at + IOCB.offset / 4, offset);
    w[at + IOCB.flags / 4] = IOCB_FLAG_RESFD;
    w[at + IOCB.resfd / 4] = this.efd;
    let buf: number;
    let nbytes: number;
    let opcode: number;
    let total: number;
    if (buffers.length === 1) {
      const one = buffers[0]!;
      opcode = write ? IOCB_CMD.PWRITE : IOCB_CMD.PREAD;
      buf = bytesAddress(one);
      nbytes = total = one.byteLength;
    } else {
      // The kernel copies the iovec array during io_submit (aio_setup_rw); it is kept per slot
      // only to reuse its memory.
      let iov = this.iovecs[slot];
      if (iov === undefined || iov.length < buffers.length * (IOVEC_SIZE / 4)) {
        iov = new Uint32Array(Math.max(buffers.length, 16) * (IOVEC_SIZE / 4));
        this.iovecs[slot] = iov;
        this.iovecAddr[slot] = bufferAddress(new Uint8Array(iov.buffer, iov.byteOffset, iov.byteLength));
      }
      total = 0;
      for (let i = 0; i < buffers.length; i++) {
        const o = i * (IOVEC_SIZE / 4);
        const b = buffers[i]!;
        const len = b.byteLength;
        putU64(iov, o, bytesAddress(b));
        putU64(iov, o + 2, len);
        total += len;
      }
      opcode = write ? IOCB_CMD.PWRITEV : IOCB_CMD.PREADV;
      buf = this.iovecAddr[slot]!;
      nbytes = buffers.length;
    }
    // aio_lio_opcode (u16) and aio_reqprio (s16, 0) share one little-endian word.
    w[at + IOCB.opcode / 4] = opcode;
    putU64(w, at + IOCB.buf / 4, buf);
    putU64(w, at + IOCB.nbytes / 4, nbytes);
    this.pending.push(slot);
    if (!this.flushQueued) {
      this.flushQueued = true;
      void SETTLED.then(this.flush);
    }
    return total;
  }

  /** `close()` is io_destroy (which waits for I/Os in flight) and the eventfd's close; callers drain first. */
  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.slots.closed = true;
    this.watch.close();
    libc.ioDestroy(SYS.io_destroy, this.ctx);
    this.ctx = 0;
    libc.close(this.efd);
    // Anything still in flight was waited for by io_destroy; its events are gone with the ring.
    this.slots.endAll(-EAGAIN);
  }

  /** Submits every queued iocb, in as few io_submit calls as the kernel takes them. */
  private readonly flush = (): void => {
    this.flushQueued = false;
    const list = this.pending;
    if (list.length === 0 || this.closed) return;
    this.pending = [];
    const p = this.ptrs;
    const pw = this.ptrWords;
    for (let i = 0; i < list.length; i++) putU64(pw, 2 * i, this.iocbBase + list[i]! * IOCB.size);
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
      this.slots.end(list[i++]!, -e);
    }
  };

  /** Delivers every finished I/O (the watch has read the eventfd). */
  private reap(): void {
    if (this.closed) return;
    if (this.ring !== undefined) {
      this.reapFromRing(this.ring);
      return;
    }
    const ev = this.events;
    const ew = this.eventWords;
    for (;;) {
      const n = libc.ioGetevents(SYS.io_getevents, this.ctx, 0, this.capacity, ev, this.noWait);
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        throw new NativeError('io_getevents', e, errnoName(e), `aio context ${this.ctx}`);
      }
      for (let i = 0; i < n; i++) takeEvent(ew, i * (IO_EVENT.size / 4), this.done, 2 * i);
      this.deliver(2 * n);
      if (n < this.capacity) return;
    }
  }

  /**
   * Takes the finished I/Os straight from the completion ring the kernel shares with us (fs/aio.c
   * struct aio_ring at the context's address: head, tail, then io_events), as fio's
   * userspace_reap does, instead of an io_getevents per wake-up: read tail, copy the events out,
   * publish the new head, then run the callbacks.
   */
  private reapFromRing(r: Uint32Array): void {
    const nr = r[AIO_RING.nr]!;
    let head = Atomics.load(r, AIO_RING.head);
    const tail = Atomics.load(r, AIO_RING.tail);
    if (head >= nr || tail >= nr) throw new NativeError('aio ring', 0, 'EIO', `head ${head} tail ${tail} of ${nr}`);
    const done = this.done;
    let n = 0;
    while (head !== tail) {
      takeEvent(r, AIO_RING.events + head * (IO_EVENT.size / 4), done, n);
      n += 2;
      head = head + 1 === nr ? 0 : head + 1;
    }
    Atomics.store(r, AIO_RING.head, head);
    this.deliver(n);
  }

  /** Runs the callbacks of the first `n / 2` (slot, result) pairs taken into `done`. */
  private deliver(n: number): void {
    const done = this.done;
    for (let i = 0; i < n; i += 2) this.slots.end(done[i]!, done[i + 1]!);
  }
}
