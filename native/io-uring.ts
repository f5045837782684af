// io_uring (include/uapi/linux/io_uring.h; Linux 5.1, sparse buffer tables 5.19) for O_DIRECT
// descriptors, with the interface of aio.ts: every read and write queued during one synchronous
// pass of the caller goes to the kernel in one io_uring_enter, and completions come back through
// one eventfd (IORING_REGISTER_EVENTFD) watched by the event loop, each wake taking every
// finished I/O from the completion queue the kernel shares with the process.
//
// What it has that Linux AIO has not: registered ("fixed") buffers. Direct I/O on ordinary
// user memory pins every page of it in each submission (the kernel walks the I/O vector and takes
// a reference per 4 KiB page, then drops them at completion); a buffer registered once is pinned
// once, and READ_FIXED/WRITE_FIXED on it skip that walk. blkback registers each persistently
// mapped run of grants (lib/blkback/persistent-grants.ts) for as long as it stays mapped.
// Measured on the development machine (C, O_DIRECT 1 MiB reads at queue depth 4 from an ext4
// file into a 1 MiB mapping of a tmpfs file on 2 MiB pages, as blkback's runs are on the
// simulator): ~27 us of CPU per read through io_submit or a plain io_uring read, ~10.5 us with
// READ_FIXED, which is what the same reads cost into anonymous memory on 2 MiB pages (~11 us).
//
// Registration can be refused for reasons of the memory: read-only mappings (the kernel pins for
// writing), RLIMIT_MEMLOCK for an unprivileged process, and file mappings other than tmpfs or
// hugetlbfs on kernels before 6.x (io_uring/rsrc.c: "don't support file backed memory"), which is
// what a PV dom0's gntdev mappings are. Such memory is read and written with READV/WRITEV, pinned
// per submission as with AIO.
//
// Submission errors of single I/Os come back as completions (-errno), which the caller handles as
// it does AIO's (raw-file.ts falls back to its synchronous path).
import { EFD, ERRNO, MAP, NativeError, PROT, SYS, addressOf, bufferAddress, errno, errnoName, fail, isMapFailed, libc, viewAt } from './libc.ts';
import { bytesAddress } from './address.ts';
import { putU64 } from './aio.ts';
import { FdWatch } from './fd-watch.ts';
import { IoSlots, type IoCallback } from './io-slots.ts';

/** io_uring.h struct io_uring_params (120 bytes): the fields read here, byte offsets. */
const PARAMS = { size: 120, sqEntries: 0, cqEntries: 4, features: 20, sqOff: 40, cqOff: 80 } as const;
/** struct io_sqring_offsets / io_cqring_offsets: u32 fields, byte offsets within each. */
const SQ_OFF = { head: 0, tail: 4, ringMask: 8, array: 24 } as const;
const CQ_OFF = { head: 0, tail: 4, ringMask: 8, cqes: 20 } as const;
/** mmap offsets of the rings and the submission entries. */
const OFF_SQES = 0x10000000;
/** IORING_FEAT_SINGLE_MMAP (5.4): both rings in one mapping at offset 0. */
const FEAT_SINGLE_MMAP = 1;
/** IORING_OP_*. */
const OP = { READV: 1, WRITEV: 2, READ_FIXED: 4, WRITE_FIXED: 5 } as const;
/** struct io_uring_sqe is 64 bytes; u32 word indices of the fields written. */
const SQE_WORDS = 16;
const SQE = { opcodeFlags: 0, fd: 1, off: 2, addr: 4, len: 6, rwFlags: 7, userData: 8, bufIndex: 10 } as const;
/** struct io_uring_cqe is 16 bytes: user_data u64, res s32, flags u32 (u32 words). */
const CQE_WORDS = 4;
/** io_uring_register opcodes. */
const REGISTER = { EVENTFD: 4, BUFFERS2: 15, BUFFERS_UPDATE: 16 } as const;
/** IORING_RSRC_REGISTER_SPARSE (5.19): a table of empty slots, filled by updates. */
const RSRC_REGISTER_SPARSE = 1;
/** struct io_uring_rsrc_register and io_uring_rsrc_update2 are both 32 bytes. */
const RSRC_SIZE = 32;
/** io_uring_enter flags. */
const ENTER_GETEVENTS = 1;
const IOVEC_SIZE = 16;
/** At most this many registered pieces of one transfer go as fixed I/Os of their own (a merged 1 MiB read from Linux-sized requests is 8). */
const FIXED_PIECES = 32;

