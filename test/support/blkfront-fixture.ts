// Test doubles for blkfront's unit tests, all in one process: an in-memory xenstored reached
// through real XenStore clients, a toolstack that creates vbd directories as xl does, and a
// scripted blkif backend on the memory platform that follows Linux xen-blkback's xenbus
// protocol (features -> InitWait; frontend Initialised -> map rings, Connected; Closing ->
// Closing; Closed -> unmap, Closed; Initialising while Closed -> InitWait) and can be told to
// misbehave (hold responses, corrupt them, inject raw ones, write garbage keys).
// The real blkback is exercised by the integration tier; this double exists so frontend
// behaviour can be pinned down, including against a hostile backend, without processes.
import { XenstoredCore } from '../../xenstore/server/core.ts';
import { XenstoreClient } from '../../xenstore/client.ts';
import type { XenstoreTransport, TransportSink } from '../../xenstore/transport.ts';
import type { Xenstore, XenstoreWatch } from '../../xenstore/xenstore.ts';
import { XsMessageReader, encodeMessage } from '../../protocol/xs-wire.ts';
import type { XsMessage } from '../../protocol/xs-wire.ts';
import type { GrantMapper, MappedGrants } from '../../gnttab/gnttab.ts';
import type { EventChannel, EventChannels } from '../../evtchn/evtchn.ts';
import type { MemoryPlatform } from './memory-host.ts';
import {
  BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
  BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, blkifErrorStatus, decodeIndirectSegments, decodeRequest,
  encodeResponse, newBlkifRequest, ringEntrySize,
} from '../../protocol/blkif.ts';
import type { BlkifAbi, BlkifRequest, BlkifResponse } from '../../protocol/blkif.ts';
import {
  backRingInit, finalCheckForRequests, nextRequestSlot, nextResponseOffset, pushResponsesAndCheckNotify, reqProd, sringAttach,
} from '../../protocol/ring.ts';
import type { BackRing } from '../../protocol/ring.ts';
import { XenbusState, parseXenbusState } from '../../protocol/xenbus-state.ts';

/** `memoryTransport(core, domid)` is a XenStore transport straight into an in-process xenstored. */
export function memoryTransport(core: XenstoredCore, domid: number): XenstoreTransport {
  let sink: TransportSink | undefined;
  const reader = new XsMessageReader();
  let conn: ReturnType<XenstoredCore['connect']> | undefined;
  let ended = false;
  const end = (): void => {
    if (ended) return;
    ended = true;
    sink?.end();
  };
  return {
    description: `in-process xenstored as domain ${domid}`,
    start(s) {
      sink = s;
      conn = core.connect(domid, {
        // Deliver after the current call returns, in order, as a socket would.
        send: (msgs: XsMessage[]) => {
          const bytes = msgs.map((m) => encodeMessage(m));
          queueMicrotask(() => { if (!ended) for (const b of bytes) sink!.data(b); });
        },
        drop: () => queueMicrotask(end),
      });
    },
    send(bytes) {
      for (const m of reader.feed(bytes)) conn!.receive(m);
    },
    async close() {
      conn?.close();
      end();
    },
  };
}

/** `memoryXenstore(core, domid)` is a XenStore client acting as `domid` (0: privileged). */
export function memoryXenstore(core: XenstoredCore, domid: number): Xenstore {
  return new XenstoreClient(memoryTransport(core, domid));
}

/** A vbd as the toolstack laid it out. */
export interface VbdPaths {
  readonly devid: number;
  readonly frontendPath: string;
  readonly backendPath: string;
}

/**
 * `createVbd(xs0, frontDomid, backDomid, devid, extra)` writes both halves of a vbd as libxl
 * does (state Initialising, online=1, each side owned by its domain and readable by the other).
 */
