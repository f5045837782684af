// The C library calls xenblk needs beyond Node's own APIs, bound with koffi (no compiler, no
// addon of ours). This is the only file that loads a native library; everything else in
// native/ wraps these functions in safer shapes (memory.ts, fd-watch.ts, unix-socket.ts).
//
// Measured on the development machine (2 vCPU, Node 20, koffi 2.16): a trivial call such as
// getpid() costs ~0.3-0.4 us through koffi; mmap+munmap of a page ~3.5 us; koffi.view ~3-5 us.
//
// Prototypes follow the Linux x86_64 ABI (off_t = int64, size_t = uint64, ssize_t = long).
// ioctl is variadic in C; it is declared here with a fixed third `void *` argument, which the
// SysV x86_64 calling convention passes exactly as a variadic pointer argument.
import koffi from 'koffi';

/** `NativeError` is a failed system call: the call, the errno name and number, and what it was about. */
export class NativeError extends Error {
  override readonly name: string = 'NativeError';
  constructor(
    /** The C function that failed ('mmap', 'ioctl', 'connect', ...). */
    readonly syscall: string,
    /** errno as a number (0 when the failure was not an errno one). */
    readonly errno: number,
    /** errno as its symbolic name ('ENOENT', 'EINVAL', ...). */
    readonly code: string,
    /** What the call was applied to (a path, an fd, an ioctl name). */
    readonly subject?: string,
  ) {
    super(`${syscall}${subject === undefined ? '' : ` ${subject}`}: ${code}${errno ? ` (errno ${errno})` : ''}`);
  }
}

const lib = koffi.load('libc.so.6');

/** Raw bindings; callers check the -1 / MAP_FAILED conventions themselves (hot paths). */
export const libc = {
  open: lib.func('int open(const char *path, int flags, uint32_t mode)') as (path: string, flags: number, mode: number) => number,
  close: lib.func('int close(int fd)') as (fd: number) => number,
  read: lib.func('long read(int fd, void *buf, size_t n)') as (fd: number, buf: Uint8Array, n: number) => number,
  write: lib.func('long write(int fd, const void *buf, size_t n)') as (fd: number, buf: Uint8Array, n: number) => number,
  ioctl: lib.func('int ioctl(int fd, unsigned long request, void *arg)') as (fd: number, request: number, arg: Uint8Array | null) => number,
  /** mmap with a kernel-chosen address: returns a koffi pointer (MAP_FAILED is address 2^64-1). */
  mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)') as
    (addr: null, length: number, prot: number, flags: number, fd: number, offset: number) => unknown,
  /** mmap at a numeric address (MAP_FIXED replacements inside a reservation). */
  mmapAt: lib.func('void *mmap(uintptr_t addr, size_t length, int prot, int flags, int fd, int64_t offset)') as
    (addr: number, length: number, prot: number, flags: number, fd: number, offset: number) => unknown,
  munmap: lib.func('int munmap(uintptr_t addr, size_t length)') as (addr: number, length: number) => number,
  madvise: lib.func('int madvise(uintptr_t addr, size_t length, int advice)') as (addr: number, length: number, advice: number) => number,
  /** memset(p, 0, 0) touches nothing and returns p: the one way to turn an address into a koffi pointer. */
  pointerOf: lib.func('void *memset(uintptr_t s, int c, size_t n)') as (s: number, c: 0, n: 0) => unknown,
  ftruncate: lib.func('int ftruncate(int fd, int64_t length)') as (fd: number, length: number) => number,
  mkfifo: lib.func('int mkfifo(const char *path, uint32_t mode)') as (path: string, mode: number) => number,
  eventfd: lib.func('int eventfd(unsigned int initval, int flags)') as (initval: number, flags: number) => number,
  socket: lib.func('int socket(int domain, int type, int protocol)') as (domain: number, type: number, protocol: number) => number,
  connect: lib.func('int connect(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Uint8Array, len: number) => number,
  getpid: lib.func('int getpid(void)') as () => number,
  /** fallocate(2) (e.g. FALLOC_FL_PUNCH_HOLE for discard); `.async(...)` runs it on koffi's worker thread. */
  // Linux AIO (io_setup(2) and friends) has no glibc wrapper: these are syscall(2) with fixed
  // prototypes; glibc's syscall() only moves registers, so a fixed prototype calls it exactly as
  // a variadic one would on x86_64 and arm64. The first argument is the syscall number (SYS below).
  /** io_setup(nr_events, aio_context_t *ctxp). */
  ioSetup: lib.func('syscall', 'long', ['long', 'uint', 'void *']) as (nr: number, events: number, ctxp: Uint8Array) => number,
  /** io_destroy(ctx). */
  ioDestroy: lib.func('syscall', 'long', ['long', 'uint64_t']) as (nr: number, ctx: number) => number,
  /** io_submit(ctx, n, struct iocb **iocbpp). */
  ioSubmit: lib.func('syscall', 'long', ['long', 'uint64_t', 'long', 'void *']) as (nr: number, ctx: number, n: number, iocbpp: Uint8Array) => number,
  /** io_getevents(ctx, min_nr, nr, struct io_event *events, struct timespec *timeout). */
  ioGetevents: lib.func('syscall', 'long', ['long', 'uint64_t', 'long', 'long', 'void *', 'void *']) as
    (nr: number, ctx: number, min: number, max: number, events: Uint8Array, timeout: Uint8Array) => number,
  // io_uring (include/uapi/linux/io_uring.h) has no glibc wrapper either: syscall(2) again.
  /** io_uring_setup(entries, struct io_uring_params *p). */
  ioUringSetup: lib.func('syscall', 'long', ['long', 'uint', 'void *']) as (nr: number, entries: number, params: Uint8Array) => number,
  /** io_uring_enter(fd, to_submit, min_complete, flags, NULL, 0). */
  ioUringEnter: lib.func('syscall', 'long', ['long', 'int', 'uint', 'uint', 'uint', 'void *', 'size_t']) as
    (nr: number, fd: number, toSubmit: number, minComplete: number, flags: number, sig: null, sigsz: number) => number,
  /** io_uring_register(fd, opcode, arg, nr_args). */
  ioUringRegister: lib.func('syscall', 'long', ['long', 'int', 'uint', 'void *', 'uint']) as
    (nr: number, fd: number, opcode: number, arg: Uint8Array, nrArgs: number) => number,
  fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as ((fd: number, mode: number, offset: number, len: number) => number) & {
    async(fd: number, mode: number, offset: number, len: number, cb: (err: unknown, res: number) => void): void;
  },
};

