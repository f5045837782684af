// The blkback data path for one ring (one queue): consume requests, copy each out of shared
// memory once, validate it, map its grants, issue the I/O straight into the mapped pages,
// answer in completion order. The shape follows Linux xen-blkback blkback.c:
// __do_block_io_op (consume, then RING_FINAL_CHECK_FOR_REQUESTS), dispatch_rw_block_io
// (validation, grant mapping, I/O), dispatch_discard_io, dispatch_other_io (unknown op:
// EOPNOTSUPP), make_response (unmap, then respond and notify when rsp_event asks).
//
// Facts carried over from Linux:
// - A request is copied once (XSA-155); only the private copy is validated.
// - A frontend that publishes req_prod more than a ring ahead of our responses is buggy or
//   malicious: processing of that ring halts (RING_REQUEST_PROD_OVERFLOW), nothing else does.
// - Every malformed request is answered BLKIF_RSP_ERROR, an unknown operation
//   BLKIF_RSP_EOPNOTSUPP; the response carries the request's id and, for INDIRECT, indirect_op
//   as the operation (blkfront checks it).
// - Writes, flushes, barriers and discards on a read-only disk fail (xen_vbd_translate); a
//   range past the end or wrapping fails; on a 4096-byte-sector disk a request with data whose
//   start or segment lengths are not whole logical sectors fails ("Misaligned I/O").
// - Grants are mapped read-only for writes (we only read the guest's pages) and writable for
//   reads, unless persistent (always writable, reused for both directions); a grant that
//   cannot be mapped fails the request. Grants are unmapped before the response is published,
//   so the frontend may end access as soon as it sees it.
// - A barrier waits for every earlier request to complete (xen_blk_drain_io) and later
//   requests wait for it. A flush or barrier carrying data flushes, writes, then flushes again
//   so the data is durable when acknowledged (blkfront sends FUA writes this way).
// - In flight per ring is bounded (Linux: one pending_req per ring slot); a request that finds
//   no free slot waits and counts as oo_req.
// - With persistent grants the indirect descriptor pages are kept mapped too, in the same
//   cache as the data pages and under the same bound (Linux xen_blkbk_parse_indirect maps them
//   with xen_blkbk_map through the one persistent tree, writable like every persistent
//   mapping). Linux blkfront takes indirect and data pages from one pool of (segments +
//   indirect pages) x ring slots grants (blkfront_setup_indirect: 33 x 32 = 1056 with its
//   defaults, Linux blkback's max_persistent_grants), so a grant is an indirect page in one
//   request and a data page in a later one: one cache maps it once, where a cache of its own
//   for indirect pages mapped it a second time.
// - Persistent grants not cached yet are mapped per request, all of them by one call (a run,
//   persistent-grants.ts), where Linux maps each segment's grant on its own: the run's pages
//   are adjacent in memory, so the next request over the same buffers is one I/O vector entry.
// - Reads and writes consumed in one pass over the ring are plugged and issued together at its
//   end; a run of them of one direction whose sectors follow each other goes to the backing as
//   one vectored call (Linux: blk_start_plug/blk_finish_plug around the batch in
//   __do_block_io_op, and the block layer merges the adjacent bios), up to MERGE_MAX_BYTES and
//   IOV_MAX buffers. Each request of a merged run is answered with the run's status, as a
//   merged block request completes all its bios alike.
// - Each response is published (rsp_prod) as its request completes, as Linux's make_response
//   does, so a frontend still working through the responses before it sees this one at once.
//   Whether the frontend asked for an event is checked once per batch of completions (when
//   the synchronous stretch that completed them ends) over everything published since the last
//   check: ring.h's RING_PUSH_RESPONSES_AND_CHECK_NOTIFY split in two (protocol/ring.ts
//   publishResponses/responsesNotifyDue), because here an event costs a system call, not the
//   in-kernel hypercall Linux's backend makes. Measured: publishing only at the end of the
//   event-loop turn made the simulator's ring move in lock-step batches (4 KiB random reads at
//   QD32 0.70-0.78x of the direct figure; 0.74-0.85x publishing at once); an event check per
//   response cost more dom0 CPU per request on real Xen (3.1 ms against 2.6 ms, one boot each).
//
// Grant copy (option grantCopy; QEMU's qdisk serves blkif this way when the grant device can
// copy): the request's pages are never mapped. The hypervisor copies a write's segments into a
// buffer of the slot's own (GNTTABOP_copy, one call per request) before the write is issued,
// and a read's data from that buffer into the segments after the read completed and before the
// response is published. The buffer holds the request's sectors back to back, so the backing
// gets one I/O vector entry per request (per merged run: one per request). Persistent grants
// are not used with it (nothing stays mapped to reuse). A segment that cannot be copied fails
// the request, as a map that cannot be made does. Each slot keeps its buffer for its next
// request up to COPY_BUFFER_KEEP bytes for the ring in all; past that a slot's buffer is freed
// when its request completes, so an idle ring holds at most that much.
//
// Allocation: decoding and responding reuse per-slot objects (the I/O vector too); what a
// request allocates is what its I/O call needs (a view per run of segments that is not a whole
// mapping, and the promise).
import type { GrantMapper, MappedGrants } from '../../gnttab/gnttab.ts';
import { PAGE_SIZE } from '../../gnttab/gnttab.ts';
import { GrantCopyBatch } from '../../gnttab/copy-batch.ts';
import { isGnttabError } from '../../gnttab/error.ts';
import type { EventChannel } from '../../evtchn/evtchn.ts';
import type { BlkifAbi, BlkifRequest, BlkifResponse } from '../../protocol/blkif.ts';
import {
  BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
  BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
  BLKIF_SECTOR_SIZE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
  blkifErrorStatus, decodeIndirectSegments, decodeRequest, encodeResponse, newBlkifRequest, newBlkifResponse,
  ringEntrySize,
} from '../../protocol/blkif.ts';
import type { BackRing } from '../../protocol/ring.ts';
import {
  backRingAttach, finalCheckForRequests, publishResponses, responsesNotifyDue, nextRequestSlot, nextResponseOffset,
  reqProd, requestProdOverflow, rspProd, sringAttach, unconsumedRequests,
} from '../../protocol/ring.ts';
import type { BlockBackend } from '../backends/block-backend.ts';
import { BackendError } from '../backends/block-backend.ts';
import type { PersistentGrant } from './persistent-grants.ts';
import { PersistentGrantCache, DEFAULT_MAX_PERSISTENT_GRANTS } from './persistent-grants.ts';
import { turnNow } from './turn-clock.ts';
import { Mapping } from '../../native/memory.ts';
import type { VbdStats } from './stats.ts';