const { EAGAIN, EINTR } = ERRNO;
/** asm-generic/errno-base.h EBUSY, errno.h EOPNOTSUPP. */
const EBUSY = 16;
const ERRNO_EOPNOTSUPP = 95;
const SETTLED = Promise.resolve();

/**
 * A registered buffer, tagged on the ArrayBuffer it spans: which ring's table, which slot, and
 * the address of the ArrayBuffer's first byte (a view's is that plus its byteOffset).
 */
interface Registration {
  readonly ring: IoUring;
  readonly index: number;
  readonly base: number;
}
const REGISTERED = Symbol('xenblk.ioUringBuffer');
type Tagged = { [REGISTERED]?: Registration | undefined };

/** One process's io_uring with room for `capacity` I/Os in flight and `fixedSlots` registered buffers. */
export class IoUring {
  private readonly fd: number;
  private readonly efd: number;
  private readonly watch: FdWatch;
  private readonly ringAddress: number;
  private readonly ringBytes: number;
  private readonly sqesAddress: number;
  private readonly sqesBytes: number;
  /** The shared rings as u32 words (one mapping: IORING_FEAT_SINGLE_MMAP). */
  private readonly ring: Uint32Array;
  private readonly sqes: Uint32Array;
  private readonly sqMask: number;
  private readonly sqTailAt: number;
  private readonly cqMask: number;
  private readonly cqHeadAt: number;
  private readonly cqTailAt: number;
  private readonly cqesAt: number;
  /** Our copy of the submission tail (published in flush) and the completion head. */
  private sqTail: number;
  private cqHead: number;
  private readonly counter = Buffer.alloc(8);
  private readonly slots: IoSlots;
  private readonly iovecs: (Uint32Array | undefined)[];
  private readonly iovecAddr: number[];
  /** (slot, result) pairs taken from the completion queue in one reap (at most one per I/O in flight). */
  private readonly done: number[];
  /** Slots of the I/Os written to the submission queue and not yet taken by the kernel, in order. */
  private pending: number[] = [];
  private flushQueued = false;
  private closed = false;
  /** Registered-buffer table: slots in use, free slots, and the update argument's memory. */
  private readonly fixedFree: number[] = [];
  private readonly update = Buffer.alloc(RSRC_SIZE + IOVEC_SIZE);
  private readonly updateWords: Uint32Array;
  /** Why buffers cannot be registered on this ring (undefined: they can). */
  registerRefused: string | undefined;
  /** io_uring_enter calls made, I/Os they carried, and how many of those were on registered buffers. */
  submitCalls = 0;
  submitted = 0;
  fixedSubmitted = 0;
  /** Buffers registered now. */
  registered = 0;
  readonly capacity: number;

