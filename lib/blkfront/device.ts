// A virtual disk as a program sees it through blkfront: the Block API (in the spirit of
// Mirage_block: getInfo / read / write / flush / discard / disconnect) over the rings, and the
// XenbusState lifecycle that keeps it connected.
//
// Lifecycle (Linux xen-blkfront blkback_changed, talk_to_blkback, blkfront_connect,
// blkfront_closing, blkif_recover; xenbus_reset_frontend for a backend still connected to a
// previous frontend; xen-blkback frontend_changed for what the backend expects of us):
//   backend InitWait   -> read its ring features, grant rings, publish, Initialised
//   backend Connected  -> read sectors/info/sector-size/features, Connected (again while
//                         connected: capacity change)
//   backend Closing    -> Closed (hot-unplug when the toolstack set online=0: the device is gone)
//   backend Closed     -> Initialising, asking a backend that stays online to reconnect
//   backend Connected to rings we never published -> Closing, Closed, Initialising (reset)
// While the backend is away, unanswered requests wait and are sent again once it is back.
import { EventEmitter } from 'node:events';
import { availableParallelism } from 'node:os';
import type { Host } from '../host/host.ts';
import type { Xenstore, XenstoreWatch } from '../../xenstore/xenstore.ts';
import { XenbusState, xenbusStateName } from '../../protocol/xenbus-state.ts';
import {
  BLKIF_DISCARD_SECURE, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER, BLKIF_SECTOR_SIZE,
} from '../../protocol/blkif.ts';
import type { BlkifAbi } from '../../protocol/blkif.ts';
import { BlkfrontError } from './errors.ts';
import {
  MAX_RING_PAGE_ORDER, diskFlags, negotiateIo, negotiateRings, parseUnsigned, readBackendDisk, readBackendIoFeatures,
  readBackendRingFeatures, sectorsFromKey,
} from './features.ts';
import type { BackendDisk, FrontendLimits, IoNegotiated, KeyReader, RingGeometry } from './features.ts';
import { GrantReaper } from './grant-pool.ts';
import { IoBuffers } from './io-buffers.ts';
import { locateVbd, protocolName, publishRings, readState, writeState } from './handshake.ts';
import type { VbdLocation } from './handshake.ts';
import { Dispatcher } from './dispatcher.ts';
import type { DispatchStats } from './dispatcher.ts';
import { BlkfrontQueue } from './queue.ts';
import { ScatterList, maxSegmentsPerRequest } from './requests.ts';

/** How this frontend connects; every field has Linux blkfront's meaning and a default. */
export interface BlkfrontOptions {
  /** Ring ABI (`protocol`): native x86_64 by default; `x86_32` to talk the 32-bit layout. */
  readonly abi?: BlkifAbi;
  /** Largest ring-page-order accepted (0..4, default 4); the backend's max-ring-page-order also bounds it. */
  readonly maxRingPageOrder?: number;
  /** Most queues (rings) used (default min(4, CPUs), as Linux max_queues); the backend's multi-queue-max-queues also bounds it. */
  readonly maxQueues?: number;
  /** Most segments per indirect request (default 32, Linux max_indirect_segments); 0 uses direct requests only. */
  readonly maxIndirectSegments?: number;
  /** Offer persistent grants (default true, Linux feature_persistent). */
  readonly persistent?: boolean;
  /** Upper bound of persistently granted data pages per queue (default 1024 = 4 MiB). */
  readonly maxPersistentPages?: number;
  /** How long attach() waits for the device directory to appear, e.g. a disk being hotplugged (default 0: it must exist). */
  readonly deviceTimeoutMs?: number;
  /** How long attach() waits for the backend to connect (default 30 s). */
  readonly connectTimeoutMs?: number;
  /** How long disconnect() waits for the backend at each step (default 5 s). */
  readonly closeTimeoutMs?: number;
  /** Abandons attach(). */
  readonly signal?: AbortSignal;
}