/** What a ring needs to know about its disk; shared by the rings of one disk and updated on resize. */
export interface VbdGeometry {
  /** Size in 512-byte sectors (blkif `sectors`). */
  sectors: number;
  /** Logical sector size in bytes (blkif `sector-size`). */
  sectorSize: number;
  readonly: boolean;
  /** feature-flush-cache / feature-barrier advertised: the backing has a cache to flush. */
  flush: boolean;
  /** feature-discard advertised. */
  discard: boolean;
  /** discard-secure advertised. */
  discardSecure: boolean;
}

/**
 * One request in this many (a power of two) is timed for the latency histogram. A sample keeps
 * p50/p99 as meaningful, and a request not timed costs no clock read: in a Xen PV dom0 every
 * read is a system call through the hypervisor (turn-clock.ts), and even at one read per turn
 * the clock was ~3% of `xenblk serve`'s CPU in the real-Xen benchmark's profile.
 */
export const LATENCY_SAMPLE = 16;

/** Where the batch's notify check is queued: a settled promise's job runs when the current synchronous stretch ends. */
const SETTLED = Promise.resolve();

/** A problem on a ring that stops it (the frontend broke the ring protocol). */
export class RingServiceError extends Error {
  override readonly name = 'RingServiceError';
  constructor(message: string, readonly field: string, readonly value: number) {
    super(message);
  }
}

export interface RingServiceOptions {
  readonly abi: BlkifAbi;
  /** The mapped ring pages; the service unmaps them at close. */
  readonly ring: MappedGrants;
  /** The bound event channel; the service closes it at close. */
  readonly channel: EventChannel;
  readonly mapper: GrantMapper;
  readonly frontendDomid: number;
  readonly backing: BlockBackend;
  readonly vbd: VbdGeometry;
  readonly stats: VbdStats;
  /** Both ends offered feature-persistent. */
  readonly persistent: boolean;
  /** Persistent grants kept per ring (Linux max_persistent_grants, default 1056). */
  readonly maxPersistentGrants?: number;
  /** Copy data through the hypervisor (grant copy) instead of mapping the grants; persistent is then ignored. */
  readonly grantCopy?: boolean;
  /** What we advertised in feature-max-indirect-segments (0: no indirect requests). */
  readonly maxIndirectSegments: number;
  /** Requests in flight at most (default: the ring size, as Linux's pending_req pool). */
  readonly maxInFlight?: number;
  /** Called once if the ring halts because the frontend broke the ring protocol. */
  readonly onHalt?: (err: RingServiceError) => void;
}

/** One request in flight: preallocated and reused (Linux struct pending_req). */
interface Slot {
  readonly req: BlkifRequest;
  /** When it was consumed (turn clock), or -1 when it is not one of the timed requests. */
  start: number;
  /** Total 512-byte sectors of a read/write. */
  nsect: number;
  /** Non-persistent mapping of all segments (page i = segment i) or undefined. */
  batch: MappedGrants | undefined;
  /** Persistent grants used by segment i < npg (persistent mode). */
  readonly pgrants: (PersistentGrant | undefined)[];
  npg: number;
  /** Single-page mappings not cached (persistent mode, cache full of grants in use). */
  readonly oneOff: MappedGrants[];
  /** Per segment: the buffer holding it and the byte offset of its first sector. */
  readonly segBuf: (Buffer | undefined)[];
  readonly segOff: Int32Array;
  readonly segLen: Int32Array;
  /** The I/O vector handed to the backend, reused (the slot is the request's until it completes). */
  readonly iov: Buffer[];
  /** Grant copy: the request's data, sectors back to back, and the copies that fill or empty it. */
  bounce: Buffer | undefined;
  bounceMap: Mapping | undefined;
  copies: GrantCopyBatch | undefined;
  /** Completion callbacks of a plain read or write, bound once per slot (no closure per request). */
  readonly rwDone: () => void;
  readonly rwFailed: (e: unknown) => void;
}

/** `backingStatus(e)` is the blkif status for a failed backing call (Linux: -EOPNOTSUPP gives BLKIF_RSP_EOPNOTSUPP). */
function backingStatus(e: unknown): number {
  return e instanceof BackendError && e.code === 'EOPNOTSUPP' ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR;
}

