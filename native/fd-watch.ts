// Waiting for a file descriptor to become readable through Node's own event loop: a libuv
// uv_poll handle on the fd, so no thread is ever blocked and nothing spins. The handle comes from
// our own small addon (native/addon/poll.c, built at npm install when a C compiler is there:
// one JavaScript call per event, run like Node's own I/O callbacks) or else from koffi.node.poll
// (which builds an event object per call). XENBLK_POLL=koffi picks koffi even when the addon is
// built (for comparisons); the ring benchmark's one-request round trips were ~15% faster with
// the addon.
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
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { NativeError, koffiPoll } from './libc.ts';
import type { KoffiPollHandle } from './libc.ts';

interface PollAddon {
  start(fd: number, cb: (status: number) => void): unknown;
  ref(w: unknown): void;
  unref(w: unknown): void;
  close(w: unknown): void;
}

/** Where the addon is, seen from this file (native/) or from the CLI bundle (dist/). */
const ADDON_CANDIDATES = ['./addon/build/poll.node', '../native/addon/build/poll.node'];

function loadAddon(): { addon?: PollAddon; why?: string } {
  if (process.env.XENBLK_POLL === 'koffi') return { why: 'XENBLK_POLL=koffi' };
  const req = createRequire(import.meta.url);
  for (const c of ADDON_CANDIDATES) {
    const p = fileURLToPath(new URL(c, import.meta.url));
    if (!existsSync(p)) continue;
    try {
      return { addon: req(p) as PollAddon };
    } catch (e) {
      // Built for another Node or machine: koffi serves.
      return { why: `${p}: ${(e as Error).message}` };
    }
  }
  return { why: 'native/addon/build/poll.node not built' };
}

const loaded = loadAddon();
const addon = loaded.addon;

/** `pollImplementation` is which uv_poll source FdWatch uses: our addon or koffi. */
export const pollImplementation: 'addon' | 'koffi' = addon !== undefined ? 'addon' : 'koffi';
/** `pollDescription` says which one, and why not the addon when it is koffi. */
export const pollDescription = addon !== undefined ? 'poll addon' : `koffi.node.poll (${loaded.why ?? '?'})`;

function addonPoll(a: PollAddon, fd: number, cb: (status: number) => void): KoffiPollHandle {
  const w = a.start(fd, cb);
  return { close: () => a.close(w), ref: () => a.ref(w), unref: () => a.unref(w) };
}

const active = new Set<FdWatch>();

/** A readable-interest watch on one fd. */
export class FdWatch {
  private handle: KoffiPollHandle | undefined;

  /** `new FdWatch(fd, onReadable)` calls `onReadable()` from the event loop whenever `fd` is readable. */
  constructor(readonly fd: number, onReadable: () => void, onError?: (e: NativeError) => void) {
    const cb = (status: number): void => {
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
    };
    if (addon !== undefined) {
      this.handle = addonPoll(addon, fd, cb);
    } else {
      if (koffiPoll === undefined) throw new NativeError('poll', 0, 'ENOSYS', 'koffi.node.poll (koffi >= 2.15 required)');
      this.handle = koffiPoll(fd, { readable: true }, cb);
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