/** What the backend and the negotiation gave this connection. */
export interface BlockFeatures {
  /** What flush() sends: `flush-cache` (FLUSH_DISKCACHE), `barrier` (WRITE_BARRIER) or `none` (write-through). */
  readonly flush: 'flush-cache' | 'barrier' | 'none';
  readonly discard: boolean;
  readonly secureDiscard: boolean;
  /** Bytes (blkif.h discard-granularity / discard-alignment). */
  readonly discardGranularity: number;
  readonly discardAlignment: number;
  readonly persistentGrants: boolean;
  /** Segments per indirect request, 0 when only direct requests (11 segments) are used. */
  readonly indirectSegments: number;
  readonly ringPageOrder: number;
  readonly queues: number;
  /** `x86_64-abi` or `x86_32-abi`. */
  readonly protocol: string;
  readonly cdrom: boolean;
  readonly removable: boolean;
}

/** A disk's geometry and features (Mirage_block.info plus what blkif.h adds). */
export interface BlockInfo {
  /** Size in units of `sectorSize`. */
  readonly sectors: number;
  /** Logical sector size in bytes: the unit of `read`/`write`/`discard` sector numbers. */
  readonly sectorSize: number;
  readonly physicalSectorSize: number;
  readonly readWrite: boolean;
  readonly features: BlockFeatures;
}

/** One XenbusState change seen or made, for diagnostics and the demo. */
export interface StateTransition {
  readonly side: 'frontend' | 'backend';
  readonly state: number;
  readonly name: string;
  /** Milliseconds since attach started. */
  readonly atMs: number;
}

/** Per-operation options. */
export interface IoOptions {
  readonly signal?: AbortSignal;
}

type Phase = 'connecting' | 'connected' | 'recovering' | 'gone' | 'disabled' | 'closing' | 'closed';

interface StateWaiter {
  readonly pred: (s: XenbusState) => boolean;
  readonly resolve: (s: XenbusState) => void;
  readonly reject: (e: Error) => void;
  cleanup: () => void;
}

function defaultLimits(o: BlkfrontOptions): FrontendLimits {
  const order = o.maxRingPageOrder ?? MAX_RING_PAGE_ORDER;
  if (!Number.isInteger(order) || order < 0 || order > MAX_RING_PAGE_ORDER) {
    throw new BlkfrontError('EINVAL', `maxRingPageOrder ${order} is not 0..${MAX_RING_PAGE_ORDER}`, 'maxRingPageOrder', order);
  }
  const queues = o.maxQueues ?? Math.min(4, availableParallelism());
  if (!Number.isInteger(queues) || queues < 1 || queues > 64) throw new BlkfrontError('EINVAL', `maxQueues ${queues} is not 1..64`, 'maxQueues', queues);
  const indirect = o.maxIndirectSegments ?? 32;
  if (!Number.isInteger(indirect) || indirect < 0) throw new BlkfrontError('EINVAL', `maxIndirectSegments ${indirect} is not a count`, 'maxIndirectSegments', indirect);
  return { maxRingPageOrder: order, maxQueues: queues, maxIndirectSegments: indirect, persistent: o.persistent ?? true, abi: o.abi ?? 'x86_64' };
}

/**
 * A connected virtual block device. Events: `state` (StateTransition), `resize`
 * ({previous, sectors}), `reconnecting` (the backend went away; I/O waits), `reconnected`,
 * `unplugged` (BlkfrontError ENODEV), `disabled` (BlkfrontError: the backend broke the
 * protocol), `warning` (BlkfrontError: ignored garbage), `closed`.
 */
