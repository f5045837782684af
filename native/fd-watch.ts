// Waiting for a file descriptor to become readable through Node's own event loop: a libuv
// uv_poll handle on the fd, so no thread is ever blocked and nothing spins. The handle comes from
// our own small addon (native/addon/poll.c, built at npm install when a C compiler is there:
// one JavaScript call per event, run like Node's own I/O callbacks) or else from koffi.node.poll
// (which builds an event object per call). XENBLK_POLL=koffi picks koffi even when the addon is
// built (for comparisons); the ring benchmark's one-request round trips were ~15% faster with
// the addon.
// Works for any pollable fd: FIFOs and eventfds (the simulator's doorbells), /dev/xen/evtchn.
// Each of those is read first thing when it turns readable, so a watch can do that read itself
// (FdWatchInput): the addon does it in C, saving a koffi call per wake-up.
//
// Two koffi behaviours this file exists to contain:
//  - the poll handle is closed when its JS object is garbage collected, so every active watch
//    is kept in a module-level set until `close()`;
//  - an exception thrown by the callback is silently dropped by koffi, so callbacks run inside
//    try/catch and errors are re-thrown on the next tick, where Node reports them as uncaught.
// Measured: a FIFO doorbell between two processes round-trips (ping + pong) in ~11-17 us p50,
// an eventfd pair handed over with pidfd_getfd ~16 us, net.Socket over a FIFO ~17-25 us, a
// Unix stream socket ~20 us.
import { addon, addonMissing, type XenblkAddon } from './addon.ts';
import { ERRNO, NativeError, errno, errnoName, koffiPoll, libc } from './libc.ts';
import type { KoffiPollHandle } from './libc.ts';

const { EAGAIN, EINTR, EIO } = ERRNO;

/** `pollImplementation` is which uv_poll source FdWatch uses: our addon or koffi. */
export const pollImplementation: 'addon' | 'koffi' = addon !== undefined ? 'addon' : 'koffi';
/** `pollDescription` says which one, and why not the addon when it is koffi. */
export const pollDescription = addon !== undefined ? 'poll addon' : `koffi.node.poll (${addonMissing ?? '?'})`;

function addonPoll(a: XenblkAddon, fd: number, cb: (result: number) => void, input: FdWatchInput | undefined): KoffiPollHandle {
  const w = input === undefined ? a.start(fd, cb) : a.start(fd, cb, input.buffer, input.echo === true);
  return { close: () => a.close(w), ref: () => a.ref(w), unref: () => a.unref(w) };
}

/**
 * What the watch reads itself each time the fd turns readable, before calling back: one read(2)
 * of up to `buffer.length` bytes into `buffer`, and with `echo` a write(2) of those bytes back
 * (/dev/xen/evtchn: reading takes the pending ports, writing them back unmasks them). The
 * callback gets the byte count, 0 when nothing was there. The addon does both without a call
 * out of JavaScript; with koffi they are two more koffi calls here.
 */
export interface FdWatchInput {
  readonly buffer: Uint8Array;
  readonly echo?: boolean;
}

/** One read (and echo) as the addon does it: the byte count, or a negative errno. */
function takeInput(fd: number, input: FdWatchInput): number {
  let n: number;
  do n = libc.read(fd, input.buffer, input.buffer.length); while (n < 0 && errno() === EINTR);
  if (n < 0) {
    const e = errno();
    return e === EAGAIN ? 0 : -e;
  }
  if (input.echo === true && n > 0) {
    let m: number;
    do m = libc.write(fd, input.buffer, n); while (m < 0 && errno() === EINTR);
    if (m < 0) return -errno();
    if (m !== n) return -EIO;
  }
  return n;
}

const active = new Set<FdWatch>();

/** A readable-interest watch on one fd. */
export class FdWatch {
  private handle: KoffiPollHandle | undefined;

  /**
   * `new FdWatch(fd, onReadable, input?)` calls `onReadable(n)` from the event loop whenever `fd`
   * is readable: with `input`, after reading (and echoing) what is pending, `n` bytes of it;
   * without, n is 0. A failed poll, read or write goes to `onError` (else is thrown as uncaught).
   */
  constructor(readonly fd: number, onReadable: (n: number) => void, input?: FdWatchInput, onError?: (e: NativeError) => void) {
    const cb = (result: number): void => {
      try {
        if (result < 0) {
          const e = new NativeError(input === undefined ? 'poll' : input.echo === true ? 'read/write' : 'read', -result, errnoName(-result), `fd ${fd}`);
          if (onError === undefined) throw e;
          onError(e);
          return;
        }
        onReadable(result);
      } catch (e) {
        process.nextTick(() => { throw e; });
      }
    };
    if (addon !== undefined) {
      this.handle = addonPoll(addon, fd, cb, input);
    } else {
      if (koffiPoll === undefined) throw new NativeError('poll', 0, 'ENOSYS', 'koffi.node.poll (koffi >= 2.15 required)');
      // koffi's callback gets (status, events); a uv status is 0 or a negative errno.
      this.handle = koffiPoll(fd, { readable: true }, (status: number) => cb(status < 0 || input === undefined ? status : takeInput(fd, input)));
    }
    active.add(this);
  }

  /** `w.ref()` makes the watch keep the process alive (the default). */
  ref(): void {
    this.handle?.ref();
  }

  /** `w.unref()` lets the process exit while the watch is active. */
  unref(): void {
    this.handle?.unref();
  }

  /** `w.close()` stops watching; the fd itself is not closed. */
  close(): void {
    if (this.handle === undefined) return;
    this.handle.close();
    this.handle = undefined;
    active.delete(this);
  }
}