/**
 * Largest merged read or write (bytes): 1280 KiB, Linux's default max_sectors_kb (block layer
 * BLK_DEF_MAX_SECTORS_CAP, 2560 sectors), so that a 1 MiB operation of the guest merges whole
 * but a burst of them is not held back until the slowest part of one large call completes.
 */
const MERGE_MAX_BYTES = 1280 << 10;
/** Most buffers in one merged call (Linux IOV_MAX, the limit of preadv/pwritev). */
const MERGE_MAX_IOV = 1024;

/** Grant copy: bytes of slot buffers a ring keeps between requests (more is freed as requests complete). */
export const COPY_BUFFER_KEEP = 8 << 20;
/** Grant copy: a slot's buffer is at least this big (Linux blkfront's 32-segment indirect requests: 128 KiB). */
const COPY_BUFFER_MIN = 128 << 10;

const NOT_RUNNING = 0;
const WAITING = 1;
const RUNNING = 2;

/** The service of one blkif ring. */
export class RingService {
  readonly abi: BlkifAbi;
  readonly back: BackRing;
  private readonly ring: MappedGrants;
  private readonly channel: EventChannel;
  private readonly mapper: GrantMapper;
  private readonly domid: number;
  private readonly backing: BlockBackend;
  private readonly vbd: VbdGeometry;
  private readonly stats: VbdStats;
  private readonly maxIndirect: number;
  private readonly maxInFlight: number;
  private readonly cache: PersistentGrantCache | undefined;
  /** The one-slot list iovec() gathers from (reused: gather is synchronous). */
  private readonly single: Slot[] = [];
  private readonly grantCopy: boolean;
  /** Grant copy: bytes of slot buffers held now. */
  private bounceBytes = 0;
  /** Grant copy: the copies of a request's indirect descriptor pages. */
  private readonly indirectCopies: GrantCopyBatch | undefined;
  private readonly onHalt: ((err: RingServiceError) => void) | undefined;
  private readonly slots: Slot[] = [];
  private readonly free: Slot[] = [];
  /** Reads and writes validated and mapped in this pass over the ring, issued at its end. */
  private readonly plugged: Slot[] = [];
  private readonly rsp: BlkifResponse = newBlkifResponse();
  /** Private copy of the indirect segment descriptors (8 pages). */
  private readonly indirectScratch = new Uint8Array(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * PAGE_SIZE);
  private inFlightCount = 0;
  private waitingForSlot = false;
  private barrier: Slot | undefined;
  private barrierState = NOT_RUNNING;
  private draining = false;
  private closed = false;
  /** The batch's notify check is queued (see complete). */
  private notifyPending = false;
  /** rsp_prod at the last notify check. */
  private rspChecked = 0;
  private readonly checkNotify = (): void => {
    this.notifyPending = false;
    this.notifyIfDue();
  };
  private halted = false;
  private drainWaiters: (() => void)[] = [];
  private cacheCounted = 0;
  private evictionsCounted = 0;
  /** Requests taken so far (picks the timed ones). */
  private taken = 0;

  constructor(opts: RingServiceOptions) {
    this.abi = opts.abi;
    this.ring = opts.ring;
    this.channel = opts.channel;
    this.mapper = opts.mapper;
    this.domid = opts.frontendDomid;
    this.backing = opts.backing;
    this.vbd = opts.vbd;
    this.stats = opts.stats;
    this.maxIndirect = opts.maxIndirectSegments;
    this.onHalt = opts.onHalt;
    const sring = sringAttach(new Uint8Array(opts.ring.buffer.buffer, opts.ring.buffer.byteOffset, opts.ring.buffer.byteLength), ringEntrySize(opts.abi));
    // BACK_RING_ATTACH at rsp_prod: after a reconnect, what was answered is not served twice.
    this.back = backRingAttach(sring);
    this.rspChecked = this.back.rspProdPvt;
    if (((reqProd(sring) - rspProd(sring)) >>> 0) > sring.size) {
      throw new RingServiceError(`ring has req_prod ${reqProd(sring)} more than ${sring.size} ahead of rsp_prod ${rspProd(sring)}`, 'req_prod', reqProd(sring));
    }
    this.maxInFlight = Math.max(1, Math.min(opts.maxInFlight ?? sring.size, sring.size));
    const maxPersistent = opts.maxPersistentGrants ?? DEFAULT_MAX_PERSISTENT_GRANTS;
    this.grantCopy = opts.grantCopy === true;
    this.cache = opts.persistent && !this.grantCopy ? new PersistentGrantCache(opts.mapper, maxPersistent, opts.backing.registerMemory?.bind(opts.backing)) : undefined;
    this.indirectCopies = this.grantCopy ? new GrantCopyBatch(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) : undefined;
  }

  /** `ringSize` is the number of entries of the ring. */
  get ringSize(): number {
    return this.back.sring.size;
  }

  /** `inFlight` is how many requests are being served now. */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /** `persistentGrants` is how many pages this ring keeps mapped persistently (the runs' pages). */
  get persistentGrants(): number {
    return this.cache?.size ?? 0;
  }

  /** `copyBufferBytes` is how much memory the ring's grant copy buffers take now. */
  get copyBufferBytes(): number {
    return this.bounceBytes;
  }

  /** `isHalted` tells whether the frontend broke the ring and processing stopped. */
  get isHalted(): boolean {
    return this.halted;
  }

  /** `start()` begins serving: events on the channel wake the consumer; requests already queued are served. */
  start(): void {
    this.channel.onEvent(() => {
      this.stats.events++;
      this.kick();
    });
    this.kick();
  }