export async function createVbd(xs0: Xenstore, frontDomid: number, backDomid: number, devid: number, extra: Record<string, string> = {}): Promise<VbdPaths> {
  const frontendPath = `/local/domain/${frontDomid}/device/vbd/${devid}`;
  const backendPath = `/local/domain/${backDomid}/backend/vbd/${frontDomid}/${devid}`;
  await xs0.transaction(async (tx) => {
    await tx.write(`${backendPath}/frontend`, frontendPath);
    await tx.write(`${backendPath}/frontend-id`, String(frontDomid));
    await tx.write(`${backendPath}/online`, '1');
    await tx.write(`${backendPath}/state`, String(XenbusState.Initialising));
    await tx.write(`${backendPath}/mode`, 'w');
    await tx.write(`${backendPath}/type`, 'phy');
    await tx.write(`${backendPath}/device-type`, 'disk');
    await tx.write(`${frontendPath}/backend`, backendPath);
    await tx.write(`${frontendPath}/backend-id`, String(backDomid));
    await tx.write(`${frontendPath}/virtual-device`, String(devid));
    await tx.write(`${frontendPath}/device-type`, 'disk');
    await tx.write(`${frontendPath}/state`, String(XenbusState.Initialising));
    for (const [k, v] of Object.entries(extra)) await tx.write(k.startsWith('/') ? k : `${frontendPath}/${k}`, v);
    await tx.setPermissions(`/local/domain/${backDomid}/backend/vbd/${frontDomid}`, [{ domid: backDomid, perm: 'n' }, { domid: frontDomid, perm: 'r' }]);
    await tx.setPermissions(backendPath, [{ domid: backDomid, perm: 'n' }, { domid: frontDomid, perm: 'r' }]);
    for (const k of await tx.directory(backendPath)) await tx.setPermissions(`${backendPath}/${k}`, [{ domid: backDomid, perm: 'n' }, { domid: frontDomid, perm: 'r' }]);
    await tx.setPermissions(`/local/domain/${frontDomid}`, [{ domid: frontDomid, perm: 'n' }]);
    await tx.setPermissions(`/local/domain/${frontDomid}/device`, [{ domid: frontDomid, perm: 'n' }]);
    await tx.setPermissions(`/local/domain/${frontDomid}/device/vbd`, [{ domid: frontDomid, perm: 'n' }]);
    await tx.setPermissions(frontendPath, [{ domid: frontDomid, perm: 'n' }, { domid: backDomid, perm: 'r' }]);
    for (const k of await tx.directory(frontendPath)) await tx.setPermissions(`${frontendPath}/${k}`, [{ domid: frontDomid, perm: 'n' }, { domid: backDomid, perm: 'r' }]);
  });
  return { devid, frontendPath, backendPath };
}

/** What the fake backend advertises and serves. */
export interface FakeBackendConfig {
  readonly sectorSize?: number;
  readonly physicalSectorSize?: number;
  readonly info?: number;
  readonly maxRingPageOrder?: number;
  readonly maxQueues?: number;
  readonly maxIndirectSegments?: number;
  readonly flushCache?: boolean;
  readonly barrier?: boolean;
  readonly discard?: boolean;
  readonly discardSecure?: boolean;
  readonly persistent?: boolean;
  /** Keys (relative to the backend dir) written with Connected, overriding the computed ones: garbage injection. */
  readonly connectKeys?: Record<string, string>;
  /** Keys written before InitWait, overriding the feature keys. */
  readonly probeKeys?: Record<string, string>;
}

/** One request as the fake backend saw it. */
export interface SeenRequest {
  readonly queue: number;
  readonly operation: number;
  readonly dataOp: number;
  readonly sector: number;
  readonly nrSegments: number;
  readonly nrSectors: number;
  readonly discardFlag: number;
  readonly firstSect: number;
  readonly lastSect: number;
  /** The data segments' grant references (direct or from the indirect pages). */
  readonly grefs: readonly number[];
}

interface Ring {
  readonly index: number;
  readonly mapping: MappedGrants;
  readonly back: BackRing;
  readonly channel: EventChannel;
  readonly abi: BlkifAbi;
}

interface Held {
  readonly ring: Ring;
  readonly rsp: BlkifResponse;
}

/** A scripted blkif backend on the memory platform. */
export class FakeBlkback {
  readonly seen: SeenRequest[] = [];
  /** Backend states written, in order. */
  readonly states: number[] = [];
  /** Hold responses instead of sending them (release with `release()`). */
  hold = false;
  /** Rewrite a response before it is sent (to corrupt id, operation or status). */
  mutate: ((rsp: BlkifResponse, req: BlkifRequest) => void) | null = null;
  /** Status to answer a request with instead of performing it. */
  statusFor: ((req: BlkifRequest) => number | undefined) | null = null;
  private held: Held[] = [];
  private rings: Ring[] = [];
  private persistentMaps = new Map<number, MappedGrants>();
  private watch: XenstoreWatch | null = null;
  private loop: Promise<void> = Promise.resolve();
  private state: number = XenbusState.Initialising;
  private frontPersistent = false;
  private readonly req = newBlkifRequest();
  private connectedOnce = false;
  private readonly mapper: GrantMapper;
  private readonly evtchn: EventChannels;

