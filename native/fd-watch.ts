// Waiting for a file descriptor to become readable through Node's own event loop: a libuv
// uv_poll handle on the fd (koffi.node.poll), so no thread is ever blocked and nothing spins.
// Works for any pollable fd: FIFOs and eventfds (the simulator's doorbells), /dev/xen/evtchn.
//
// Two koffi behaviours this file exists to contain:
//  - the poll handle is closed when its JS object is garbage collected, so every active watch
//    is kept in a module-level set until `close()`;
//  - an exception thrown by the callback is silently dropped by koffi, so callbacks run inside
//    try/catch and errors are re-thrown on the next tick, where Node reports them as uncaught.
// Measured: a FIFO doorbell between two processes round-trips (ping + pong) in ~11-17 us p50,
// an eventfd pair handed over with pidfd_getfd ~16 us, net.Socket over a FIFO ~17-25 us, a
// Unix stream socket ~20 us.
import { NativeError, koffiPoll } from './libc.ts';
import type { KoffiPollHandle } from './libc.ts';

const active = new Set<FdWatch>();

/** A readable-interest watch on one fd. */
export class FdWatch {
  private handle: KoffiPollHandle | undefined;

  /** `new FdWatch(fd, onReadable)` calls `onReadable()` from the event loop whenever `fd` is readable. */
  constructor(readonly fd: number, onReadable: () => void, onError?: (e: NativeError) => void) {
    if (koffiPoll === undefined) throw new NativeError('poll', 0, 'ENOSYS', 'koffi.node.poll (koffi >= 2.15 required)');
    this.handle = koffiPoll(fd, { readable: true }, (status: number) => {
      try {
        if (status < 0) {
          const e = new NativeError('poll', -status, `uv error ${status}`, `fd ${fd}`);
          if (onError === undefined) throw e;
          onError(e);
          return;
        }
        onReadable();
      } catch (e) {
        process.nextTick(() => { throw e; });
      }
    });
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