export class Blkfront extends EventEmitter {
  readonly location: VbdLocation;
  /** Every state change seen (backend) or made (frontend), in order. */
  readonly transitions: StateTransition[] = [];
  private readonly xs: Xenstore;
  private readonly limits: FrontendLimits;
  private readonly reaper: GrantReaper;
  private readonly ioBuffers: IoBuffers;
  private readonly dispatcher: Dispatcher;
  private readonly read_: KeyReader;
  private readonly started = Date.now();
  private readonly connectTimeoutMs: number;
  private readonly closeTimeoutMs: number;
  private readonly maxPersistentPages: number;
  private phase: Phase = 'connecting';
  private frontState: XenbusState = XenbusState.Unknown;
  private backendState: XenbusState = XenbusState.Unknown;
  private waiters = new Set<StateWaiter>();
  private watch: XenstoreWatch | null = null;
  private watchDone: Promise<void> = Promise.resolve();
  private flowAbort = new AbortController();
  private flow: Promise<void> | null = null;
  /** Rings granted and published but not yet handed to the dispatcher (between InitWait and Connected). */
  private talked: BlkfrontQueue[] = [];
  private geometry: RingGeometry | null = null;
  private disk: BackendDisk | null = null;
  private io: IoNegotiated | null = null;
  private capacityChain: Promise<void> = Promise.resolve();
  private closedPromise: Promise<void> | null = null;
  private reconnects = 0;
  /** What an abandoned handshake reports: ENODEV when we disconnect, ABORT_ERR when the caller aborted attach(). */
  private abortCode: 'ENODEV' | 'ABORT_ERR' = 'ENODEV';

  private constructor(private readonly host: Host, location: VbdLocation, opts: BlkfrontOptions) {
    super();
    this.location = location;
    this.xs = host.xenstore;
    this.limits = defaultLimits(opts);
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 30_000;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? 5_000;
    this.maxPersistentPages = opts.maxPersistentPages ?? 1024;
    this.reaper = new GrantReaper(host.sharer);
    this.ioBuffers = new IoBuffers(host.sharer, this.reaper);
    this.read_ = (key) => this.xs.tryRead(key);
    this.dispatcher = new Dispatcher(
      (e) => this.onProtocolError(e),
      (feature) => this.onFeatureLost(feature),
    );
  }

  /**
   * `Blkfront.attach(host, vdev, opts)` connects to the virtual disk `vdev` (`xvdb`, `51728`,
   * `d1p0`) of this host's domain and resolves once the backend is Connected.
   */
  static async attach(host: Host, vdev: string | number, opts: BlkfrontOptions = {}): Promise<Blkfront> {
    const location = await locateVbd(host.xenstore, host.domid, vdev, opts.deviceTimeoutMs ?? 0);
    const f = new Blkfront(host, location, opts);
    try {
      await f.start(opts.signal);
    } catch (e) {
      await f.disconnect().catch(() => {});
      throw e;
    }
    return f;
  }

  // ------------------------------------------------------------------------------------------
  // Block API

  /** `getInfo()` is the disk's size, sector sizes, writability and negotiated features. */
  async getInfo(): Promise<BlockInfo> {
    const disk = this.disk;
    const io = this.io;
    const geo = this.geometry;
    if (disk === null || io === null || geo === null) throw this.goneError();
    const flags = diskFlags(disk.info);
    const flushOp = this.dispatcher.flushOp;
    return {
      sectors: disk.sectors,
      sectorSize: disk.sectorSize,
      physicalSectorSize: disk.physicalSectorSize,
      readWrite: !flags.readOnly,
      features: {
        flush: flushOp === BLKIF_OP_FLUSH_DISKCACHE ? 'flush-cache' : flushOp === BLKIF_OP_WRITE_BARRIER ? 'barrier' : 'none',
        discard: io.discard,
        secureDiscard: io.discardSecure,
        discardGranularity: io.discardGranularity,
        discardAlignment: io.discardAlignment,
        persistentGrants: io.persistent,
        indirectSegments: io.maxIndirectSegments,
        ringPageOrder: geo.ringPageOrder,
        queues: geo.queues,
        protocol: protocolName(this.limits.abi),
        cdrom: flags.cdrom,
        removable: flags.removable,
      },
    };
  }

  /** `read(sector, buffers)` fills `buffers` (total length a multiple of the sector size) from `sector` on. */
  read(sector: number, buffers: Uint8Array | readonly Uint8Array[], opts: IoOptions = {}): Promise<void> {
    return this.rw('read', sector, buffers, opts);
  }

  /** `write(sector, buffers)` writes `buffers` (total length a multiple of the sector size) from `sector` on. */
  write(sector: number, buffers: Uint8Array | readonly Uint8Array[], opts: IoOptions = {}): Promise<void> {
    return this.rw('write', sector, buffers, opts);
  }

