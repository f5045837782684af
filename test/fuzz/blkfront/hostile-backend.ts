// A hostile blkif backend for fuzzing xenblk's blkfront, on the memory platform with an
// in-process xenstored. It follows the xenbus protocol of Linux xen-blkback as far as the fuzzer
// wants it to (features then InitWait; frontend Initialised -> map rings, Connected; frontend
// Closing -> Closing; Closed -> unmap everything, Closed; Initialising -> InitWait), and can
// instead write garbage into its keys and states, or never move at all.
//
// On the rings every request is served honestly unless the fuzzer's policy says otherwise:
// answer after some event-loop turns (out of order), answer with an error or undefined status,
// never answer, answer only after the frontend gave the request up (with poison in the read
// pages), or break the protocol once (a duplicated response, an id out of range or of an old
// generation or of an idle slot, a wrong operation, rsp_prod far ahead or behind, rsp_prod over
// slots never written). Honest answers perform the I/O on `disk`, so a read that resolves must
// hold what the disk held.
import type { Xenstore, XenstoreWatch } from '../../../xenstore/xenstore.ts';
import type { GrantMapper, MappedGrants } from '../../../gnttab/gnttab.ts';
import type { EventChannel, EventChannels } from '../../../evtchn/evtchn.ts';
import {
  BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
  BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, blkifErrorStatus, decodeIndirectSegments, decodeRequest,
  encodeResponse, newBlkifRequest, ringEntrySize,
} from '../../../protocol/blkif.ts';
import type { BlkifAbi, BlkifRequest, BlkifResponse } from '../../../protocol/blkif.ts';
import { backRingInit, nextRequestSlot, nextResponseOffset, pushResponsesAndCheckNotify, reqProd, sringAttach } from '../../../protocol/ring.ts';
import type { BackRing } from '../../../protocol/ring.ts';
import { XenbusState, parseXenbusState } from '../../../protocol/xenbus-state.ts';

/** How a protocol break is done. */
export type BreakKind = 'duplicate' | 'id-out-of-range' | 'old-generation' | 'idle-slot' | 'wrong-op' | 'rsp-prod-ahead' | 'rsp-prod-behind' | 'unwritten-slots';
export const BREAK_KINDS: readonly BreakKind[] = ['duplicate', 'id-out-of-range', 'old-generation', 'idle-slot', 'wrong-op', 'rsp-prod-ahead', 'rsp-prod-behind', 'unwritten-slots'];

/** What the backend does with one request. */
export type Action =
  | { readonly kind: 'answer'; readonly turns: number }
  | { readonly kind: 'status'; readonly status: number; readonly turns: number }
  | { readonly kind: 'never' }
  /** Held until `releaseLate()` is called for its sectors, then answered OK with poisoned pages. */
  | { readonly kind: 'late' };

/** One request as the backend saw it, handed to the policy. */
export interface SeenRequest {
  readonly queue: number;
  readonly idLo: number;
  readonly idHi: number;
  readonly op: number;
  readonly dataOp: number;
  /** 512-byte sectors. */
  readonly sector: number;
  readonly nsect: number;
}

/** How the backend walks the xenbus states. */
export type StateScript =
  /** As Linux blkback. */
  | 'normal'
  /** Never leaves Initialising. */
  | 'silent'
  /** InitWait, then never connects (maps nothing). */
  | 'stuck-initwait'
  /** Writes a garbage state instead of InitWait and stays there. */
  | 'garbage-state';

export interface HostileConfig {
  readonly script: StateScript;
  /** Garbage (or odd) values for keys written before InitWait, relative to the backend directory. */
  readonly probeKeys: Record<string, string>;
  /** Garbage (or odd) values for keys written with Connected. */
  readonly connectKeys: Record<string, string>;
  /** The state value written by 'garbage-state'. */
  readonly garbageState: string;
  readonly maxIndirect: number;
  readonly maxRingPageOrder: number;
  readonly maxQueues: number;
  readonly persistent: boolean;
  readonly flush: boolean;
  readonly discard: boolean;
  readonly discardSecure: boolean;
  readonly sectorSize: number;
}

