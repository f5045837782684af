// The frontend's request queue across all rings: Block API operations wait here in
// submission order and are cut into blkif requests as ring slots and grants free up.
//
// - Backpressure and fairness: one FIFO for every queue (ring). The operation at its head is
//   sent before any later one, so a large operation is never starved by small ones; when no
//   ring can take its next request, dispatch stops until a response frees room (Linux stops
//   the hardware queue on RING_FULL and restarts it from blkif_interrupt).
// - Flush ordering: a flush leaves the FIFO only when every earlier operation has been
//   answered, so FLUSH_DISKCACHE / WRITE_BARRIER covers all writes submitted before it; later
//   operations wait behind it.
// - Recovery (Linux blkif_recover): when the backend goes away, every unanswered request's
//   sectors go back to their operation, which returns to the FIFO in submission order, and
//   are sent again, re-split for the new connection's limits, once the backend is back.
import {
  BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
  BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
} from '../../protocol/blkif.ts';
import { BlkfrontError } from './errors.ts';
import { IoOp } from './op.ts';
import type { IoKind } from './op.ts';
import type { BlkfrontQueue, QueueOwner } from './queue.ts';
import { wireOpName } from './queue.ts';
import { chunkEnd } from './requests.ts';
import type { ScatterList } from './requests.ts';

/** Largest DISCARD sent as one request, in 512-byte sectors (Linux allows UINT_MAX; stay well inside u32). */
export const DISCARD_MAX_SECTORS = 2 ** 30;

/** Per-connection data-path settings. */
export interface DispatchConfig {
  /** FLUSH_DISKCACHE, WRITE_BARRIER, or null when the backend writes through (flush completes locally). */
  flushOp: number | null;
  /** Most segments in one read/write request. */
  maxSegments: number;
}

/** Counters for diagnostics and the demo summary. */
export interface DispatchStats {
  /** Operations completed successfully / failed. */
  opsOk: number;
  opsFailed: number;
  /** Requests put on a ring (re-sent ones included). */
  requests: number;
  /** Requests sent again after a reconnect. */
  reissued: number;
  /** Responses with a status other than BLKIF_RSP_OKAY. */
  errorResponses: number;
  /** Requests whose data segments were the caller's I/O buffers, granted in place (no copy). */
  inPlace: number;
}

type Phase = 'waiting' | 'running' | 'failed';

/** The operation queue in front of the rings; owns no ring, the device hands them in. */
export class Dispatcher implements QueueOwner {
  private phase: Phase = 'waiting';
  private failure: BlkfrontError | null = null;
  private queues: BlkfrontQueue[] = [];
  private config: DispatchConfig = { flushOp: null, maxSegments: 11 };
  private fifo: IoOp[] = [];
  private head = 0;
  private seq = 0;
  private rotate = 0;
  private idleWaiters: (() => void)[] = [];
  private pumping = false;
  readonly stats: DispatchStats = { opsOk: 0, opsFailed: 0, requests: 0, reissued: 0, errorResponses: 0, inPlace: 0 };

  constructor(
    /** Called when the backend breaks the protocol on a ring; the device decides what follows. */
    private readonly onProtocolError: (e: BlkfrontError) => void,
    /** Called when the backend answers EOPNOTSUPP to a flush or discard, so the device stops offering it. */
    private readonly onFeatureLost: (feature: 'flush' | 'discard') => void = () => {},
  ) {}

  /** `attach(queues, config)` hands in the rings of a (re)connection and starts sending. */
  attach(queues: BlkfrontQueue[], config: DispatchConfig): void {
    if (this.phase === 'failed') {
      for (const q of queues) q.close();
      return;
    }
    this.queues = queues;
    this.config = config;
    this.phase = 'running';
    this.pump();
  }

  /** `flushOp` is what flush() currently sends (null: nothing, the disk writes through). */
  get flushOp(): number | null {
    return this.config.flushOp;
  }

  /** `failed` is the error that disabled this dispatcher, if any. */
  get failed(): BlkfrontError | null {
    return this.failure;
  }

  /** `inFlight` is how many requests wait for a response on the rings. */
  get inFlight(): number {
    let n = 0;
    for (const q of this.queues) n += q.inFlight;
    return n;
  }

  /** `queued` is how many operations wait in the FIFO. */
  get queued(): number {
    return this.fifo.length - this.head;
  }