  /** `new IoUring(capacity, fixedSlots)` is io_uring_setup plus its completion eventfd; NativeError when refused (no io_uring, or io_uring_disabled). */
  constructor(capacity = 256, readonly fixedSlots = 4096) {
    const params = Buffer.alloc(PARAMS.size);
    const fd = libc.ioUringSetup(SYS.io_uring_setup, capacity, params);
    if (fd < 0) throw fail('io_uring_setup', `${capacity} entries`);
    this.fd = fd;
    const p32 = (at: number): number => params.readUInt32LE(at);
    const sqEntries = p32(PARAMS.sqEntries);
    const cqEntries = p32(PARAMS.cqEntries);
    if ((p32(PARAMS.features) & FEAT_SINGLE_MMAP) === 0) {
      libc.close(fd);
      throw new NativeError('io_uring_setup', 0, 'ENOTSUP', 'IORING_FEAT_SINGLE_MMAP (Linux 5.4) missing');
    }
    const sqArray = p32(PARAMS.sqOff + SQ_OFF.array);
    const cqes = p32(PARAMS.cqOff + CQ_OFF.cqes);
    this.ringBytes = Math.max(sqArray + sqEntries * 4, cqes + cqEntries * CQE_WORDS * 4);
    this.sqesBytes = sqEntries * SQE_WORDS * 4;
    const ringPtr = libc.mmap(null, this.ringBytes, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.POPULATE, fd, 0);
    if (isMapFailed(ringPtr)) {
      const e = fail('mmap', 'io_uring rings');
      libc.close(fd);
      throw e;
    }
    this.ringAddress = addressOf(ringPtr);
    const sqesPtr = libc.mmap(null, this.sqesBytes, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.POPULATE, fd, OFF_SQES);
    if (isMapFailed(sqesPtr)) {
      const e = fail('mmap', 'io_uring submission entries');
      libc.munmap(this.ringAddress, this.ringBytes);
      libc.close(fd);
      throw e;
    }
    this.sqesAddress = addressOf(sqesPtr);
    this.ring = new Uint32Array(viewAt(this.ringAddress, this.ringBytes & ~3));
    this.sqes = new Uint32Array(viewAt(this.sqesAddress, this.sqesBytes));
    const w = (at: number): number => at / 4;
    this.sqTailAt = w(p32(PARAMS.sqOff + SQ_OFF.tail));
    this.sqMask = this.ring[w(p32(PARAMS.sqOff + SQ_OFF.ringMask))]!;
    this.cqHeadAt = w(p32(PARAMS.cqOff + CQ_OFF.head));
    this.cqTailAt = w(p32(PARAMS.cqOff + CQ_OFF.tail));
    this.cqMask = this.ring[w(p32(PARAMS.cqOff + CQ_OFF.ringMask))]!;
    this.cqesAt = w(cqes);
    // Submission entry i is always at queue position i: the indirection array is filled once.
    for (let i = 0; i < sqEntries; i++) this.ring[w(sqArray) + i] = i;
    this.sqTail = this.ring[this.sqTailAt]!;
    this.cqHead = this.ring[this.cqHeadAt]!;
    // At most one I/O in flight per submission entry, so neither queue can overflow (the
    // completion queue has twice as many entries).
    this.capacity = Math.min(capacity, sqEntries, cqEntries);

    const efd = libc.eventfd(0, EFD.NONBLOCK | EFD.CLOEXEC);
    const arg = Buffer.alloc(4);
    arg.writeInt32LE(efd, 0);
    if (efd < 0 || libc.ioUringRegister(SYS.io_uring_register, fd, REGISTER.EVENTFD, arg, 1) < 0) {
      const e = fail(efd < 0 ? 'eventfd' : 'io_uring_register', 'IORING_REGISTER_EVENTFD');
      if (efd >= 0) libc.close(efd);
      this.unmapRings();
      libc.close(fd);
      throw e;
    }
    this.efd = efd;

    this.updateWords = new Uint32Array(this.update.buffer, this.update.byteOffset, this.update.byteLength / 4);
    if (fixedSlots > 0) {
      const reg = Buffer.alloc(RSRC_SIZE);
      reg.writeUInt32LE(fixedSlots, 0);
      reg.writeUInt32LE(RSRC_REGISTER_SPARSE, 4);
      if (libc.ioUringRegister(SYS.io_uring_register, fd, REGISTER.BUFFERS2, reg, RSRC_SIZE) < 0) {
        this.registerRefused = `sparse buffer table: ${errnoName(errno())}`;
      } else {
        for (let i = fixedSlots - 1; i >= 0; i--) this.fixedFree.push(i);
      }
    } else {
      this.registerRefused = 'no buffer table';
    }

    this.slots = new IoSlots(this.capacity);
    this.iovecs = new Array<Uint32Array | undefined>(this.capacity).fill(undefined);
    this.iovecAddr = new Array<number>(this.capacity).fill(0);
    this.done = new Array<number>(2 * this.capacity).fill(0);
    this.watch = new FdWatch(efd, () => this.reap(), { buffer: this.counter }); // reads (resets) the eventfd
    this.watch.unref();
    this.slots.watch = this.watch;
  }