interface Ring {
  readonly index: number;
  readonly mapping: MappedGrants;
  readonly back: BackRing;
  readonly channel: EventChannel;
  readonly abi: BlkifAbi;
  /** Responses of old generations seen, for the old-generation break. */
  readonly answeredIds: { lo: number; hi: number }[];
}

interface Held {
  readonly ring: Ring;
  readonly seen: SeenRequest;
  readonly req: BlkifRequest;
  readonly action: Action;
  turns: number;
  released: boolean;
}

/** The hostile backend of one vbd. */
export class HostileBackend {
  /** Problems in the backend itself (a test-harness bug, not the frontend's). */
  readonly problems: string[] = [];
  /** Requests seen (all rings, all connections). */
  seen = 0;
  responses = 0;
  /** Which protocol break was made, once it was. */
  broke: BreakKind | undefined;
  /** Called for each request; decides its fate. */
  policy: (r: SeenRequest) => Action = () => ({ kind: 'answer', turns: 0 });
  /** When set, the next response slot is used for this break instead (then cleared). */
  pendingBreak: BreakKind | undefined;
  /** State transitions written. */
  readonly states: string[] = [];
  private rings: Ring[] = [];
  /** What we advertised as feature-max-indirect-segments, garbage overrides included. */
  private maxIndirect = 0;
  private held: Held[] = [];
  private watch: XenstoreWatch | null = null;
  private loop: Promise<void> = Promise.resolve();
  private state: number = XenbusState.Initialising;
  private ticker: NodeJS.Immediate | null = null;
  private stopped = false;
  private readonly mapper: GrantMapper;
  private readonly evtchn: EventChannels;

  constructor(
    private readonly xs: Xenstore,
    platform: { mapper(domid: number): GrantMapper; evtchn(domid: number): EventChannels },
    readonly backDomid: number,
    readonly frontDomid: number,
    readonly frontendPath: string,
    readonly backendPath: string,
    /** The disk: 512-byte sectors, honest answers read and write it. */
    readonly disk: Buffer,
    readonly cfg: HostileConfig,
    private readonly rng: () => number,
  ) {
    this.mapper = platform.mapper(backDomid);
    this.evtchn = platform.evtchn(backDomid);
  }

  /** `ringCount` is how many rings the backend has mapped now. */
  get ringCount(): number {
    return this.rings.length;
  }

  async start(): Promise<void> {
    const c = this.cfg;
    if (c.script === 'silent') return;
    const bp = this.backendPath;
    const keys: Record<string, string> = {
      'feature-max-indirect-segments': String(c.maxIndirect),
      'max-ring-page-order': String(c.maxRingPageOrder),
      'multi-queue-max-queues': String(c.maxQueues),
      'feature-persistent': c.persistent ? '1' : '0',
      ...c.probeKeys,
    };
    await this.xs.transaction(async (tx) => {
      for (const [k, v] of Object.entries(keys)) await tx.write(`${bp}/${k}`, v);
    });
    if (c.script === 'garbage-state') {
      await this.xs.write(`${bp}/state`, c.garbageState);
      this.states.push(c.garbageState);
      return;
    }
    await this.setState(XenbusState.InitWait);
    this.watch = this.xs.watch(`${this.frontendPath}/state`);
    const w = this.watch;
    this.loop = (async () => {
      try {
        for await (const _ of w) {
          void _;
          if (this.stopped) break;
          const fs = parseXenbusState(await this.xs.tryRead(`${this.frontendPath}/state`));
          await this.frontendChanged(fs);
        }
      } catch (e) {
        if (!this.stopped) this.problems.push(`hostile backend's watch loop failed: ${e instanceof Error ? e.message : String(e)}`);
      }
    })();
    this.tick();
  }

  private async setState(s: number): Promise<void> {
    this.state = s;
    this.states.push(String(s));
    await this.xs.write(`${this.backendPath}/state`, String(s));
  }