  /**
   * `submit(kind, sector, count, data, discardFlag, signal)` queues an operation on 512-byte
   * sectors [sector, sector+count) and settles when every request of it is answered.
   */
  submit(kind: IoKind, sector: number, count: number, data: ScatterList | null, discardFlag: number, signal?: AbortSignal): Promise<void> {
    if (this.failure !== null) return Promise.reject(this.failure);
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise<void>((resolve, reject) => {
      const op = new IoOp(this.seq++, kind, sector, count, data, discardFlag, resolve, reject);
      if (signal !== undefined) {
        const onAbort = (): void => this.abort(op, abortError(signal));
        signal.addEventListener('abort', onAbort, { once: true });
        op.unlisten = () => signal.removeEventListener('abort', onAbort);
      }
      op.queued = true;
      this.fifo.push(op);
      this.pump();
    });
  }

  private abort(op: IoOp, e: BlkfrontError): void {
    if (op.settled) return;
    // Requests already on a ring cannot be recalled (blkif.h has no cancel): their responses
    // are consumed and dropped; the caller's buffers are not touched again.
    op.detached = true;
    op.dropPending();
    this.settle(op, e);
    this.pump();
  }

  /** `pump()` sends as many waiting requests as the rings and grants take, in FIFO order. */
  pump(): void {
    if (this.phase !== 'running' || this.pumping) return;
    this.pumping = true;
    try {
      this.dispatch();
    } finally {
      this.pumping = false;
    }
    for (const q of this.queues) q.push();
    this.checkIdle();
  }

  private dispatch(): void {
    const qs = this.queues;
    if (qs.length === 0) return;
    while (this.head < this.fifo.length) {
      const op = this.fifo[this.head]!;
      if (op.detached || !op.hasPending) {
        this.dequeue(op);
        continue;
      }
      if (op.kind === 'flush') {
        // Barrier semantics: everything submitted before the flush must be answered first.
        if (this.inFlight > 0) return;
        if (this.config.flushOp === null) {
          // No feature-flush-cache nor feature-barrier: the backend writes through (blkif.h);
          // with every earlier write answered there is nothing left to flush.
          op.dropPending();
          this.dequeue(op);
          this.maybeSettle(op);
          continue;
        }
      }
      // All requests of one operation go to one ring while it has room, as blk-mq keeps a
      // request's bios on one hardware queue: the backend can then merge the adjacent ones.
      let prefer = -1;
      while (op.hasPending) {
        const last = op.pendStart.length - 1;
        const start = op.pendStart[last]!;
        const end = op.pendEnd[last]!;
        const wireOp = this.wireOpFor(op);
        const stop = op.kind === 'read' || op.kind === 'write'
          ? chunkEnd(start, end, this.config.maxSegments)
          : op.kind === 'discard' ? Math.min(end, start + DISCARD_MAX_SECTORS) : end;
        let sent: number;
        try {
          sent = this.sendOnSomeQueue(op, wireOp, start, stop - start, prefer);
        } catch (e) {
          op.dropPending();
          if (op.error === null) op.error = e instanceof BlkfrontError ? e : new BlkfrontError('EIO', (e as Error).message, undefined, undefined, { cause: e });
          break;
        }
        if (sent < 0) return;
        prefer = sent;
        op.inflight++;
        op.requests++;
        this.stats.requests++;
        if (stop === end) {
          op.pendStart.pop();
          op.pendEnd.pop();
        } else {
          op.pendStart[last] = stop;
        }
      }
      this.dequeue(op);
      this.maybeSettle(op);
    }
  }

  private dequeue(op: IoOp): void {
    op.queued = false;
    this.head++;
    if (this.head === this.fifo.length) {
      this.fifo.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.fifo.length) {
      this.fifo = this.fifo.slice(this.head);
      this.head = 0;
    }
  }

  private wireOpFor(op: IoOp): number {
    switch (op.kind) {
      case 'read': return BLKIF_OP_READ;
      case 'write': return BLKIF_OP_WRITE;
      case 'discard': return BLKIF_OP_DISCARD;
      default: return this.config.flushOp ?? BLKIF_OP_FLUSH_DISKCACHE;
    }
  }

  /** Submits one request on queue `prefer` if it has room, else on the next queue with room; the index used, or -1. */
  private sendOnSomeQueue(op: IoOp, wireOp: number, start: number, count: number, prefer: number): number {
    const qs = this.queues;
    const n = qs.length;
    if (prefer >= 0 && prefer < n) {
      const q = qs[prefer]!;
      if (q.freeSlots > 0 && q.trySubmit(op, wireOp, start, count)) return prefer;
    }
    // Spread operations: start from the queue after the last one used, take the first with room.
    for (let k = 0; k < n; k++) {
      const i = (this.rotate + k) % n;
      const q = qs[i]!;
      if (q.freeSlots > 0 && q.trySubmit(op, wireOp, start, count)) {
        this.rotate = (i + 1) % n;
        return i;
      }
    }
    return -1;
  }