  /** `drain()` stops consuming new requests and resolves when none is in flight. */
  drain(): Promise<void> {
    this.draining = true;
    if (this.inFlightCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /**
   * `close()` drains, then releases everything the ring holds: persistent and in-flight grant
   * mappings, the ring mapping and the event channel. Idempotent.
   */
  async close(): Promise<void> {
    await this.drain();
    if (this.closed) return;
    this.notifyIfDue();
    this.closed = true;
    if (this.cache !== undefined) {
      this.cache.clear();
      this.syncCacheCount();
    }
    for (const s of this.slots) this.freeBounce(s);
    try {
      this.channel.close();
    } catch {
      // Already unbound (the peer went away): nothing left to release.
    }
    try {
      this.mapper.unmap(this.ring);
    } catch {
      // Already gone with its peer.
    }
  }

  /** `kick()` consumes every request the frontend published (do_block_io_op); called on each event. */
  kick(): void {
    this.consume();
    if (this.plugged.length > 0) this.unplug();
  }

  private consume(): void {
    if (this.closed || this.draining || this.halted) return;
    const b = this.back;
    for (;;) {
      const prod = reqProd(b.sring);
      if (requestProdOverflow(b, prod)) {
        this.halt(new RingServiceError(
          `frontend published req_prod ${prod}, more than ${b.sring.size} requests ahead of rsp_prod_pvt ${b.rspProdPvt}: halting the ring`,
          'req_prod', prod));
        return;
      }
      while (unconsumedRequests(b) > 0) {
        if (this.barrier !== undefined) return;
        const s = this.takeSlot();
        if (s === undefined) {
          this.stats.ooReq++;
          this.waitingForSlot = true;
          return;
        }
        this.dispatch(s, nextRequestSlot(b));
      }
      if (this.barrier !== undefined) return;
      if (!finalCheckForRequests(b)) return;
    }
  }

  private halt(err: RingServiceError): void {
    this.halted = true;
    this.stats.errors++;
    this.onHalt?.(err);
  }

  private takeSlot(): Slot | undefined {
    if (this.inFlightCount >= this.maxInFlight) return undefined;
    let s = this.free.pop();
    if (s === undefined) {
      // Slots are created on first need and reused: a ring that never has many requests in
      // flight never pays for 512 of them.
      const slot: Slot = {
        req: newBlkifRequest(),
        start: 0,
        nsect: 0,
        batch: undefined,
        pgrants: [],
        npg: 0,
        oneOff: [],
        segBuf: [],
        segOff: new Int32Array(Math.max(this.maxIndirect, 11)),
        segLen: new Int32Array(Math.max(this.maxIndirect, 11)),
        iov: [],
        bounce: undefined,
        bounceMap: undefined,
        copies: undefined,
        rwDone: () => this.rwDone(slot),
        rwFailed: (e: unknown) => this.complete(slot, backingStatus(e)),
      };
      s = slot;
      this.slots.push(s);
    }
    this.inFlightCount++;
    this.stats.inFlight++;
    s.start = (++this.taken & (LATENCY_SAMPLE - 1)) === 0 ? turnNow() : -1;
    return s;
  }

  /** Copies the request at `off` once, validates it and starts serving it. */
  private dispatch(s: Slot, off: number): void {
    const req = s.req;
    const err = decodeRequest(this.abi, this.ring.buffer, off, req, this.maxIndirect);
    if (err !== undefined) {
      this.countOp(req);
      this.complete(s, blkifErrorStatus(err));
      return;
    }
    switch (req.operation) {
      case BLKIF_OP_DISCARD:
        this.stats.dsReq++;
        this.run(s, this.serveDiscard(s));
        return;
      case BLKIF_OP_WRITE_BARRIER: {
        this.stats.fReq++;
        const status = this.prepareRw(s);
        if (status !== BLKIF_RSP_OKAY) {
          this.complete(s, status);
          return;
        }
        // Drain: the barrier runs when it is the only request in flight; nothing is consumed
        // until it completes.
        this.barrier = s;
        this.barrierState = WAITING;
        this.maybeStartBarrier();
        return;
      }
      default: {
        this.countOp(req);
        const status = this.prepareRw(s);
        if (status !== BLKIF_RSP_OKAY) {
          this.complete(s, status);
          return;
        }
        // What decodes and reaches here is READ, WRITE, INDIRECT (of a READ or WRITE) or FLUSH.
        if (req.operation === BLKIF_OP_FLUSH_DISKCACHE) this.run(s, this.serveFlush(s));
        else this.plugged.push(s);
      }
    }
  }

  /** Issues the plugged reads and writes, each run of adjacent ones of one direction as one call. */
  private unplug(): void {
    const list = this.plugged;
    let i = 0;
    while (i < list.length) {
      const first = list[i]!;
      const op = first.req.dataOp;
      let bytes = first.nsect * BLKIF_SECTOR_SIZE;
      let bufs = first.req.nrSegments;
      let end = first.req.sectorNumber + first.nsect;
      let j = i + 1;
      for (; j < list.length; j++) {
        const s = list[j]!;
        const b = s.nsect * BLKIF_SECTOR_SIZE;
        if (s.req.dataOp !== op || s.req.sectorNumber !== end || bytes + b > MERGE_MAX_BYTES || bufs + s.req.nrSegments > MERGE_MAX_IOV) break;
        bytes += b;
        bufs += s.req.nrSegments;
        end += s.nsect;
      }
      if (j === i + 1) this.startRw(first);
      else this.runMerged(list.slice(i, j));
      i = j;
    }
    list.length = 0;
  }

  /** Serves adjacent plugged requests of one direction with one backing call; each gets its status. */
  private runMerged(run: Slot[]): void {
    // Sized once for the worst case (no two segments meet): pushing a merged 1 MiB read's 256
    // buffers one by one regrew the array six times per call (runMerged was 6% of blkback on
    // 1 MiB reads in a perf profile).
    let n = 0;
    for (let r = 0; r < run.length; r++) n += run[r]!.req.nrSegments;
    const iov = this.gather(run, new Array<Buffer>(n));
    const offset = run[0]!.req.sectorNumber * BLKIF_SECTOR_SIZE;
    this.stats.merged += run.length - 1;
    (run[0]!.req.dataOp === BLKIF_OP_READ ? this.backing.read(offset, iov) : this.backing.write(offset, iov)).then(
      () => {
        for (const s of run) this.rwDone(s);
      },
      (e: unknown) => {
        const status = backingStatus(e);
        for (const s of run) this.complete(s, status);
      },
    );
  }

  /** Issues one plain read or write (not merged); its slot's callbacks complete it. */
  private startRw(s: Slot): void {
    const offset = s.req.sectorNumber * BLKIF_SECTOR_SIZE;
    const iov = this.iovec(s);
    const p = s.req.dataOp === BLKIF_OP_READ ? this.backing.read(offset, iov) : this.backing.write(offset, iov);
    p.then(s.rwDone, s.rwFailed);
  }

  private rwDone(s: Slot): void {
    if (s.req.dataOp === BLKIF_OP_READ && this.grantCopy) {
      // Grant copy: the data goes to the guest's pages before the response says it is there.
      // On this thread: from koffi's worker threads (`.async`) it made serve slower on real Xen
      // (BENCHMARKS.md, session 11).
      if (!this.copyGrants(s.copies!, s.bounce!, true)) {
        this.complete(s, BLKIF_RSP_ERROR);
        return;
      }
    }
    if (s.req.dataOp === BLKIF_OP_READ) this.stats.rdSect += s.nsect;
    else this.stats.wrSect += s.nsect;
    this.complete(s, BLKIF_RSP_OKAY);
  }

  private countOp(req: BlkifRequest): void {
    switch (req.operation) {
      case BLKIF_OP_READ: this.stats.rdReq++; break;
      case BLKIF_OP_WRITE: this.stats.wrReq++; break;
      case BLKIF_OP_FLUSH_DISKCACHE: this.stats.fReq++; break;
      case BLKIF_OP_DISCARD: this.stats.dsReq++; break;
      case BLKIF_OP_INDIRECT:
        if (req.dataOp === BLKIF_OP_READ) this.stats.rdReq++;
        else if (req.dataOp === BLKIF_OP_WRITE) this.stats.wrReq++;
        break;
      default: break;
    }
  }

  private maybeStartBarrier(): void {
    const s = this.barrier;
    if (s === undefined || this.barrierState !== WAITING || this.inFlightCount !== 1) return;
    this.barrierState = RUNNING;
    this.run(s, this.serveFlush(s));
  }

  private run(s: Slot, p: Promise<number>): void {
    p.then(
      (status) => this.complete(s, status),
      () => this.complete(s, BLKIF_RSP_ERROR),
    );
  }

  /**
   * Validates a READ/WRITE/WRITE_BARRIER/FLUSH_DISKCACHE/INDIRECT request against the disk and
   * maps its grants; BLKIF_RSP_OKAY when it may be served (grants held in `s`).
   */
  private prepareRw(s: Slot): number {
    const req = s.req;
    const op = req.dataOp;
    if (op !== BLKIF_OP_READ && this.vbd.readonly) return BLKIF_RSP_ERROR;
    if (req.operation === BLKIF_OP_INDIRECT) {
      const st = this.readIndirectSegments(s);
      if (st !== BLKIF_RSP_OKAY) return st;
    }
    const n = req.nrSegments;
    let nsect = 0;
    const align = this.vbd.sectorSize / BLKIF_SECTOR_SIZE - 1;
    // Linux dispatch_rw_block_io checks alignment per segment (start | segment length), so a
    // flush or barrier without data is never refused for its sector_number, which means nothing.
    if (n > 0 && (req.sectorNumber & align) !== 0) return BLKIF_RSP_ERROR;
    for (let i = 0; i < n; i++) {
      const len = req.segLast[i]! - req.segFirst[i]! + 1;
      if ((len & align) !== 0) return BLKIF_RSP_ERROR;
      nsect += len;
    }
    s.nsect = nsect;
    if (nsect > 0 && !(req.sectorNumber + nsect <= this.vbd.sectors)) return BLKIF_RSP_ERROR;
    if (n === 0) return BLKIF_RSP_OKAY;
    if (this.grantCopy) return this.copySegments(s) ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
    return this.mapSegments(s) ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
  }

  /** Maps the indirect pages, copies the descriptors they hold once, releases the pages. */
  private readIndirectSegments(s: Slot): number {
    const req = s.req;
    const pages = req.nrIndirectPages;
    const scratch = this.indirectScratch;
    if (this.cache !== undefined) {
      if (!this.copyIndirectPersistent(req, this.cache)) return BLKIF_RSP_ERROR;
    } else if (this.indirectCopies !== undefined) {
      // Grant copy: only the descriptors' bytes are copied, nothing is mapped.
      const b = this.indirectCopies;
      b.clear();
      let left = req.nrSegments * 8;
      for (let i = 0; i < pages; i++, left -= PAGE_SIZE) b.add(req.indirectGrefs[i]!, 0, Math.min(left, PAGE_SIZE), i * PAGE_SIZE);
      if (!this.copyGrants(b, scratch, false)) return BLKIF_RSP_ERROR;
    } else {
      let mapping: MappedGrants;
      try {
        const refs: number[] = [];
        for (let i = 0; i < pages; i++) refs.push(req.indirectGrefs[i]!);
        mapping = this.mapper.map(this.domid, refs, false);
      } catch {
        return BLKIF_RSP_ERROR;
      }
      try {
        scratch.set(mapping.buffer.subarray(0, req.nrSegments * 8));
      } finally {
        this.mapper.unmap(mapping);
      }
    }
    // The whole scratch is passed (no view per request): only nrSegments descriptors are read.
    const err = decodeIndirectSegments(scratch, req);
    return err === undefined ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
  }

  /**
   * Copies the indirect pages into the scratch through the persistent cache (a page not cached
   * yet is mapped and cached; one that cannot be cached is unmapped at once); false when one
   * cannot be mapped.
   */
  private copyIndirectPersistent(req: BlkifRequest, cache: PersistentGrantCache): boolean {
    const scratch = this.indirectScratch;
    const pages = req.nrIndirectPages;
    // Bytes of descriptors (8 each) the pages hold; the last page is used in part (Linux
    // blkfront's 32 segments are 256 bytes of it), and only that part is copied.
    let left = req.nrSegments * 8;
    let ok = true;
    for (let k = 0; k < pages; k++, left -= PAGE_SIZE) {
      const gref = req.indirectGrefs[k]!;
      const g = cache.acquire(gref);
      if (g !== undefined) {
        const b = g.run.mapping.buffer;
        scratch.set(b.subarray(g.offset, g.offset + Math.min(left, PAGE_SIZE)), k * PAGE_SIZE);
        cache.release(g);
        continue;
      }
      // Read-only would do for the descriptors, but the grant may be a data page of a read
      // next: mapped writable when the frontend allows, as Linux maps persistent grants.
      const m = this.mapRun([gref], false);
      if (m === undefined) {
        ok = false;
        break;
      }
      scratch.set(left >= PAGE_SIZE ? m.buffer : m.buffer.subarray(0, left), k * PAGE_SIZE);
      if (cache.insert([gref], m) === undefined) {
        try { this.mapper.unmap(m); } catch { /* gone with the peer */ }
      }
    }
    this.syncCacheCount();
    return ok;
  }

  /**
   * Grant copy: lays the request's segments out back to back in the slot's buffer and, for a
   * write, copies them in from the guest now; false when a segment cannot be copied.
   */
  private copySegments(s: Slot): boolean {
    const req = s.req;
    const n = req.nrSegments;
    const bytes = s.nsect * BLKIF_SECTOR_SIZE;
    let buf: Buffer;
    try {
      buf = this.bounceFor(s, bytes);
    } catch {
      // No memory for the buffer (mmap refused): this request fails, the ring goes on.
      return false;
    }
    const b = s.copies ??= new GrantCopyBatch(Math.max(this.maxIndirect, 11));
    b.clear();
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const off = req.segFirst[i]! * BLKIF_SECTOR_SIZE;
      const len = (req.segLast[i]! - req.segFirst[i]! + 1) * BLKIF_SECTOR_SIZE;
      b.add(req.segGref[i]!, off, len, pos);
      s.segBuf[i] = buf;
      s.segOff[i] = pos;
      s.segLen[i] = len;
      pos += len;
    }
    // A read's copies run after the read (rwDone); a write's run now.
    return req.dataOp === BLKIF_OP_READ || this.copyGrants(b, buf, false);
  }

  /** One grant copy call; false when the hypervisor refused a piece (the request fails). */
  private copyGrants(b: GrantCopyBatch, local: Uint8Array, toForeign: boolean): boolean {
    try {
      this.mapper.copy(this.domid, b, local, toForeign);
      return true;
    } catch {
      return false;
    }
  }

  /** The slot's buffer, at least `bytes` long (grown by a fresh page-aligned mapping: O_DIRECT needs aligned memory). */
  private bounceFor(s: Slot, bytes: number): Buffer {
    if (s.bounce !== undefined && s.bounce.length >= bytes) return s.bounce;
    this.freeBounce(s);
    let size = COPY_BUFFER_MIN;
    while (size < bytes) size *= 2;
    const m = Mapping.anonymous(size, 'grant copy buffer');
    s.bounceMap = m;
    s.bounce = m.view();
    this.bounceBytes += size;
    return s.bounce;
  }

  private freeBounce(s: Slot): void {
    const m = s.bounceMap;
    if (m === undefined) return;
    this.bounceBytes -= m.length;
    s.bounceMap = undefined;
    s.bounce = undefined;
    // Views of it handed to the backend are detached: the slot's next request gets a new one.
    for (let i = 0; i < s.segBuf.length; i++) s.segBuf[i] = undefined;
    s.iov.length = 0;
    m.unmap();
  }

  /** Maps the request's segment grants into `s`; false (nothing left mapped) when one cannot be. */
  private mapSegments(s: Slot): boolean {
    const req = s.req;
    const n = req.nrSegments;
    const writable = req.dataOp === BLKIF_OP_READ;
    if (this.cache === undefined) {
      const refs: number[] = new Array<number>(n);
      for (let i = 0; i < n; i++) refs[i] = req.segGref[i]!;
      let m: MappedGrants;
      try {
        m = this.mapper.map(this.domid, refs, writable);
      } catch {
        return false;
      }
      s.batch = m;
      for (let i = 0; i < n; i++) {
        s.segBuf[i] = m.buffer;
        s.segOff[i] = i * PAGE_SIZE + req.segFirst[i]! * BLKIF_SECTOR_SIZE;
        s.segLen[i] = (req.segLast[i]! - req.segFirst[i]! + 1) * BLKIF_SECTOR_SIZE;
      }
      return true;
    }
    const cache = this.cache;
    let misses = 0;
    for (let i = 0; i < n; i++) {
      const gref = req.segGref[i]!;
      let g = cache.acquire(gref);
      if (g !== undefined && writable && !g.run.mapping.writable) {
        // Cached read-only (the frontend granted it so for a write); a read needs it writable.
        cache.release(g);
        cache.forget(gref);
        g = undefined;
      }
      s.pgrants[i] = g;
      s.segLen[i] = (req.segLast[i]! - req.segFirst[i]! + 1) * BLKIF_SECTOR_SIZE;
      if (g === undefined) {
        misses++;
        continue;
      }
      s.segBuf[i] = g.run.mapping.buffer;
      s.segOff[i] = g.offset + req.segFirst[i]! * BLKIF_SECTOR_SIZE;
    }
    // A count rather than pgrants.length = n: setting an array's length is a call into V8's runtime.
    s.npg = n;
    if (misses > 0 && !this.mapMisses(s, cache, writable)) {
      this.releaseGrants(s);
      this.syncCacheCount();
      return false;
    }
    this.syncCacheCount();
    return true;
  }

  /**
   * Maps the segments of `s` that the cache did not hold as one run (each distinct grant once,
   * in the request's order, so that a frontend reusing its buffers finds them back to back) and
   * caches it; a run the cache cannot take serves this request only. False when it cannot be mapped.
   */
  private mapMisses(s: Slot, cache: PersistentGrantCache, writable: boolean): boolean {
    const req = s.req;
    const n = req.nrSegments;
    const refs: number[] = [];
    const pageOf = new Map<number, number>();
    for (let i = 0; i < n; i++) {
      if (s.pgrants[i] !== undefined) continue;
      const gref = req.segGref[i]!;
      if (!pageOf.has(gref)) {
        pageOf.set(gref, refs.length);
        refs.push(gref);
      }
    }
    const m = this.mapRun(refs, writable);
    if (m === undefined) return false;
    const grants = cache.insert(refs, m);
    if (grants === undefined) s.oneOff.push(m);
    for (let i = 0; i < n; i++) {
      if (s.pgrants[i] !== undefined) continue;
      const page = pageOf.get(req.segGref[i]!)!;
      const g = grants?.[page];
      if (g !== undefined) {
        cache.use(g);
        s.pgrants[i] = g;
      }
      s.segBuf[i] = m.buffer;
      s.segOff[i] = page * PAGE_SIZE + req.segFirst[i]! * BLKIF_SECTOR_SIZE;
    }
    return true;
  }

  /**
   * Maps grants for the persistent cache in one call: writable if the frontend allows, else
   * read-only when that suffices. A map refused for want of mappings (ENOMEM: on Linux each
   * run is a gntdev mapping of its own, one VMA, and a process may have vm.max_map_count of
   * them, 65530 by default) gives back idle runs one at a time until it succeeds, so a backend
   * serving many rings keeps fewer grants per ring instead of failing I/O. Any other refusal
   * is the frontend's grant, and evicts nothing.
   */
  private mapRun(refs: readonly number[], needWrite: boolean): MappedGrants | undefined {
    for (;;) {
      try {
        return this.mapWritableFirst(refs, needWrite);
      } catch (e) {
        if (!isGnttabError(e, 'ENOMEM') || this.cache === undefined || !this.cache.evictIdle()) return undefined;
      }
    }
  }

  /** Grants mapped writable, or read-only when that suffices and writable was refused for a grant's sake; throws the refusal. */
  private mapWritableFirst(refs: readonly number[], needWrite: boolean): MappedGrants {
    try {
      return this.mapper.map(this.domid, refs, true);
    } catch (e) {
      if (needWrite || isGnttabError(e, 'ENOMEM')) throw e;
    }
    return this.mapper.map(this.domid, refs, false);
  }

  /** Unmaps or releases every grant `s` holds (before its response is published). */
  private releaseGrants(s: Slot): void {
    if (s.batch !== undefined) {
      const m = s.batch;
      s.batch = undefined;
      try { this.mapper.unmap(m); } catch { /* gone with the peer */ }
    }
    if (this.cache !== undefined) {
      const pg = s.pgrants;
      for (let i = 0; i < s.npg; i++) {
        const g = pg[i];
        if (g !== undefined) this.cache.release(g);
        pg[i] = undefined;
      }
      s.npg = 0;
    }
    while (s.oneOff.length > 0) {
      const m = s.oneOff.pop()!;
      try { this.mapper.unmap(m); } catch { /* gone with the peer */ }
    }
    // segBuf and iov keep their entries until the slot's next request overwrites them: emptying
    // them here would set their lengths, a call into V8's runtime per request.
  }

  /** The I/O vector of one request's segments (see gather), in the slot's reused array. */
  private iovec(s: Slot): Buffer[] {
    this.single[0] = s;
    return this.gather(this.single, s.iov);
  }

  /**
   * The I/O vector of the segments of `slots` in order (one request, or adjacent requests merged
   * into one backing call) into `out`: pieces that meet in one mapping are joined, so a run of
   * persistent grants met in order is one buffer however many requests carry it (the whole of a
   * merged 1 MiB read from our blkfront), which the backing can take in one piece (io_uring's
   * registered memory takes only single buffers). Counts the entries in `stats.ioVectors`.
   */
  private gather(slots: readonly Slot[], out: Buffer[]): Buffer[] {
    let k = 0;
    let buf: Buffer | undefined;
    let start = 0;
    let end = 0;
    for (let r = 0; r < slots.length; r++) {
      const s = slots[r]!;
      const n = s.req.nrSegments;
      for (let i = 0; i < n; i++) {
        const b = s.segBuf[i]!;
        const o = s.segOff[i]!;
        if (b === buf && o === end) {
          end += s.segLen[i]!;
          continue;
        }
        if (buf !== undefined) out[k++] = start === 0 && end === buf.length ? buf : buf.subarray(start, end);
        buf = b;
        start = o;
        end = o + s.segLen[i]!;
      }
    }
    if (buf !== undefined) out[k++] = start === 0 && end === buf.length ? buf : buf.subarray(start, end);
    this.stats.ioVectors += k;
    // Requests of a workload mostly have one shape: the length changes (a runtime call) rarely.
    if (out.length !== k) out.length = k;
    return out;
  }

  /** Serves a FLUSH_DISKCACHE or WRITE_BARRIER: flush, then its data if any, then flush again. */
  private async serveFlush(s: Slot): Promise<number> {
    const req = s.req;
    try {
      if (this.vbd.flush) await this.backing.flush();
      if (req.nrSegments > 0) {
        await this.backing.write(req.sectorNumber * BLKIF_SECTOR_SIZE, this.iovec(s));
        this.stats.wrSect += s.nsect;
        if (this.vbd.flush) await this.backing.flush();
      }
      return BLKIF_RSP_OKAY;
    } catch (e) {
      return backingStatus(e);
    }
  }

  private async serveDiscard(s: Slot): Promise<number> {
    const req = s.req;
    const vbd = this.vbd;
    if (!vbd.discard) return BLKIF_RSP_EOPNOTSUPP;
    if (vbd.readonly) return BLKIF_RSP_ERROR;
    const start = req.sectorNumber;
    const count = req.nrSectors;
    if (!(start + count <= vbd.sectors)) return BLKIF_RSP_ERROR;
    const align = vbd.sectorSize / BLKIF_SECTOR_SIZE - 1;
    if ((start & align) !== 0 || (count & align) !== 0) return BLKIF_RSP_ERROR;
    if (count === 0) return BLKIF_RSP_OKAY;
    // Linux: secure only when both the disk supports it and the frontend asked.
    const secure = vbd.discardSecure && (req.discardFlag & BLKIF_DISCARD_SECURE) !== 0;
    try {
      await this.backing.discard(start * BLKIF_SECTOR_SIZE, count * BLKIF_SECTOR_SIZE, { secure });
      return BLKIF_RSP_OKAY;
    } catch (e) {
      return backingStatus(e);
    }
  }

  /** Releases `s`'s grants, publishes its response (make_response) and frees the slot. */
  private complete(s: Slot, status: number): void {
    this.releaseGrants(s);
    const req = s.req;
    if (status !== BLKIF_RSP_OKAY) this.stats.errors++;
    if (s.start >= 0) this.stats.recordLatency(turnNow() - s.start);
    if (!this.closed) {
      const rsp = this.rsp;
      rsp.idLo = req.idLo;
      rsp.idHi = req.idHi;
      rsp.operation = req.dataOp & 0xff;
      rsp.status = status;
      encodeResponse(this.abi, this.ring.buffer, nextResponseOffset(this.back), rsp);
      publishResponses(this.back);
      if (!this.notifyPending) {
        this.notifyPending = true;
        void SETTLED.then(this.checkNotify);
      }
    }
    if (this.bounceBytes > COPY_BUFFER_KEEP) this.freeBounce(s);
    this.inFlightCount--;
    this.stats.inFlight--;
    this.free.push(s);
    if (this.barrier === s) {
      this.barrier = undefined;
      this.barrierState = NOT_RUNNING;
      if (!this.draining) queueMicrotask(() => this.kick());
    } else if (this.barrier !== undefined) {
      this.maybeStartBarrier();
    } else if (this.waitingForSlot) {
      this.waitingForSlot = false;
      if (!this.draining) queueMicrotask(() => this.kick());
    }
    if (this.draining && this.inFlightCount === 0) {
      const w = this.drainWaiters;
      this.drainWaiters = [];
      for (const f of w) f();
    }
  }

  /** Notifies the frontend if it asked for an event on a response published since the last check. */
  private notifyIfDue(): void {
    if (this.closed) return;
    const due = responsesNotifyDue(this.back, this.rspChecked);
    this.rspChecked = this.back.rspProdPvt;
    if (due) this.notify();
  }

  private notify(): void {
    this.stats.notifies++;
    try {
      this.channel.notify();
    } catch {
      // The frontend's port is gone (it died or is closing): nobody to wake.
    }
  }

  private syncCacheCount(): void {
    const now = this.cache?.size ?? 0;
    this.stats.persistentGrants += now - this.cacheCounted;
    this.cacheCounted = now;
    const evicted = this.cache?.evictions ?? 0;
    this.stats.pgrantEvictions += evicted - this.evictionsCounted;
    this.evictionsCounted = evicted;
  }
}