  /** `writeState(value)` writes any value (garbage included) as our state, keeping the rings. */
  async writeState(value: string): Promise<void> {
    this.states.push(value);
    const parsed = parseXenbusState(value);
    this.state = parsed;
    await this.xs.write(`${this.backendPath}/state`, value);
  }

  private async frontendChanged(fs: number): Promise<void> {
    switch (fs) {
      case XenbusState.Initialising:
        // A frontend starting over (after our Closed, or after a garbage state of ours): drop
        // the old rings and offer again, as xenblk's blkback does for a restarted frontend.
        if (this.state !== XenbusState.InitWait) {
          this.disconnectRings();
          await this.setState(XenbusState.InitWait);
        }
        return;
      case XenbusState.Initialised:
      case XenbusState.Connected:
        if (this.state !== XenbusState.InitWait) return;
        if (this.cfg.script === 'stuck-initwait') return;
        await this.connectRings();
        return;
      case XenbusState.Closing:
        if (this.state !== XenbusState.Closing && this.state !== XenbusState.Closed) await this.setState(XenbusState.Closing);
        return;
      case XenbusState.Closed:
        this.disconnectRings();
        if (this.state !== XenbusState.Closed) await this.setState(XenbusState.Closed);
        return;
      default:
        return;
    }
  }

  private async connectRings(): Promise<void> {
    const fp = this.frontendPath;
    const rd = (k: string): Promise<string | undefined> => this.xs.tryRead(`${fp}/${k}`);
    const order = Number((await rd('ring-page-order')) ?? '0');
    const nq = Number((await rd('multi-queue-num-queues')) ?? '1');
    const abi: BlkifAbi = (await rd('protocol')) === 'x86_32-abi' ? 'x86_32' : 'x86_64';
    this.disconnectRings();
    try {
      for (let q = 0; q < nq; q++) {
        const dir = nq === 1 ? '' : `queue-${q}/`;
        const refs: number[] = [];
        if (order === 0) refs.push(Number(await rd(`${dir}ring-ref`)));
        else for (let i = 0; i < 1 << order; i++) refs.push(Number(await rd(`${dir}ring-ref${i}`)));
        const port = Number(await rd(`${dir}event-channel`));
        const mapping = this.mapper.map(this.frontDomid, refs, true);
        const channel = this.evtchn.bindInterdomain(this.frontDomid, port);
        const ring: Ring = { index: q, mapping, back: backRingInit(sringAttach(mapping.buffer, ringEntrySize(abi))), channel, abi, answeredIds: [] };
        channel.onEvent(() => this.consume(ring));
        this.rings.push(ring);
      }
    } catch (e) {
      this.problems.push(`hostile backend could not map what the frontend published: ${e instanceof Error ? e.message : String(e)}`);
      this.disconnectRings();
      return;
    }
    const c = this.cfg;
    const adv = c.connectKeys['feature-max-indirect-segments'] ?? c.probeKeys['feature-max-indirect-segments'];
    this.maxIndirect = Math.min(4096, adv !== undefined && /^\s*[0-9]+\s*$/.test(adv) ? Number(adv) : c.maxIndirect);
    const keys: Record<string, string> = {
      sectors: String(this.disk.length / 512),
      info: '0',
      'sector-size': String(c.sectorSize),
      'physical-sector-size': String(c.sectorSize),
      'feature-flush-cache': c.flush ? '1' : '0',
      'feature-barrier': '0',
      'feature-discard': c.discard ? '1' : '0',
      ...(c.discard ? { 'discard-granularity': '512', 'discard-alignment': '0', 'discard-secure': c.discardSecure ? '1' : '0' } : {}),
      ...c.connectKeys,
    };
    await this.xs.transaction(async (tx) => {
      for (const [k, v] of Object.entries(keys)) await tx.write(`${this.backendPath}/${k}`, v);
      await tx.write(`${this.backendPath}/state`, String(XenbusState.Connected));
    });
    this.state = XenbusState.Connected;
    this.states.push(String(XenbusState.Connected));
    for (const r of this.rings) this.consume(r);
  }