/** Linux x86_64 constants used with the bindings above (asm-generic and x86 values). */
export const O = {
  RDONLY: 0o0, WRONLY: 0o1, RDWR: 0o2, CREAT: 0o100, EXCL: 0o200, NONBLOCK: 0o4000, CLOEXEC: 0o2000000,
} as const;
export const PROT = { NONE: 0, READ: 1, WRITE: 2 } as const;
export const MAP = { SHARED: 0x01, PRIVATE: 0x02, FIXED: 0x10, ANONYMOUS: 0x20, NORESERVE: 0x4000, POPULATE: 0x8000 } as const;
/** madvise advice (include/uapi/asm-generic/mman-common.h). */
export const MADV = { HUGEPAGE: 14, POPULATE_WRITE: 23, COLLAPSE: 25 } as const;
export const EFD = { NONBLOCK: 0o4000, CLOEXEC: 0o2000000 } as const;
export const AF_UNIX = 1;
/** Syscall numbers of Linux AIO and io_uring (arch/x86/entry/syscalls/syscall_64.tbl; asm-generic/unistd.h for arm64). */
export const SYS = {
  ...(process.arch === 'arm64'
    ? { io_setup: 0, io_destroy: 1, io_submit: 2, io_getevents: 4 } as const
    : { io_setup: 206, io_destroy: 207, io_submit: 209, io_getevents: 208 } as const),
  // io_uring came after the tables were unified: the same numbers on every architecture.
  io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427,
} as const;
export const SOCK = { STREAM: 1, NONBLOCK: 0o4000, CLOEXEC: 0o2000000 } as const;

/** The errno values the data path tests for (asm-generic/errno-base.h, errno.h). */
export const ERRNO = { EINTR: 4, EIO: 5, EAGAIN: 11, EPIPE: 32 } as const;

const ERRNO_NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(koffi.os.errno)) {
  if (!ERRNO_NAMES.has(value)) ERRNO_NAMES.set(value, name);
}
ERRNO_NAMES.set(11, 'EAGAIN'); // EWOULDBLOCK is the same number; prefer the usual name.

/** `errno()` is the calling thread's errno after the last koffi call. */
export function errno(): number {
  return koffi.errno();
}

/** `errnoName(n)` is the symbolic name of errno `n` ('EINVAL'), or `E<n>` when unknown. */
export function errnoName(n: number): string {
  return ERRNO_NAMES.get(n) ?? `E${n}`;
}

/** `errnoNumber(name)` is the errno value of `name`, e.g. errnoNumber('EBUSY') is 16. */
export function errnoNumber(name: string): number {
  const n = (koffi.os.errno as Record<string, number>)[name];
  if (n === undefined) throw new RangeError(`unknown errno name ${name}`);
  return n;
}

/** `fail(syscall, subject?)` is a NativeError for the errno the last call left behind. */
export function fail(syscall: string, subject?: string): NativeError {
  const e = errno();
  return new NativeError(syscall, e, errnoName(e), subject);
}

/** `addressOf(ptr)` is a koffi pointer's address as a number (exact: user addresses are < 2^47). */
export function addressOf(ptr: unknown): number {
  return Number(koffi.address(ptr));
}

/** `bufferAddress(b)` is the address of `b`'s first byte (for structures the kernel reads, e.g. an iocb's buffer). */
export function bufferAddress(b: Uint8Array): number {
  return Number(koffi.address(b));
}

/** `isMapFailed(ptr)` is whether an mmap result is MAP_FAILED ((void *)-1). */
export function isMapFailed(ptr: unknown): boolean {
  return ptr === null || koffi.address(ptr) === 0xffffffffffffffffn;
}

/** `viewAt(address, length)` is an ArrayBuffer over `length` bytes of this process's memory at `address`, without copy. */
export function viewAt(address: number, length: number): ArrayBuffer {
  return koffi.view(libc.pointerOf(address, 0, 0), length);
}

/** A koffi uv_poll handle. */
export interface KoffiPollHandle {
  close(): void;
  ref(): void;
  unref(): void;
}

/**
 * `koffiPoll(fd, opts, cb)` is koffi's libuv poll handle factory (uv_poll on any pollable fd).
 * koffi calls `cb(status, events)`; its typings omit `status` (the API is new in 2.15).
 */
export const koffiPoll = (koffi as unknown as {
  node?: { poll?: (fd: number, opts: { readable: boolean }, cb: (status: number) => void) => KoffiPollHandle };
}).node?.poll;