  /** `busy` is how many I/Os are queued or in flight. */
  get busy(): number {
    return this.slots.inFlight;
  }

  /**
   * `register(mem)` pins `mem` for as long as it stays registered, so that I/O on any part of it
   * goes as READ_FIXED/WRITE_FIXED. `mem` must span its whole ArrayBuffer (a mapping's view, as
   * blkback's runs are), so that every view of that ArrayBuffer lies inside it. The result ends
   * the registration (call it before `mem` is unmapped; I/O in flight on it keeps its pages until
   * it completes), or is undefined when `mem` is not a whole ArrayBuffer or the kernel refuses
   * (see the file comment): I/O on `mem` then works as before.
   */
  register(mem: Uint8Array): (() => void) | undefined {
    if (this.closed || this.registerRefused !== undefined || mem.byteLength === 0) return undefined;
    const ab = mem.buffer as ArrayBufferLike & Tagged;
    if (mem.byteOffset !== 0 || mem.byteLength !== ab.byteLength || ab[REGISTERED] !== undefined || !Object.isExtensible(ab)) return undefined;
    const index = this.fixedFree.pop();
    if (index === undefined) return undefined;
    const base = bytesAddress(mem);
    if (this.updateSlot(index, base, mem.byteLength) < 0) {
      const e = errno();
      this.fixedFree.push(index);
      // Memory the kernel can never pin for io_uring (gntdev's on kernels before 6.x): stop asking.
      if (e === ERRNO_EOPNOTSUPP) this.registerRefused = `memory of this kind: ${errnoName(e)}`;
      return undefined;
    }
    const reg: Registration = { ring: this, index, base };
    ab[REGISTERED] = reg;
    this.registered++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (ab[REGISTERED] === reg) ab[REGISTERED] = undefined;
      if (this.closed) return;
      // An empty entry removes the buffer; I/O already submitted on it keeps its pages.
      this.updateSlot(index, 0, 0);
      this.fixedFree.push(index);
      this.registered--;
    };
  }

  /**
   * `submit(write, fd, offset, buffers, cb)` as AioContext.submit: queues a read (or write) of
   * all of `buffers` at `offset` of `fd`; `cb` gets the byte count or -errno. The result is the
   * number of bytes asked for, or -1 (nothing queued) when the ring is full or closed.
   *
   * When every buffer lies in registered memory (up to FIXED_PIECES of them), each is one
   * READ_FIXED/WRITE_FIXED at its own offset, submitted together (the block layer merges what
   * meets on disk, as it does the pieces of one vector) and reported together: `cb` gets the
   * bytes of the leading pieces that completed whole (a short or failed piece ends the count;
   * the caller goes on from there as after any short transfer), or the first piece's error.
   * Anything else is one READV/WRITEV.
   */
  submit(write: boolean, fd: number, offset: number, buffers: readonly Uint8Array[], cb: IoCallback): number {
    if (this.closed || buffers.length === 0) return -1;
    const n = buffers.length;
    if (n <= FIXED_PIECES && this.registered > 0) {
      const regs = this.fixedOf(buffers);
      if (regs !== undefined) return n === 1 ? this.queueFixed(write, fd, offset, buffers[0]!, regs[0]!, cb, buffers) : this.submitPieces(write, fd, offset, buffers, regs, cb);
    }
    const slot = this.slots.take(cb, buffers);
    if (slot < 0) return -1;
    // The kernel copies the iovec array during submission; it is kept per slot only to reuse its memory.
    let iov = this.iovecs[slot];
    if (iov === undefined || iov.length < n * (IOVEC_SIZE / 4)) {
      iov = new Uint32Array(Math.max(n, 16) * (IOVEC_SIZE / 4));
      this.iovecs[slot] = iov;
      this.iovecAddr[slot] = bufferAddress(new Uint8Array(iov.buffer, iov.byteOffset, iov.byteLength));
    }
    let total = 0;
    for (let i = 0; i < n; i++) {
      const o = i * (IOVEC_SIZE / 4);
      const b = buffers[i]!;
      putU64(iov, o, bytesAddress(b));
      putU64(iov, o + 2, b.byteLength);
      total += b.byteLength;
    }
    this.queue(slot, write ? OP.WRITEV : OP.READV, fd, offset, this.iovecAddr[slot]!, n, 0);
    return total;
  }

  /** The registration of each of `buffers` on this ring (a view lies inside the ArrayBuffer it was registered with), or undefined. */
  private fixedOf(buffers: readonly Uint8Array[]): Registration[] | undefined {
    let regs: Registration[] | undefined;
    for (let i = 0; i < buffers.length; i++) {
      const reg = (buffers[i]!.buffer as ArrayBufferLike & Tagged)[REGISTERED];
      if (reg === undefined || reg.ring !== this) return undefined;
      (regs ??= []).push(reg);
    }
    return regs;
  }

  /** One READ_FIXED/WRITE_FIXED of `b` at `offset` (`held`: the transfer's buffers, kept until it completes); bytes asked for, or -1 when full. */
  private queueFixed(write: boolean, fd: number, offset: number, b: Uint8Array, reg: Registration, cb: IoCallback, held: readonly Uint8Array[]): number {
    const slot = this.slots.take(cb, held);
    if (slot < 0) return -1;
    this.queue(slot, write ? OP.WRITE_FIXED : OP.READ_FIXED, fd, offset, reg.base + b.byteOffset, b.byteLength, reg.index);
    this.fixedSubmitted++;
    return b.byteLength;
  }

  /** The pieces of one transfer, each on registered memory, as one fixed I/O each (see submit). */
  private submitPieces(write: boolean, fd: number, offset: number, buffers: readonly Uint8Array[], regs: Registration[], cb: IoCallback): number {
    const n = buffers.length;
    if (this.slots.available < n) return -1;
    const results = new Array<number>(n).fill(0);
    let remaining = n;
    const finish = (): void => {
      let sum = 0;
      for (let i = 0; i < n; i++) {
        const r = results[i]!;
        if (r < 0) {
          cb(sum > 0 ? sum : r);
          return;
        }
        sum += r;
        if (r < buffers[i]!.byteLength) break;
      }
      cb(sum);
    };
    let at = offset;
    for (let i = 0; i < n; i++) {
      const b = buffers[i]!;
      this.queueFixed(write, fd, at, b, regs[i]!, (res) => {
        results[i] = res;
        if (--remaining === 0) finish();
      }, buffers);
      at += b.byteLength;
    }
    return at - offset;
  }

  /** Writes one submission entry at the queue's next position, for slot `slot`; flushed at the end of this pass. */
  private queue(slot: number, opcode: number, fd: number, offset: number, addr: number, len: number, bufIndex: number): void {
    const w = this.sqes;
    const at = (this.sqTail & this.sqMask) * SQE_WORDS;
    for (let i = at; i < at + SQE_WORDS; i++) w[i] = 0;
    // opcode (u8), flags (u8, 0) and ioprio (u16, 0) share the first little-endian word.
    w[at + SQE.opcodeFlags] = opcode;
    w[at + SQE.fd] = fd;
    putU64(w, at + SQE.off, offset);
    putU64(w, at + SQE.addr, addr);
    w[at + SQE.len] = len;
    w[at + SQE.bufIndex] = bufIndex;
    w[at + SQE.userData] = slot;
    this.sqTail = (this.sqTail + 1) >>> 0;
    this.pending.push(slot);
    if (!this.flushQueued) {
      this.flushQueued = true;
      void SETTLED.then(this.flush);
    }
  }

  /**
   * `close()` waits for the I/Os in flight (delivering them), then closes the ring, which also
   * ends every registration, and its eventfd. Callers drain first.
   */
  close(): void {
    if (this.closed) return;
    this.flush();
    while (this.slots.inFlight > 0 && this.pending.length === 0) {
      const r = libc.ioUringEnter(SYS.io_uring_enter, this.fd, 0, 1, ENTER_GETEVENTS, null, 0);
      if (r < 0 && errno() !== EINTR) break;
      this.reapQueue();
    }
    this.closed = true;
    this.slots.closed = true;
    this.watch.close();
    libc.close(this.fd);
    this.unmapRings();
    libc.close(this.efd);
    // Only what the kernel never took can be left (io_uring_enter failed while waiting).
    this.slots.endAll(-EAGAIN);
  }

  /** Publishes the queued entries and has the kernel take them, in as few io_uring_enter calls as it needs. */
  private readonly flush = (): void => {
    this.flushQueued = false;
    if (this.pending.length === 0 || this.closed) return;
    Atomics.store(this.ring, this.sqTailAt, this.sqTail);
    while (this.pending.length > 0) {
      const n = this.pending.length;
      const r = libc.ioUringEnter(SYS.io_uring_enter, this.fd, n, 0, 0, null, 0);
      this.submitCalls++;
      if (r > 0) {
        this.submitted += r;
        this.pending = r === n ? [] : this.pending.slice(r);
        continue;
      }
      const e = r < 0 ? errno() : EAGAIN;
      if (e === EINTR) continue;
      if (e === EAGAIN || e === EBUSY) {
        // Short of kernel resources: the entries stay queued and are offered again shortly.
        if (!this.flushQueued) {
          this.flushQueued = true;
          setImmediate(this.flush);
        }
        return;
      }
      // Refused outright (the kernel took none of them): take them back from the queue, which
      // the kernel reads only inside io_uring_enter, and end them with the error.
      const left = this.pending;
      this.pending = [];
      this.sqTail = (this.sqTail - left.length) >>> 0;
      Atomics.store(this.ring, this.sqTailAt, this.sqTail);
      for (const slot of left) this.slots.end(slot, -e);
      return;
    }
  };

  /** Delivers every finished I/O (the watch has read the eventfd). */
  private reap(): void {
    if (!this.closed) this.reapQueue();
  }

  /** Takes the completion queue's new entries (user_data is our slot), publishes the head, then runs the callbacks. */
  private reapQueue(): void {
    const r = this.ring;
    const tail = Atomics.load(r, this.cqTailAt);
    let head = this.cqHead;
    if (head === tail) return;
    const done = this.done;
    let n = 0;
    while (head !== tail) {
      const at = this.cqesAt + (head & this.cqMask) * CQE_WORDS;
      done[n] = r[at]!;
      done[n + 1] = r[at + 2]! | 0;
      n += 2;
      head = (head + 1) >>> 0;
    }
    this.cqHead = head;
    Atomics.store(r, this.cqHeadAt, head);
    for (let i = 0; i < n; i += 2) this.slots.end(done[i]!, done[i + 1]!);
  }

  /** One update of the buffer table: slot `index` to `length` bytes at `address` (0, 0: empty). */
  private updateSlot(index: number, address: number, length: number): number {
    const u = this.updateWords;
    u.fill(0);
    // struct io_uring_rsrc_update2: offset, resv, data (the iovec's address), tags, nr, resv2;
    // the one iovec follows it in the same buffer.
    u[0] = index;
    putU64(u, 2, bufferAddress(this.update) + RSRC_SIZE);
    u[6] = 1;
    putU64(u, RSRC_SIZE / 4, address);
    putU64(u, RSRC_SIZE / 4 + 2, length);
    return libc.ioUringRegister(SYS.io_uring_register, this.fd, REGISTER.BUFFERS_UPDATE, this.update, RSRC_SIZE);
  }

  private unmapRings(): void {
    libc.munmap(this.sqesAddress, this.sqesBytes);
    libc.munmap(this.ringAddress, this.ringBytes);
  }
}