  /** Unmaps the rings and forgets what was held on them (xen_blkif_disconnect). */
  disconnectRings(): void {
    for (const r of this.rings) {
      try { r.channel.close(); } catch { /* already closed */ }
      try { this.mapper.unmap(r.mapping); } catch (e) { this.problems.push(`unmapping a ring: ${(e as Error).message}`); }
    }
    this.rings = [];
    this.held = [];
  }

  /** `releaseLate(sector, nsect)` lets the 'late' requests inside that range be answered. */
  releaseLate(sector: number, nsect: number): void {
    for (const h of this.held) {
      if (h.action.kind === 'late' && h.seen.sector >= sector && h.seen.sector < sector + nsect) h.released = true;
    }
  }

  private consume(ring: Ring): void {
    // After a break the backend answers nothing more, so the broken ring is what the frontend
    // sees (a later honest push could otherwise repair rsp_prod before it looked).
    if (!this.rings.includes(ring) || this.stopped || this.broke !== undefined) return;
    const b = ring.back;
    for (;;) {
      while (b.reqCons !== reqProd(b.sring)) {
        if (((reqProd(b.sring) - b.rspProdPvt) >>> 0) > b.sring.size) {
          // After a break our own rsp_prod_pvt may be anywhere: nothing to hold against the frontend.
          if (this.broke !== undefined) return;
          this.problems.push(`frontend published req_prod ${reqProd(b.sring)} more than a ring ahead of our responses ${b.rspProdPvt}`);
          return;
        }
        const off = nextRequestSlot(b);
        const req = newBlkifRequest();
        const err = decodeRequest(ring.abi, b.sring.bytes, off, req, this.maxIndirect);
        const nsect = this.sectorsOf(req, err === undefined);
        const seen: SeenRequest = { queue: ring.index, idLo: req.idLo, idHi: req.idHi, op: req.operation, dataOp: req.dataOp, sector: req.sectorNumber, nsect };
        this.seen++;
        const action: Action = err !== undefined
          ? { kind: 'status', status: blkifErrorStatus(err), turns: 0 }
          : this.policy(seen);
        // After a break our own spurious responses may have overwritten published requests.
        if (err !== undefined && this.broke === undefined) this.problems.push(`frontend sent a malformed request: ${err.message}${process.env.XENBLK_FUZZ_DEBUG ? ` (slot ${(b.reqCons - 1) >>> 0}, req_prod ${reqProd(b.sring)}, rsp_prod_pvt ${b.rspProdPvt}, broke ${this.broke})` : ""}`);
        if (action.kind === 'never') continue;
        this.held.push({ ring, seen, req, action, turns: action.kind === 'late' ? 0 : action.turns, released: false });
      }
      Atomics.store(b.sring.idx, 1, (b.reqCons + 1) >>> 0);
      if (reqProd(b.sring) === b.reqCons) break;
    }
    this.flushHeld();
  }

  /** Total 512-byte sectors of a read/write (the indirect pages are read here, once). */
  private sectorsOf(req: BlkifRequest, ok: boolean): number {
    if (!ok) return 0;
    if (req.operation === BLKIF_OP_DISCARD) return req.nrSectors;
    if (req.operation === BLKIF_OP_INDIRECT) {
      const refs = Array.from(req.indirectGrefs.subarray(0, req.nrIndirectPages));
      try {
        const m = this.mapper.map(this.frontDomid, refs, false);
        try {
          const e = decodeIndirectSegments(Buffer.from(m.buffer.subarray(0, req.nrSegments * 8)), req);
          if (e !== undefined) this.problems.push(`frontend sent a bad indirect segment: ${e.message}`);
        } finally {
          this.mapper.unmap(m);
        }
      } catch (e) {
        this.problems.push(`frontend's indirect pages cannot be mapped: ${(e as Error).message}`);
      }
    }
    let n = 0;
    for (let i = 0; i < req.nrSegments; i++) n += req.segLast[i]! - req.segFirst[i]! + 1;
    return n;
  }