  /**
   * `allocBuffer(bytes)` is a zeroed, page-aligned buffer of whole pages granted to the backend
   * for as long as it is allocated: reads and writes whose data sits in it at the page offset
   * of its disk offset (page-aligned I/O into page-aligned parts of it) skip blkfront's copy.
   * The backend can read and write it until `freeBuffer` (see io-buffers.ts); `disconnect()`
   * frees every such buffer.
   */
  allocBuffer(bytes: number): Buffer {
    if (this.phase === 'closing' || this.phase === 'closed') throw this.goneError();
    return this.ioBuffers.alloc(this.location.backendDomid, bytes);
  }

  /** `freeBuffer(buf)` revokes an `allocBuffer` buffer (any view of it) and detaches it; EBUSY while a request uses it. */
  freeBuffer(buf: Uint8Array): void {
    this.ioBuffers.free(buf);
  }

  private rw(kind: 'read' | 'write', sector: number, buffers: Uint8Array | readonly Uint8Array[], opts: IoOptions): Promise<void> {
    const disk = this.disk;
    if (disk === null) return Promise.reject(this.goneError());
    const list = buffers instanceof Uint8Array ? [buffers] : buffers;
    const data = new ScatterList(list, this.ioBuffers);
    if (data.length % disk.sectorSize !== 0) {
      return Promise.reject(new BlkfrontError('EINVAL', `${kind} of ${data.length} bytes: not a multiple of the sector size ${disk.sectorSize}`, 'buffers', data.length));
    }
    const count = data.length / disk.sectorSize;
    const bad = this.checkRange(kind, sector, count, disk);
    if (bad !== null) return Promise.reject(bad);
    if (kind === 'write' && diskFlags(disk.info).readOnly) {
      return Promise.reject(new BlkfrontError('EROFS', `write to read-only disk ${this.location.name}`, 'info', disk.info));
    }
    if (count === 0) return Promise.resolve();
    const per = disk.sectorSize / BLKIF_SECTOR_SIZE;
    return this.dispatcher.submit(kind, sector * per, count * per, data, 0, opts.signal);
  }

  private checkRange(what: string, sector: number, count: number, disk: BackendDisk): BlkfrontError | null {
    if (!Number.isSafeInteger(sector) || sector < 0) return new BlkfrontError('EINVAL', `${what}: sector ${sector} is not a non-negative integer`, 'sector', sector);
    if (!Number.isSafeInteger(count) || count < 0) return new BlkfrontError('EINVAL', `${what}: count ${count} is not a non-negative integer`, 'count', count);
    if (sector + count > disk.sectors) {
      return new BlkfrontError('EINVAL', `${what} of sectors ${sector}..${sector + count} is beyond the end of the disk (${disk.sectors} sectors)`, 'sector', sector);
    }
    return null;
  }

  /**
   * `flush()` resolves once every write submitted before it is answered and, when the backend
   * offers feature-flush-cache (else feature-barrier), on stable storage.
   */
  flush(opts: IoOptions = {}): Promise<void> {
    if (this.disk === null) return Promise.reject(this.goneError());
    return this.dispatcher.submit('flush', 0, 0, null, 0, opts.signal);
  }

  /**
   * `discard(sector, count, {secure})` tells the backend the sectors' contents are no longer
   * needed (BLKIF_OP_DISCARD; `secure` sets BLKIF_DISCARD_SECURE and needs discard-secure).
   */
  discard(sector: number, count: number, opts: IoOptions & { readonly secure?: boolean } = {}): Promise<void> {
    const disk = this.disk;
    const io = this.io;
    if (disk === null || io === null) return Promise.reject(this.goneError());
    const bad = this.checkRange('discard', sector, count, disk);
    if (bad !== null) return Promise.reject(bad);
    if (diskFlags(disk.info).readOnly) return Promise.reject(new BlkfrontError('EROFS', `discard on read-only disk ${this.location.name}`, 'info', disk.info));
    if (!io.discard) return Promise.reject(new BlkfrontError('EOPNOTSUPP', `${this.location.backendPath} does not offer feature-discard`, `${this.location.backendPath}/feature-discard`));
    if (opts.secure === true && !io.discardSecure) {
      return Promise.reject(new BlkfrontError('EOPNOTSUPP', `${this.location.backendPath} does not offer discard-secure`, `${this.location.backendPath}/discard-secure`));
    }
    if (count === 0) return Promise.resolve();
    const per = disk.sectorSize / BLKIF_SECTOR_SIZE;
    return this.dispatcher.submit('discard', sector * per, count * per, null, opts.secure === true ? BLKIF_DISCARD_SECURE : 0, opts.signal);
  }