  constructor(
    private readonly xs: Xenstore,
    platform: MemoryPlatform,
    readonly backDomid: number,
    readonly frontDomid: number,
    readonly paths: VbdPaths,
    readonly disk: Buffer,
    readonly config: FakeBackendConfig = {},
  ) {
    this.mapper = platform.mapper(backDomid);
    this.evtchn = platform.evtchn(backDomid);
  }

  private get sectorSize(): number {
    return this.config.sectorSize ?? 512;
  }

  /** `start()` advertises features, goes InitWait and follows the frontend (xen_blkbk_probe). */
  async start(): Promise<void> {
    await this.writeProbeKeys();
    await this.setState(XenbusState.InitWait);
    this.watch = this.xs.watch(`${this.paths.frontendPath}/state`);
    const w = this.watch;
    this.loop = (async () => {
      try {
        for await (const _ of w) {
          void _;
          const fs = parseXenbusState(await this.xs.tryRead(`${this.paths.frontendPath}/state`));
          await this.frontendChanged(fs);
        }
      } catch {
        // watch ended with the connection
      }
    })();
  }

  private async writeProbeKeys(): Promise<void> {
    const c = this.config;
    const bp = this.paths.backendPath;
    const keys: Record<string, string> = {
      'feature-max-indirect-segments': String(c.maxIndirectSegments ?? 256),
      'max-ring-page-order': String(c.maxRingPageOrder ?? 4),
      'multi-queue-max-queues': String(c.maxQueues ?? 4),
      'feature-persistent': (c.persistent ?? true) ? '1' : '0',
      ...(c.probeKeys ?? {}),
    };
    await this.xs.transaction(async (tx) => {
      for (const [k, v] of Object.entries(keys)) await tx.write(`${bp}/${k}`, v);
    });
  }

  private async setState(s: number): Promise<void> {
    this.state = s;
    this.states.push(s);
    await this.xs.write(`${this.paths.backendPath}/state`, String(s));
  }

  private async frontendChanged(fs: number): Promise<void> {
    switch (fs) {
      case XenbusState.Initialising:
        if (this.state === XenbusState.Closed) await this.setState(XenbusState.InitWait);
        break;
      case XenbusState.Initialised:
      case XenbusState.Connected:
        if (this.state === XenbusState.Connected) break;
        if (this.state !== XenbusState.InitWait) break;
        await this.connectRings();
        break;
      case XenbusState.Closing:
        if (this.state !== XenbusState.Closing && this.state !== XenbusState.Closed) await this.setState(XenbusState.Closing);
        break;
      case XenbusState.Closed:
        this.disconnectRings();
        if (this.state !== XenbusState.Closed) await this.setState(XenbusState.Closed);
        break;
      default:
        break;
    }
  }

  private async connectRings(): Promise<void> {
    const fp = this.paths.frontendPath;
    const rd = async (k: string): Promise<string | undefined> => this.xs.tryRead(`${fp}/${k}`);
    const order = Number((await rd('ring-page-order')) ?? '0');
    const nq = Number((await rd('multi-queue-num-queues')) ?? '1');
    const protocol = (await rd('protocol')) ?? 'x86_64-abi';
    const abi: BlkifAbi = protocol === 'x86_32-abi' ? 'x86_32' : 'x86_64';
    this.frontPersistent = (await rd('feature-persistent')) === '1';
    const mapper = this.mapper;
    const evtchn = this.evtchn;
    for (let q = 0; q < nq; q++) {
      const dir = nq === 1 ? '' : `queue-${q}/`;
      const refs: number[] = [];
      if (order === 0) refs.push(Number(await rd(`${dir}ring-ref`)));
      else for (let i = 0; i < 1 << order; i++) refs.push(Number(await rd(`${dir}ring-ref${i}`)));
      const port = Number(await rd(`${dir}event-channel`));
      const mapping = mapper.map(this.frontDomid, refs, true);
      const sring = sringAttach(mapping.buffer, ringEntrySize(abi));
      const channel = evtchn.bindInterdomain(this.frontDomid, port);
      const ring: Ring = { index: q, mapping, back: backRingInit(sring), channel, abi };
      channel.onEvent(() => this.serve(ring));
      this.rings.push(ring);
    }
    const c = this.config;
    // `sectors` in 512-byte units whatever sector-size is, as Linux xen-blkback writes it.
    const sectors = this.disk.length / 512;
    const keys: Record<string, string> = {
      sectors: String(sectors),
      info: String(c.info ?? 0),
      'sector-size': String(this.sectorSize),
      'physical-sector-size': String(c.physicalSectorSize ?? this.sectorSize),
      'feature-flush-cache': (c.flushCache ?? true) ? '1' : '0',
      'feature-barrier': (c.barrier ?? false) ? '1' : '0',
      'feature-discard': (c.discard ?? true) ? '1' : '0',
      ...((c.discard ?? true) ? { 'discard-granularity': '4096', 'discard-alignment': '0', 'discard-secure': (c.discardSecure ?? true) ? '1' : '0' } : {}),
      ...(c.connectKeys ?? {}),
    };
    await this.xs.transaction(async (tx) => {
      for (const [k, v] of Object.entries(keys)) await tx.write(`${this.paths.backendPath}/${k}`, v);
      await tx.write(`${this.paths.backendPath}/state`, String(XenbusState.Connected));
    });
    this.state = XenbusState.Connected;
    this.states.push(XenbusState.Connected);
    this.connectedOnce = true;
    for (const r of this.rings) this.serve(r);
  }

