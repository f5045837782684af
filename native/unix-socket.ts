// A blocking, connected AF_UNIX stream socket outside libuv, for synchronous request/reply
// exchanges with a local daemon (the simulator's "hypercalls": gnttab and evtchn calls are
// synchronous by contract, see gnttab/gnttab.ts). The event loop is blocked only for the
// duration of one exchange with a process that answers without waiting on anyone.
// Close-on-exec, so a child process never keeps our end alive (the daemon detects our death by
// the connection closing).
import { AF_UNIX, ERRNO, NativeError, SOCK, errno, errnoName, fail, libc } from './libc.ts';

const { EINTR } = ERRNO;

/** sizeof(sockaddr_un.sun_path) on Linux. */
const SUN_PATH_MAX = 108;

/** A connected blocking Unix stream socket. */
export class BlockingUnixSocket {
  private fd_: number;

  private constructor(fd: number, readonly path: string) {
    this.fd_ = fd;
  }

  /** `BlockingUnixSocket.connect(path)` connects to a listening Unix socket at `path`. */
  static connect(path: string): BlockingUnixSocket {
    const bytes = Buffer.from(path, 'utf8');
    if (bytes.length >= SUN_PATH_MAX) throw new NativeError('connect', 36, 'ENAMETOOLONG', path);
    const addr = Buffer.alloc(2 + SUN_PATH_MAX);
    addr.writeUInt16LE(AF_UNIX, 0);
    bytes.copy(addr, 2);
    const fd = libc.socket(AF_UNIX, SOCK.STREAM | SOCK.CLOEXEC, 0);
    if (fd < 0) throw fail('socket', path);
    for (;;) {
      if (libc.connect(fd, addr, 2 + bytes.length + 1) === 0) break;
      const e = errno();
      if (e === EINTR) continue;
      libc.close(fd);
      throw new NativeError('connect', e, errnoName(e), path);
    }
    return new BlockingUnixSocket(fd, path);
  }

  /** `s.fd` is the descriptor (-1 once closed). */
  get fd(): number {
    return this.fd_;
  }

  /** `s.writeAll(buf, length)` writes the first `length` bytes of `buf`, blocking until done. */
  writeAll(buf: Uint8Array, length: number = buf.length): void {
    let off = 0;
    while (off < length) {
      const n = libc.write(this.liveFd(), off === 0 ? buf : buf.subarray(off), length - off);
      if (n < 0) {
        if (errno() === EINTR) continue;
        throw fail('write', this.path);
      }
      off += n;
    }
  }

  /** `s.readExact(buf, length)` fills the first `length` bytes of `buf`; ECONNRESET on end of stream. */
  readExact(buf: Uint8Array, length: number): void {
    let off = 0;
    while (off < length) {
      const n = libc.read(this.liveFd(), off === 0 ? buf : buf.subarray(off), length - off);
      if (n < 0) {
        if (errno() === EINTR) continue;
        throw fail('read', this.path);
      }
      if (n === 0) throw new NativeError('read', 104, 'ECONNRESET', `${this.path}: peer closed the connection`);
      off += n;
    }
  }

  /** `s.close()` closes the socket (idempotent). */
  close(): void {
    if (this.fd_ < 0) return;
    libc.close(this.fd_);
    this.fd_ = -1;
  }

  private liveFd(): number {
    if (this.fd_ < 0) throw new NativeError('write', 9, 'EBADF', `${this.path}: socket closed`);
    return this.fd_;
  }
}
