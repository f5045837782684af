// Named pipes used as doorbells between processes: a writer puts one byte in, the reader's
// event loop wakes (fd-watch.ts) and drains. Chosen over an eventfd because a FIFO is reached
// by path, so no descriptor passing (SCM_RIGHTS, pidfd_getfd and its ptrace permission) is
// needed, at the same latency (see fd-watch.ts for the measurements).
import { addon } from './addon.ts';
import { ERRNO, NativeError, O, errno, errnoName, fail, libc } from './libc.ts';

const { EAGAIN, EINTR, EPIPE } = ERRNO;

/** `mkfifo(path, mode)` creates a FIFO; NativeError (EEXIST, ...) on failure. */
export function mkfifo(path: string, mode = 0o600): void {
  if (libc.mkfifo(path, mode) !== 0) throw fail('mkfifo', path);
}

/**
 * `openFifoReader(path)` opens the read end non-blocking. O_RDWR (Linux-specific for FIFOs)
 * makes the open succeed without a writer and keeps end-of-file from ever being reported when
 * writers come and go.
 */
export function openFifoReader(path: string): number {
  const fd = libc.open(path, O.RDWR | O.NONBLOCK | O.CLOEXEC, 0);
  if (fd < 0) throw fail('open', path);
  return fd;
}

/** `openFifoWriter(path)` opens the write end non-blocking; NativeError ENXIO when nobody reads it, ENOENT when it is gone. */
export function openFifoWriter(path: string): number {
  const fd = libc.open(path, O.WRONLY | O.NONBLOCK | O.CLOEXEC, 0);
  if (fd < 0) throw fail('open', path);
  return fd;
}

const ONE = new Uint8Array([1]);

/**
 * `ringFifo(fd)` writes one byte: 'ok'; 'full' when the pipe already holds 64 KiB of unread
 * bytes (the reader is certain to wake anyway); 'gone' when the reader has closed it (EPIPE;
 * Node ignores SIGPIPE).
 */
export function ringFifo(fd: number): 'ok' | 'full' | 'gone' {
  for (;;) {
    // Through the addon when built: a koffi call costs ~0.4-0.6 us more than write(2) itself.
    let e: number;
    if (addon !== undefined) {
      const r = addon.kick(fd);
      if (r === 1) return 'ok';
      e = -r;
    } else {
      if (libc.write(fd, ONE, 1) === 1) return 'ok';
      e = errno();
    }
    if (e === EINTR) continue;
    if (e === EAGAIN) return 'full';
    if (e === EPIPE) return 'gone';
    throw new NativeError('write', e, errnoName(e), `fifo fd ${fd}`);
  }
}