  private tick(): void {
    if (this.stopped || this.ticker !== null) return;
    this.ticker = setImmediate(() => {
      this.ticker = null;
      if (this.stopped) return;
      for (const h of this.held) if (h.turns > 0) h.turns--;
      this.flushHeld();
      this.tick();
    });
  }

  /** Answers every held request whose time has come. */
  private flushHeld(): void {
    if (this.broke !== undefined) return;
    const touched = new Set<Ring>();
    const keep: Held[] = [];
    for (const h of this.held) {
      if (!this.rings.includes(h.ring)) continue;
      const due = h.action.kind === 'late' ? h.released : h.turns === 0;
      if (!due) {
        keep.push(h);
        continue;
      }
      this.answer(h);
      touched.add(h.ring);
    }
    this.held = keep;
    for (const r of touched) if (pushResponsesAndCheckNotify(r.back)) r.channel.notify();
    if (this.pendingBreak !== undefined && this.rings.length > 0) this.doBreak(this.pendingBreak);
  }

  private answer(h: Held): void {
    const rsp: BlkifResponse = { idLo: h.req.idLo, idHi: h.req.idHi, operation: h.req.dataOp & 0xff, status: BLKIF_RSP_OKAY };
    if (h.action.kind === 'status') rsp.status = h.action.status;
    else if (h.action.kind === 'late') {
      this.poison(h);
      rsp.status = BLKIF_RSP_OKAY;
    } else rsp.status = this.perform(h.req);
    encodeResponse(h.ring.abi, h.ring.mapping.buffer, nextResponseOffset(h.ring.back), rsp);
    h.ring.answeredIds.push({ lo: rsp.idLo, hi: rsp.idHi });
    if (h.ring.answeredIds.length > 64) h.ring.answeredIds.shift();
    this.responses++;
  }

  /** Maps each data segment of `req` and calls `f(page, first, last)`. */
  private eachSegment(req: BlkifRequest, writable: boolean, f: (buf: Buffer, first: number, last: number) => void): boolean {
    for (let i = 0; i < req.nrSegments; i++) {
      let m: MappedGrants;
      try {
        m = this.mapper.map(this.frontDomid, [req.segGref[i]!], writable);
      } catch (e) {
        this.problems.push(`frontend's segment ref ${req.segGref[i]} cannot be mapped ${writable ? 'writable' : 'read-only'}: ${(e as Error).message}`);
        return false;
      }
      try {
        f(m.buffer, req.segFirst[i]!, req.segLast[i]!);
      } finally {
        this.mapper.unmap(m);
      }
    }
    return true;
  }