  /** `disconnectRings()` unmaps rings and cached grants and unbinds (xen_blkif_disconnect). */
  disconnectRings(): void {
    const mapper = this.mapper;
    for (const r of this.rings) {
      r.channel.close();
      mapper.unmap(r.mapping);
    }
    this.rings = [];
    this.held = [];
    for (const m of this.persistentMaps.values()) mapper.unmap(m);
    this.persistentMaps.clear();
  }

  /** `resize(sectors)` rewrites sectors and state Connected in one transaction, as blkback does on a resize. */
  async resize(bytes: number): Promise<void> {
    await this.xs.transaction(async (tx) => {
      await tx.write(`${this.paths.backendPath}/sectors`, String(bytes / 512));
      await tx.write(`${this.paths.backendPath}/state`, String(XenbusState.Connected));
    });
  }

  /** `crash()` vanishes as a killed backend process does: mappings gone, state left as it was. */
  crash(): void {
    this.disconnectRings();
    void this.watch?.close();
    this.watch = null;
  }

  /** `restart()` comes back after a crash: features, InitWait, following the frontend again. */
  async restart(): Promise<void> {
    this.state = XenbusState.Initialising;
    await this.setState(XenbusState.Initialising);
    await this.start();
  }

  /** `release()` sends every held response. */
  release(): void {
    const held = this.held;
    this.held = [];
    const touched = new Set<Ring>();
    for (const h of held) {
      if (!this.rings.includes(h.ring)) continue;
      encodeResponse(h.ring.abi, h.ring.mapping.buffer, nextResponseOffset(h.ring.back), h.rsp);
      touched.add(h.ring);
    }
    for (const r of touched) if (pushResponsesAndCheckNotify(r.back)) r.channel.notify();
  }

  /** `heldCount` is how many responses are held back. */
  get heldCount(): number {
    return this.held.length;
  }

  /** `inject(queue, rsp)` writes a raw response into ring `queue` and pushes it. */
  inject(queue: number, rsp: BlkifResponse): void {
    const r = this.rings[queue]!;
    encodeResponse(r.abi, r.mapping.buffer, nextResponseOffset(r.back), rsp);
    pushResponsesAndCheckNotify(r.back);
    r.channel.notify();
  }

  /** `setRspProd(queue, value)` publishes a raw rsp_prod on ring `queue` and notifies (a lying backend). */
  setRspProd(queue: number, value: number): void {
    const r = this.rings[queue]!;
    Atomics.store(r.back.sring.idx, 2, value >>> 0);
    r.channel.notify();
  }

  /** `rspProdPvt(queue)` is the backend's private response producer on ring `queue`. */
  rspProdPvt(queue: number): number {
    return this.rings[queue]!.back.rspProdPvt;
  }

  /** `heldResponses()` is a copy of the responses held back (to replay them as duplicates). */
  heldResponses(): BlkifResponse[] {
    return this.held.map((h) => ({ ...h.rsp }));
  }

  get connected(): boolean {
    return this.connectedOnce && this.rings.length > 0;
  }

  private serve(ring: Ring): void {
    if (!this.rings.includes(ring)) return;
    const b = ring.back;
    let notify = false;
    do {
      while (b.reqCons !== reqProd(b.sring)) {
        const off = nextRequestSlot(b);
        const req = this.req;
        const err = decodeRequest(ring.abi, b.sring.bytes, off, req, this.config.maxIndirectSegments ?? 256);
        const rsp: BlkifResponse = { idLo: req.idLo, idHi: req.idHi, operation: req.dataOp, status: BLKIF_RSP_OKAY };
        if (err !== undefined) {
          rsp.status = blkifErrorStatus(err);
        } else {
          rsp.status = this.perform(ring, req);
        }
        this.mutate?.(rsp, req);
        if (this.hold) {
          this.held.push({ ring, rsp });
        } else {
          encodeResponse(ring.abi, b.sring.bytes, nextResponseOffset(b), rsp);
          notify = pushResponsesAndCheckNotify(b) || notify;
        }
      }
    } while (finalCheckForRequests(b));
    if (notify) ring.channel.notify();
  }