  /** QueueOwner: a request of `op` was answered with `status`. */
  requestDone(op: IoOp, wireOp: number, start: number, count: number, status: number): void {
    op.inflight--;
    if (status !== BLKIF_RSP_OKAY) this.requestFailed(op, wireOp, start, count, status);
    this.maybeSettle(op);
  }

  private requestFailed(op: IoOp, wireOp: number, start: number, count: number, status: number): void {
    this.stats.errorResponses++;
    const what = `${wireOpName(wireOp)} of sectors ${start}..${start + count} (512-byte units)`;
    let e: BlkfrontError | null;
    if (status === BLKIF_RSP_EOPNOTSUPP) {
      if (wireOp === BLKIF_OP_FLUSH_DISKCACHE || wireOp === BLKIF_OP_WRITE_BARRIER) {
        // Linux blkif_interrupt: the backend does not flush after all; stop sending flushes and
        // complete this one (the disk is then treated as writing through).
        this.config.flushOp = null;
        this.onFeatureLost('flush');
        e = null;
      } else {
        if (wireOp === BLKIF_OP_DISCARD) this.onFeatureLost('discard');
        e = new BlkfrontError('EOPNOTSUPP', `backend does not support ${what}`, 'status', status);
      }
    } else if (status === BLKIF_RSP_ERROR) {
      e = new BlkfrontError('EIO', `backend failed ${what}`, 'status', status);
    } else {
      // blkif.h defines no other status; Linux treats any other value as an error.
      e = new BlkfrontError('EIO', `backend answered ${what} with undefined status ${status}`, 'status', status);
    }
    if (e !== null && op.error === null) {
      op.error = e;
      op.dropPending();
    }
  }

  private maybeSettle(op: IoOp): void {
    if (op.inflight > 0 || op.hasPending || op.queued) return;
    this.settle(op, op.error);
  }

  private settle(op: IoOp, e: BlkfrontError | null): void {
    if (op.settled) return;
    op.settled = true;
    op.unlisten?.();
    op.unlisten = null;
    if (e === null) {
      this.stats.opsOk++;
      op.resolve();
    } else {
      this.stats.opsFailed++;
      op.reject(e);
    }
  }

  /** QueueOwner: the backend broke the protocol on a ring. */
  protocolError(e: BlkfrontError): void {
    this.onProtocolError(e);
  }

  /** QueueOwner: responses were consumed. */
  kick(): void {
    this.pump();
  }

  /**
   * `suspend()` takes the rings away for a reconnect (blkfront_resume / blkif_free(suspend)):
   * every unanswered request goes back to its operation, operations wait in submission order.
   */
  suspend(): void {
    const qs = this.queues;
    this.queues = [];
    if (this.phase === 'running') this.phase = 'waiting';
    const back: IoOp[] = [];
    for (const q of qs) {
      q.suspend((op, start, count) => {
        op.inflight--;
        if (op.detached || op.settled) return;
        op.requeue(start, start + count);
        this.stats.reissued++;
        if (!op.queued) {
          op.queued = true;
          back.push(op);
        }
      });
    }
    if (back.length > 0) {
      const rest = this.fifo.slice(this.head);
      this.fifo = [...back, ...rest].sort((a, b) => a.seq - b.seq);
      this.head = 0;
    }
  }

  /**
   * `fail(e)` disables the dispatcher: every waiting and unanswered operation is rejected with
   * `e`, and so is every later one. The rings stay as they are until `closeQueues()`.
   */
  fail(e: BlkfrontError): void {
    if (this.failure !== null) return;
    this.failure = e;
    this.phase = 'failed';
    const victims: IoOp[] = this.fifo.slice(this.head);
    for (const q of this.queues) victims.push(...q.pendingOps());
    this.fifo = [];
    this.head = 0;
    for (const op of victims) {
      op.detached = true;
      op.dropPending();
      op.queued = false;
      this.settle(op, e);
    }
    this.checkIdle();
  }

  /** `closeQueues()` releases every ring (grants revoked or deferred, channels closed). */
  closeQueues(): void {
    const qs = this.queues;
    this.queues = [];
    for (const q of qs) q.close();
    this.checkIdle();
  }

  /** `idle()` resolves once nothing waits in the FIFO and no request is on a ring. */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private isIdle(): boolean {
    return this.queued === 0 && this.inFlight === 0;
  }

  private checkIdle(): void {
    if (this.idleWaiters.length === 0 || !this.isIdle()) return;
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const r of w) r();
  }
}

function abortError(signal: AbortSignal): BlkfrontError {
  const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? 'aborted');
  return new BlkfrontError('ABORT_ERR', `operation aborted: ${reason}`, undefined, undefined, { cause: signal.reason });
}