  /** An honest answer: the I/O done on the disk. */
  private perform(req: BlkifRequest): number {
    const op = req.dataOp;
    const c = this.cfg;
    switch (op) {
      case BLKIF_OP_READ:
      case BLKIF_OP_WRITE: {
        let pos = req.sectorNumber * 512;
        let total = 0;
        for (let i = 0; i < req.nrSegments; i++) total += (req.segLast[i]! - req.segFirst[i]! + 1) * 512;
        if (pos + total > this.disk.length) return BLKIF_RSP_ERROR;
        const ok = this.eachSegment(req, op === BLKIF_OP_READ, (buf, first, last) => {
          const len = (last - first + 1) * 512;
          if (op === BLKIF_OP_READ) this.disk.copy(buf, first * 512, pos, pos + len);
          else buf.copy(this.disk, pos, first * 512, first * 512 + len);
          pos += len;
        });
        return ok ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
      }
      case BLKIF_OP_FLUSH_DISKCACHE:
        return c.flush ? BLKIF_RSP_OKAY : BLKIF_RSP_EOPNOTSUPP;
      case BLKIF_OP_WRITE_BARRIER:
        return BLKIF_RSP_EOPNOTSUPP;
      case BLKIF_OP_DISCARD: {
        if (!c.discard) return BLKIF_RSP_EOPNOTSUPP;
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

  /** A late answer: whatever the pages get, the frontend gave this request up and must ignore it. */
  private poison(h: Held): void {
    if (h.req.dataOp !== BLKIF_OP_READ) return;
    this.eachSegment(h.req, true, (buf, first, last) => buf.fill(0xdd, first * 512, (last + 1) * 512));
  }

  /** Breaks the ring protocol once, on the first ring. */
  private doBreak(kind: BreakKind): void {
    this.pendingBreak = undefined;
    this.broke = kind;
    const r = this.rings[0]!;
    const b = r.back;
    const size = b.sring.size;
    const rsp: BlkifResponse = { idLo: 0, idHi: 0, operation: BLKIF_OP_READ, status: BLKIF_RSP_OKAY };
    const waiting = this.held.filter((h) => h.ring === r);
    switch (kind) {
      case 'duplicate':
      case 'old-generation': {
        const old = r.answeredIds[r.answeredIds.length - 1];
        if (old === undefined) {
          rsp.idLo = size + 1;
        } else {
          rsp.idLo = old.lo;
          rsp.idHi = kind === 'duplicate' ? old.hi : (old.hi - 1) >>> 0;
        }
        break;
      }
      case 'id-out-of-range':
        rsp.idLo = size + Math.floor(this.rng() * 1e9);
        rsp.idHi = Math.floor(this.rng() * 4294967296) >>> 0;
        break;
      case 'idle-slot': {
        const busy = new Set(waiting.map((h) => h.req.idLo));
        let id = Math.floor(this.rng() * size);
        for (let k = 0; k < size && busy.has(id); k++) id = (id + 1) % size;
        rsp.idLo = busy.has(id) ? size : id;
        rsp.idHi = Math.floor(this.rng() * 4294967296) >>> 0;
        break;
      }
      case 'wrong-op': {
        const h = waiting[0];
        if (h !== undefined) {
          this.held = this.held.filter((x) => x !== h);
          rsp.idLo = h.req.idLo;
          rsp.idHi = h.req.idHi;
          rsp.operation = (h.req.dataOp + 1 + Math.floor(this.rng() * 5)) % 7;
          if (h.req.dataOp === BLKIF_OP_WRITE && rsp.operation === BLKIF_OP_WRITE) rsp.operation = BLKIF_OP_READ;
        } else {
          rsp.idLo = size + 3;
        }
        break;
      }
      case 'rsp-prod-ahead':
        Atomics.store(b.sring.idx, 2, (b.rspProdPvt + size + 1 + Math.floor(this.rng() * 1000)) >>> 0);
        r.channel.notify();
        return;
      case 'rsp-prod-behind':
        // Behind what the frontend already consumed (rsp_event - 1 is its rsp_cons at its last
        // check, or less): merely fewer responses than before would not be detectable.
        Atomics.store(b.sring.idx, 2, (Atomics.load(b.sring.idx, 3) - 2 - Math.floor(this.rng() * 8)) >>> 0);
        r.channel.notify();
        return;
      case 'unwritten-slots': {
        // rsp_prod over slots we never wrote: they hold old responses or the requests
        // themselves, never an answer to a request in flight now.
        const k = 1 + Math.floor(this.rng() * Math.max(1, size - waiting.length - 1));
        b.rspProdPvt = (b.rspProdPvt + k) >>> 0;
        Atomics.store(b.sring.idx, 2, b.rspProdPvt);
        r.channel.notify();
        return;
      }
    }
    encodeResponse(r.abi, r.mapping.buffer, nextResponseOffset(b), rsp);
    pushResponsesAndCheckNotify(b);
    r.channel.notify();
  }

  /** `stop()` ends the watch loop and the ticker and unmaps everything. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.ticker !== null) clearImmediate(this.ticker);
    this.ticker = null;
    const w = this.watch;
    this.watch = null;
    if (w !== null) await w.close().catch(() => {});
    await this.loop;
    this.disconnectRings();
  }
}

export { BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY };
