// The I/Os a kernel I/O engine (aio.ts, io-uring.ts) has in flight: a slot each, whose number is
// what the kernel hands back with the completion, holding the caller's callback and buffers (so
// the memory stays referenced until the kernel is done with it), and the event-loop reference of
// the engine's completion watch, held exactly while anything is in flight so that an idle engine
// never keeps the process alive.
import type { FdWatch } from './fd-watch.ts';

/** What an I/O ended with: bytes transferred (>= 0) or -errno. */
export type IoCallback = (res: number) => void;

export class IoSlots {
  private readonly free: number[] = [];
  private readonly callbacks: (IoCallback | undefined)[];
  private readonly held: (readonly Uint8Array[] | undefined)[];
  /** The engine's completion watch, referenced while `inFlight` > 0 (set once it exists). */
  watch: FdWatch | undefined;
  /** Set when the engine closes: its watch is closed and no longer referenced or unreferenced. */
  closed = false;
  inFlight = 0;

  constructor(readonly capacity: number) {
    this.callbacks = new Array<IoCallback | undefined>(capacity).fill(undefined);
    this.held = new Array<readonly Uint8Array[] | undefined>(capacity).fill(undefined);
    for (let i = capacity - 1; i >= 0; i--) this.free.push(i);
  }

  /** `available` is how many slots are free. */
  get available(): number {
    return this.free.length;
  }

  /** `take(cb, buffers)` is a free slot now holding `cb` and `buffers`, or -1 when none is free. */
  take(cb: IoCallback, buffers: readonly Uint8Array[]): number {
    const slot = this.free.pop();
    if (slot === undefined) return -1;
    this.callbacks[slot] = cb;
    this.held[slot] = buffers;
    if (this.inFlight++ === 0 && !this.closed) this.watch?.ref();
    return slot;
  }

  /** `end(slot, res)` frees `slot` and calls its callback with `res`; a slot not in use (or out of range) is ignored. */
  end(slot: number, res: number): void {
    const cb = slot < this.capacity ? this.callbacks[slot] : undefined;
    if (cb === undefined) return;
    this.callbacks[slot] = undefined;
    this.held[slot] = undefined;
    this.free.push(slot);
    if (--this.inFlight === 0 && !this.closed) this.watch?.unref();
    cb(res);
  }

  /** `endAll(res)` ends every slot in use with `res`. */
  endAll(res: number): void {
    for (let s = 0; s < this.capacity; s++) this.end(s, res);
  }
}