  /** `stats()` is the data path's counters and what is outstanding now. */
  stats(): DispatchStats & { inFlight: number; queued: number; reconnects: number; pendingRevocations: number } {
    return { ...this.dispatcher.stats, inFlight: this.dispatcher.inFlight, queued: this.dispatcher.queued, reconnects: this.reconnects, pendingRevocations: this.reaper.size };
  }

  /** `connected` is whether requests flow now (false while reconnecting, after unplug or disconnect). */
  get connected(): boolean {
    return this.phase === 'connected';
  }

  /**
   * `disconnect()` lets requests already on the rings finish (for up to closeTimeoutMs), fails
   * the rest with ENODEV, walks Closing -> Closed with the backend, and releases every grant,
   * channel and watch. It never throws (as Mirage_block.disconnect); grants the backend still
   * maps after the timeout are counted in `stats().pendingRevocations`.
   */
  disconnect(): Promise<void> {
    if (this.closedPromise === null) this.closedPromise = this.close();
    return this.closedPromise;
  }

  // ------------------------------------------------------------------------------------------
  // Lifecycle

  private async start(signal: AbortSignal | undefined): Promise<void> {
    const onAbort = (): void => {
      this.abortCode = 'ABORT_ERR';
      this.flowAbort.abort(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      this.frontState = await readState(this.xs, this.location.frontendPath);
      this.record('frontend', this.frontState);
      this.backendState = await readState(this.xs, this.location.backendPath);
      this.record('backend', this.backendState);
      this.watch = this.xs.watch(`${this.location.backendPath}/state`);
      this.watchDone = this.watchLoop(this.watch);
      this.flow = this.driveToConnected(this.flowAbort.signal, this.connectTimeoutMs);
      await this.flow;
      this.flow = null;
      this.becameConnected();
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  private record(side: 'frontend' | 'backend', state: number): void {
    const t: StateTransition = { side, state, name: xenbusStateName(state), atMs: Date.now() - this.started };
    this.transitions.push(t);
    this.emit('state', t);
  }

  private async watchLoop(watch: XenstoreWatch): Promise<void> {
    let why = 'the watch ended';
    try {
      for await (const _ev of watch) {
        void _ev;
        const s = await readState(this.xs, this.location.backendPath);
        try {
          this.reaper.retry();
        } catch {
          // A sharer that cannot revoke now will be asked again at disconnect.
        }
        this.observeBackend(s);
      }
    } catch (e) {
      why = (e as Error).message;
    }
    // Without XenStore the backend's moves can no longer be followed: the device is gone.
    if (this.phase !== 'closing' && this.phase !== 'closed') {
      const e = new BlkfrontError('ENODEV', `lost the XenStore watch on ${this.location.backendPath}/state: ${why}`);
      this.flowAbort.abort(e);
      this.fatal(e);
    }
  }

  private observeBackend(s: XenbusState): void {
    if (s !== this.backendState) {
      this.backendState = s;
      this.record('backend', s);
    }
    for (const w of [...this.waiters]) {
      if (w.pred(s)) {
        w.cleanup();
        w.resolve(s);
      }
    }
    if (this.phase !== 'connected') return;
    if (s === XenbusState.Connected) {
      // Connected again while connected: the backend signals a capacity change (blkfront_connect).
      this.checkCapacity();
    } else {
      this.startRecovery();
    }
  }

  private waitBackend(pred: (s: XenbusState) => boolean, signal: AbortSignal, timeoutMs: number | undefined, what: string): Promise<XenbusState> {
    if (pred(this.backendState)) return Promise.resolve(this.backendState);
    return new Promise<XenbusState>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => {
        w.cleanup();
        reject(new BlkfrontError(this.abortCode, `stopped waiting for ${what}: ${String(signal.reason ?? 'aborted')}`, `${this.location.backendPath}/state`, this.backendState));
      };
      const w: StateWaiter = {
        pred, resolve, reject,
        cleanup: () => {
          this.waiters.delete(w);
          if (timer !== undefined) clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
        },
      };
      if (signal.aborted) {
        onAbort();
        return;
      }
      signal.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          w.cleanup();
          reject(new BlkfrontError('ETIMEDOUT', `timed out waiting for ${what}: backend ${this.location.backendPath} is ${xenbusStateName(this.backendState)}, frontend is ${xenbusStateName(this.frontState)}`, `${this.location.backendPath}/state`, this.backendState));
        }, Math.max(0, timeoutMs));
      }
      this.waiters.add(w);
    });
  }

  private async setFrontState(s: XenbusState): Promise<void> {
    await writeState(this.xs, this.location.frontendPath, s);
    if (s !== this.frontState) {
      this.frontState = s;
      this.record('frontend', s);
    }
  }

  /** Throws ENODEV when the toolstack is removing the device (online=0, or our directory gone). */
  private async checkUnplugged(): Promise<void> {
    const online = await this.xs.tryRead(`${this.location.backendPath}/online`);
    const present = await this.xs.tryRead(`${this.location.frontendPath}/backend`);
    if (online?.trim() === '0' || present === undefined) {
      throw new BlkfrontError('ENODEV', `${this.location.name} was unplugged (${present === undefined ? 'frontend directory removed' : 'backend online=0'})`, `${this.location.backendPath}/online`, online);
    }
  }

  /**
   * Drives the handshake until the backend is Connected to rings we published, whatever state
   * either end starts in; `timeoutMs` bounds the whole walk (undefined: wait until aborted).
   */
  private async driveToConnected(signal: AbortSignal, timeoutMs: number | undefined): Promise<void> {
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    const left = (): number | undefined => (deadline === undefined ? undefined : deadline - Date.now());
    for (;;) {
      if (signal.aborted) throw new BlkfrontError(this.abortCode, `connection to ${this.location.name} abandoned: ${String(signal.reason ?? 'aborted')}`);
      const s = this.backendState;
      switch (s) {
        case XenbusState.InitWait: {
          await this.talk();
          const next = await this.waitBackend((x) => x !== XenbusState.InitWait, signal, left(), 'the backend to connect after Initialised');
          if (next === XenbusState.Connected) {
            await this.connect();
            return;
          }
          continue;
        }
        case XenbusState.Connected:
          if (this.talked.length > 0 && this.frontState === XenbusState.Initialised) {
            await this.connect();
            return;
          }
          // Connected to rings we did not publish (a frontend before us): ask it to let go
          // first, as Linux xenbus_reset_frontend does for a kexec'd guest.
          await this.setFrontState(XenbusState.Closing);
          await this.waitBackend((x) => x !== XenbusState.Connected, signal, left(), 'the backend to leave Connected after our Closing');
          continue;
        case XenbusState.Closing:
          // blkfront_closing: answer Closing with Closed, whether this is a hot-unplug or not.
          this.discardTalked();
          await this.setFrontState(XenbusState.Closed);
          await this.checkUnplugged();
          await this.waitBackend((x) => x !== XenbusState.Closing, signal, left(), 'the backend to leave Closing');
          continue;
        case XenbusState.Closed:
          this.discardTalked();
          if (this.frontState !== XenbusState.Closed && this.frontState !== XenbusState.Initialising) {
            await this.setFrontState(XenbusState.Closed);
          }
          await this.checkUnplugged();
          // A backend that stays online answers a frontend Initialising with InitWait
          // (xen-blkback frontend_changed: "prepare for reconnect").
          if (this.frontState !== XenbusState.Initialising) await this.setFrontState(XenbusState.Initialising);
          await this.waitBackend((x) => x !== XenbusState.Closed, signal, left(), 'the backend to reopen after Closed');
          continue;
        default:
          // Unknown (no backend yet, or its directory was removed), Initialising, or a state
          // blkfront ignores (Initialised, Reconfiguring, Reconfigured): wait for InitWait.
          if (s === XenbusState.Unknown) await this.checkUnplugged();
          if (this.frontState !== XenbusState.Initialising && this.frontState !== XenbusState.Initialised) {
            await this.setFrontState(XenbusState.Initialising);
          }
          await this.waitBackend((x) => x !== s, signal, left(), `the backend to leave ${xenbusStateName(s)}`);
          continue;
      }
    }
  }

  /** talk_to_blkback: negotiate ring order and queues, grant rings, bind channels, publish, Initialised. */
  private async talk(): Promise<void> {
    this.discardTalked();
    const bp = this.location.backendPath;
    const geometry = negotiateRings(await readBackendRingFeatures(this.read_, bp), this.limits);
    const queues: BlkfrontQueue[] = [];
    try {
      for (let q = 0; q < geometry.queues; q++) {
        queues.push(new BlkfrontQueue({
          index: q,
          sharer: this.host.sharer,
          evtchn: this.host.evtchn,
          reaper: this.reaper,
          backendDomid: this.location.backendDomid,
          abi: this.limits.abi,
          ringPageOrder: geometry.ringPageOrder,
          handle: this.location.devid,
          owner: this.dispatcher,
        }));
      }
      await publishRings(this.xs, this.location.frontendPath, {
        ringPageOrder: geometry.ringPageOrder,
        rings: queues.map((q) => ({ ringRefs: q.ringRefs, port: q.channel.localPort })),
        abi: this.limits.abi,
        persistent: this.limits.persistent,
      });
    } catch (e) {
      for (const q of queues) q.close();
      throw e;
    }
    this.talked = queues;
    this.geometry = geometry;
    if (this.frontState !== XenbusState.Initialised) {
      this.frontState = XenbusState.Initialised;
      this.record('frontend', XenbusState.Initialised);
    }
  }

  private discardTalked(): void {
    const qs = this.talked;
    this.talked = [];
    for (const q of qs) q.close();
  }

  /** blkfront_connect: read the disk and features, set up the data path, Connected. */
  private async connect(): Promise<void> {
    const bp = this.location.backendPath;
    const disk = await readBackendDisk(this.read_, bp);
    const io = negotiateIo(await readBackendIoFeatures(this.read_, bp), this.limits);
    const maxSegments = maxSegmentsPerRequest(io.maxIndirectSegments);
    for (const q of this.talked) {
      q.configure({ persistent: io.persistent, maxIndirectSegments: io.maxIndirectSegments, maxSegments, maxPoolPages: this.maxPersistentPages });
    }
    await this.setFrontState(XenbusState.Connected);
    const previous = this.disk;
    this.disk = disk;
    this.io = io;
    const queues = this.talked;
    this.talked = [];
    this.dispatcher.attach(queues, { flushOp: io.flushOp, maxSegments });
    if (previous !== null && (previous.sectors !== disk.sectors || previous.sectorSize !== disk.sectorSize)) {
      this.emit('resize', { previous: previous.sectors, sectors: disk.sectors });
    }
  }

  private becameConnected(): void {
    if (this.phase !== 'connecting' && this.phase !== 'recovering') return;
    this.phase = 'connected';
    // The backend may have moved on while we were finishing the handshake.
    if (this.backendState !== XenbusState.Connected) this.startRecovery();
  }

  private startRecovery(): void {
    if (this.phase !== 'connected') return;
    this.phase = 'recovering';
    this.reconnects++;
    // blkfront_resume / blkif_free(suspend): keep every unanswered request to send again.
    this.dispatcher.suspend();
    this.emit('reconnecting', { backendState: this.backendState });
    const flow = this.driveToConnected(this.flowAbort.signal, undefined);
    this.flow = flow;
    flow.then(
      () => {
        if (this.flow === flow) this.flow = null;
        this.becameConnected();
        if (this.phase === 'connected') this.emit('reconnected');
      },
      (e: unknown) => {
        if (this.flow === flow) this.flow = null;
        if (this.phase === 'closing' || this.phase === 'closed') return;
        this.fatal(e instanceof BlkfrontError ? e : new BlkfrontError('EIO', (e as Error).message, undefined, undefined, { cause: e }));
      },
    );
  }

  private checkCapacity(): void {
    this.capacityChain = this.capacityChain.then(async () => {
      const key = `${this.location.backendPath}/sectors`;
      const text = await this.xs.tryRead(key);
      if (text === undefined || this.disk === null || this.phase !== 'connected') return;
      let sectors: number;
      try {
        sectors = sectorsFromKey(parseUnsigned(key, text, Number.MAX_SAFE_INTEGER / 512), this.disk.sectorSize);
      } catch (e) {
        this.emit('warning', e);
        return;
      }
      if (sectors === this.disk.sectors) return;
      const previous = this.disk.sectors;
      this.disk = { ...this.disk, sectors };
      this.emit('resize', { previous, sectors });
    }).catch((e: unknown) => {
      this.emit('warning', e);
    });
  }

  private onFeatureLost(feature: 'flush' | 'discard'): void {
    if (feature === 'discard' && this.io !== null) this.io = { ...this.io, discard: false, discardSecure: false };
  }

  private onProtocolError(e: BlkfrontError): void {
    // Linux blkif_interrupt: "disabled for further use". Rings stay until disconnect().
    if (this.phase === 'closing' || this.phase === 'closed' || this.phase === 'disabled') return;
    this.phase = 'disabled';
    this.dispatcher.fail(e);
    this.emit('disabled', e);
  }

  private fatal(e: BlkfrontError): void {
    if (this.phase === 'closing' || this.phase === 'closed' || this.phase === 'gone' || this.phase === 'disabled') return;
    this.phase = e.code === 'ENODEV' ? 'gone' : 'disabled';
    this.dispatcher.fail(e);
    this.dispatcher.closeQueues();
    this.discardTalked();
    this.emit(this.phase === 'gone' ? 'unplugged' : 'disabled', e);
  }

  private goneError(): BlkfrontError {
    return this.dispatcher.failed ?? new BlkfrontError('ENODEV', `${this.location.name} is not connected`);
  }

  private async close(): Promise<void> {
    const wasConnected = this.phase === 'connected';
    this.phase = 'closing';
    this.flowAbort.abort(new Error('disconnect'));
    await this.flow?.catch(() => {});
    this.flow = null;
    const quiet = new AbortController();
    try {
      if (wasConnected) {
        // Let what is on the rings complete; what still waits after the timeout fails.
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([this.dispatcher.idle(), new Promise<void>((r) => { timer = setTimeout(r, this.closeTimeoutMs); })]);
        clearTimeout(timer);
      }
      this.dispatcher.fail(new BlkfrontError('ENODEV', `${this.location.name} disconnected`));
      if (this.watch !== null && this.frontState !== XenbusState.Closed && this.frontState !== XenbusState.Unknown) {
        // Closing then Closed, each acknowledged by a backend that is there to answer (one that
        // is only Initialising, or gone, has nothing of ours mapped and answers nothing).
        const answers = (x: XenbusState): boolean => x === XenbusState.InitWait || x === XenbusState.Initialised || x === XenbusState.Connected || x === XenbusState.Closing;
        const listening = answers(this.backendState);
        if (listening) {
          await this.setFrontState(XenbusState.Closing);
          await this.waitBackend((x) => !answers(x) || x === XenbusState.Closing, quiet.signal, this.closeTimeoutMs, 'the backend to acknowledge Closing').catch(() => {});
        }
        await this.setFrontState(XenbusState.Closed);
        if (listening) {
          await this.waitBackend((x) => !answers(x) || x === XenbusState.InitWait, quiet.signal, this.closeTimeoutMs, 'the backend to acknowledge Closed').catch(() => {});
        }
      }
    } catch {
      // XenStore gone: nothing more to tell the backend; still release what we hold.
    } finally {
      this.dispatcher.closeQueues();
      this.discardTalked();
      this.ioBuffers.releaseAll();
      await this.reaper.drain(this.closeTimeoutMs).catch(() => false);
      const w = this.watch;
      this.watch = null;
      if (w !== null) await w.close().catch(() => {});
      await this.watchDone;
      this.phase = 'closed';
      this.emit('closed');
    }
  }
}