  private mapPage(ref: number, writable: boolean): MappedGrants {
    const mapper = this.mapper;
    if (this.frontPersistent && (this.config.persistent ?? true)) {
      let m = this.persistentMaps.get(ref);
      if (m === undefined) {
        m = mapper.map(this.frontDomid, [ref], true);
        this.persistentMaps.set(ref, m);
      }
      return m;
    }
    return mapper.map(this.frontDomid, [ref], writable);
  }

  private unmapPage(m: MappedGrants): void {
    if (this.persistentMaps.get(m.refs[0]!) === m) return;
    this.mapper.unmap(m);
  }

  private perform(ring: Ring, req: BlkifRequest): number {
    const forced = this.statusFor?.(req);
    const op = req.dataOp;
    let firstSect = 0;
    let lastSect = 0;
    if (req.operation === BLKIF_OP_INDIRECT) {
      const pages: MappedGrants[] = [];
      for (let i = 0; i < req.nrIndirectPages; i++) pages.push(this.mapPage(req.indirectGrefs[i]!, false));
      const buf = Buffer.concat(pages.map((p) => p.buffer.subarray(0, 4096)));
      for (const p of pages) this.unmapPage(p);
      const e = decodeIndirectSegments(buf, req);
      if (e !== undefined) return BLKIF_RSP_ERROR;
    }
    if (req.nrSegments > 0) {
      firstSect = req.segFirst[0]!;
      lastSect = req.segLast[req.nrSegments - 1]!;
    }
    this.seen.push({
      queue: ring.index, operation: req.operation, dataOp: op, sector: req.sectorNumber, nrSegments: req.nrSegments,
      nrSectors: req.nrSectors, discardFlag: req.discardFlag, firstSect, lastSect, grefs: Array.from(req.segGref.subarray(0, req.nrSegments)),
    });
    if (forced !== undefined) return forced;
    switch (op) {
      case BLKIF_OP_READ:
      case BLKIF_OP_WRITE: {
        let pos = req.sectorNumber * 512;
        for (let i = 0; i < req.nrSegments; i++) {
          const f = req.segFirst[i]!;
          const l = req.segLast[i]!;
          const len = (l - f + 1) * 512;
          if (pos + len > this.disk.length) return BLKIF_RSP_ERROR;
          const m = this.mapPage(req.segGref[i]!, op === BLKIF_OP_READ);
          if (op === BLKIF_OP_READ) this.disk.copy(m.buffer, f * 512, pos, pos + len);
          else m.buffer.copy(this.disk, pos, f * 512, f * 512 + len);
          this.unmapPage(m);
          pos += len;
        }
        return BLKIF_RSP_OKAY;
      }
      case BLKIF_OP_FLUSH_DISKCACHE:
        return (this.config.flushCache ?? true) ? BLKIF_RSP_OKAY : BLKIF_RSP_EOPNOTSUPP;
      case BLKIF_OP_WRITE_BARRIER:
        return (this.config.barrier ?? false) ? BLKIF_RSP_OKAY : BLKIF_RSP_EOPNOTSUPP;
      case BLKIF_OP_DISCARD: {
        if (!(this.config.discard ?? true)) return BLKIF_RSP_EOPNOTSUPP;
        const start = req.sectorNumber * 512;
        const end = start + req.nrSectors * 512;
        if (end > this.disk.length) return BLKIF_RSP_ERROR;
        this.disk.fill(0, start, end);
        return BLKIF_RSP_OKAY;
      }
      default:
        return BLKIF_RSP_EOPNOTSUPP;
    }
  }

  /** `stop()` ends the watch loop and unmaps everything (test teardown). */
  async stop(): Promise<void> {
    const w = this.watch;
    this.watch = null;
    if (w !== null) await w.close().catch(() => {});
    await this.loop;
    this.disconnectRings();
  }
}

/** `waitFor(pred, ms, what)` polls `pred` until true or fails after `ms`. */
export async function waitFor(pred: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** `newCore()` is a fresh in-memory xenstored with domains `domids` introduced. */
export function newCore(...domids: number[]): XenstoredCore {
  const core = new XenstoredCore();
  for (const d of domids) core.introduceDomain(d);
  return core;
}

export { BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY };
