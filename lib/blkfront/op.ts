// One Block API call in flight: the caller's promise, its data and what is left to send.
// A read or write of any length is one IoOp; the dispatcher cuts it into blkif requests as
// ring slots and grants allow, and puts the sectors of unanswered requests back here when the
// backend goes away, so they are sent again after reconnecting (Linux blkif_recover).
import type { ScatterList } from './requests.ts';
import type { BlkfrontError } from './errors.ts';

/** What the caller asked for. */
export type IoKind = 'read' | 'write' | 'flush' | 'discard';

/** A Block API operation being carried out. */
export class IoOp {
  /** Ranges of 512-byte sectors not yet sent: [pendStart[i], pendEnd[i]). */
  readonly pendStart: number[] = [];
  readonly pendEnd: number[] = [];
  /** Requests of this op on a ring now. */
  inflight = 0;
  /** Whether the op waits in the dispatcher's FIFO. */
  queued = false;
  /** The first error a request of this op met. */
  error: BlkfrontError | null = null;
  /** The promise is settled (done, failed or aborted). */
  settled = false;
  /** The caller gave up (abort, device failure): late responses must not touch `data`. */
  detached = false;
  /** Cleanup of the AbortSignal listener. */
  unlisten: (() => void) | null = null;
  /** Requests sent (more than one per range when re-sent after a reconnect). */
  requests = 0;

  constructor(
    /** Submission order: the FIFO and recovery keep it. */
    readonly seq: number,
    readonly kind: IoKind,
    /** First 512-byte sector (blkif.h units). */
    readonly sector: number,
    /** Number of 512-byte sectors (0 for flush). */
    readonly count: number,
    /** The caller's buffers, for reads and writes. */
    readonly data: ScatterList | null,
    /** DISCARD: BLKIF_DISCARD_SECURE or 0. */
    readonly discardFlag: number,
    readonly resolve: () => void,
    readonly reject: (e: Error) => void,
  ) {
    // A flush is one empty range: one request with no segments.
    this.pendStart.push(sector);
    this.pendEnd.push(sector + count);
  }

  /** `hasPending` is whether requests remain to be sent (a flush is one empty range until sent). */
  get hasPending(): boolean {
    return this.pendStart.length > 0;
  }

  /** `requeue(start, end)` puts the sectors of an unanswered request back to be sent again. */
  requeue(start: number, end: number): void {
    this.pendStart.push(start);
    this.pendEnd.push(end);
  }

  /** `dropPending()` forgets every unsent range (the op was aborted or failed). */
  dropPending(): void {
    this.pendStart.length = 0;
    this.pendEnd.length = 0;
  }
}
