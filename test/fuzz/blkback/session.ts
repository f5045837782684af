// One fuzz session in process: a malicious frontend (this file) and xenblk's RingService for one
// ring, on the memory platform (test/support/memory-host.ts), over a RAM disk. The frontend
// owns the ring and its grant table and publishes batches ("rings"); after each batch every
// oracle is checked:
//   - every request published is answered exactly once (a hang detector bounds the wait), with
//     its own id, the operation blkif.h says, a status among those its flaw allows, and zero
//     padding (XSA-216);
//   - a well-formed read returns the model's data, a well-formed write lands (the model follows);
//     a refused read leaves its target pages untouched;
//   - the backend never maps what was not granted to it that way, nor a ref no request of the
//     batch named (AuditedMapper), and never writes into pages it may only read (shadow copies);
//   - nothing stays mapped but the ring and the persistent grants; nothing stays in flight; the
//     disk was never called outside what blkback validated (FuzzDisk);
//   - the disk equals the model (checked every few batches and at the end).
// Batch modes: clean, race (requests and indirect pages rewritten while the backend maps and
// does I/O: the double-fetch window), storm (event storms), jump (req_prod past the ring:
// the ring must halt, answering nothing more), replay (req_prod a whole ring ahead over stale
// entries), chaos (garbage entries; weaker oracle, then the model is resynchronised) and
// teardown (the frontend goes away with requests in flight: close() drains and releases all).
import { createMemoryPlatform } from '../../support/memory-host.ts';
import type { MemoryPlatform } from '../../support/memory-host.ts';
import type { SharedPages } from '../../../gnttab/gnttab.ts';
import type { EventChannel } from '../../../evtchn/evtchn.ts';
import { BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, ringEntrySize } from '../../../protocol/blkif.ts';
import { entryOffset, frontRingInit, nextRequestOffset, reqProd, rspProd, sringInit } from '../../../protocol/ring.ts';
import type { FrontRing, Sring } from '../../../protocol/ring.ts';
import { createRamDisk } from '../../../lib/backends/ram.ts';
import { RingService } from '../../../lib/blkback/ring-service.ts';
import type { RingServiceError, VbdGeometry } from '../../../lib/blkback/ring-service.ts';
import { VbdStats } from '../../../lib/blkback/stats.ts';
import { Rng } from '../fuzzer.ts';
import { AuditedMapper } from './audited-mapper.ts';
import { FuzzDisk } from './fuzz-disk.ts';
import { GrantPools, SliceAllocator } from './grant-pools.ts';
import type { Page } from './grant-pools.ts';
import { BatchPlanner, applyToModel } from './generate.ts';
import type { Planned, SessionConfig } from './generate.ts';
import { entryLayout, rd16, rd32, writeEntry, wr32 } from './raw-entry.ts';
import type { EntryLayout } from './raw-entry.ts';

export const FRONTEND = 5;
export const BACKEND = 0;
export const OTHER = 9;

export type BatchMode = 'clean' | 'race' | 'storm' | 'jump' | 'replay' | 'chaos' | 'teardown';

/** Counters a session adds to the run's. */
export interface SessionCounters {
  requests: number;
  wellFormed: number;
  flawed: number;
  chaos: number;
  ok: number;
  error: number;
  eopnotsupp: number;
  halts: number;
  teardowns: number;
  rewrites: number;
  storms: number;
  maps: number;
  /** Grant copy calls the backend made. */
  copies: number;
  failedMaps: number;
  reconnects: number;
}

interface Outstanding {
  readonly plan: Planned;
  readonly slot: number;
  readonly rspOp: number;
  status: number | undefined;
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
/** A hang detector on a loaded machine, not a measurement. */
const BATCH_DEADLINE_MS = 20_000;
const DEFAULT_MAX_PERSISTENT = 64;

/** `randomConfig(rng)` is a backend configuration for one session. */
export function randomConfig(rng: Rng): SessionConfig {
  const readonly = rng.chance(0.1);
  const sectorSize = rng.chance(0.15) ? 4096 : 512;
  return {
    abi: rng.chance(0.25) ? 'x86_32' : 'x86_64',
    ringPageOrder: rng.weighted([[60, 0], [20, 1], [12, 2], [5, 3], [3, 4]]),
    persistent: rng.chance(0.5),
    maxIndirect: rng.pick([0, 8, 32, 256, 256, 1024, 4096]),
    sectorSize,
    readonly,
    sectors: rng.pick([2048, 4096, 8192]),
    flush: rng.chance(0.5),
    discard: !readonly && rng.chance(0.8),
    discardSecure: rng.chance(0.5),
    maxInFlight: rng.chance(0.2) ? 1 + rng.int(4) : undefined,
    grantCopy: rng.chance(0.25),
  };
}

export function describeConfig(c: SessionConfig): string {
  return `${c.abi} order ${c.ringPageOrder} ${c.grantCopy ? 'grant-copy' : c.persistent ? 'persistent' : 'non-persistent'} indirect ${c.maxIndirect} ` +
    `${c.sectorSize}B ${c.readonly ? 'ro ' : ''}${c.sectors} sectors flush ${c.flush ? 1 : 0} discard ${c.discard ? 1 : 0} ` +
    `in-flight ${c.maxInFlight ?? 'ring'}`;
}

/** One frontend/backend pair over one ring, reconnected (fresh ring service) after a halt or chaos. */
export class InProcessSession {
  readonly counters: SessionCounters = {
    requests: 0, wellFormed: 0, flawed: 0, chaos: 0, ok: 0, error: 0, eopnotsupp: 0, halts: 0, teardowns: 0, rewrites: 0, storms: 0,
    maps: 0, copies: 0, failedMaps: 0, reconnects: 0,
  };
  private readonly plat: MemoryPlatform;
  readonly pools: GrantPools;
  private readonly slices: SliceAllocator;
  private readonly mapper: AuditedMapper;
  readonly disk: FuzzDisk;
  /** What the disk must hold. */
  private readonly model: Buffer;
  private readonly noise: Buffer;
  private readonly L: EntryLayout;
  private readonly ringPages: SharedPages;
  private readonly stats = new VbdStats();
  private sring!: Sring;
  private front!: FrontRing;
  private port!: EventChannel;
  private svc!: RingService;
  private halted: RingServiceError[] = [];
  /** Problems found by handlers that run outside a batch's own code (events, hooks). */
  private readonly async: string[] = [];
  private readonly outstanding = new Map<number, Outstanding>();
  private expectAny = false;
  private answered = 0;
  private extra = 0;
  private nextIdLo = 1;
  private closed = false;
  /** The byte this batch's read targets were filled with. */
  private sentinel = 0;

  constructor(readonly cfg: SessionConfig, seed: number) {
    const rng = new Rng(seed);
    this.plat = createMemoryPlatform({ ramPages: 700 });
    this.pools = new GrantPools(this.plat.sharer(FRONTEND), BACKEND, OTHER);
    this.ringPages = this.pools.grant(BACKEND, 1 << cfg.ringPageOrder, true);
    // The third domain's grants to the backend get numbers past every ref of ours, so using
    // one in our requests names a grant that exists, but not in our table.
    const other = this.plat.sharer(OTHER);
    const pad = other.share(BACKEND, this.pools.maxRef + 8, true);
    other.endAccess(pad);
    for (let i = 0; i < 4; i++) this.pools.othersRefs.push(other.share(BACKEND, 1, true).refs[0]!);
    this.slices = new SliceAllocator(this.pools.rw);
    this.L = entryLayout(cfg.abi);
    this.noise = Buffer.from(rng.bytes(64 * 1024));
    const ram = createRamDisk({ size: cfg.sectors * 512, sectorSize: cfg.sectorSize, readonly: cfg.readonly });
    for (let o = 0; o < ram.data.length; o += this.noise.length) this.noise.copy(ram.data, o, 0, Math.min(this.noise.length, ram.data.length - o));
    this.model = Buffer.from(ram.data);
    this.disk = new FuzzDisk(ram, { flush: cfg.flush, discard: true, discardSecure: cfg.discardSecure });
    const jitter = new Rng(seed ^ 0x5a5a5a5a);
    this.disk.delay = () => (jitter.chance(0.3) ? jitter.int(4) : 0);
    this.mapper = new AuditedMapper(this.plat.mapper(BACKEND), FRONTEND, this.pools);
    this.connect();
  }

  /** Sets up a fresh ring and a fresh RingService on it (the backend's connect_ring + connect). */
  private connect(): void {
    const bytes = new Uint8Array(this.ringPages.buffer.buffer, this.ringPages.buffer.byteOffset, this.ringPages.buffer.byteLength);
    // A fresh ring has no stale entries (a replay must not find garbage from a chaos batch).
    bytes.fill(0);
    this.sring = sringInit(bytes, ringEntrySize(this.cfg.abi));
    this.front = frontRingInit(this.sring);
    this.port = this.plat.evtchn(FRONTEND).allocUnbound(BACKEND);
    this.port.onEvent(() => this.consume());
    this.mapper.named = undefined;
    const ring = this.mapper.map(FRONTEND, this.ringPages.refs, true);
    const inner = this.plat.evtchn(BACKEND).bindInterdomain(FRONTEND, this.port.localPort);
    // The platform calls event handlers from setImmediate: a throw there would take the process
    // down; here it is a finding (the backend must never throw out of its event handler).
    const channel: EventChannel = {
      localPort: inner.localPort,
      remoteDomid: inner.remoteDomid,
      notify: () => inner.notify(),
      onEvent: (h) => inner.onEvent(() => {
        try {
          h();
        } catch (e) {
          this.async.push(`the backend's event handler threw: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
        }
      }),
      close: () => inner.close(),
    };
    const c = this.cfg;
    const vbd: VbdGeometry = { sectors: c.sectors, sectorSize: c.sectorSize, readonly: c.readonly, flush: c.flush, discard: c.discard, discardSecure: c.discardSecure };
    this.halted = [];
    this.svc = new RingService({
      abi: c.abi, ring, channel, mapper: this.mapper, frontendDomid: FRONTEND, backing: this.disk, vbd, stats: this.stats,
      persistent: c.persistent, grantCopy: c.grantCopy, maxPersistentGrants: DEFAULT_MAX_PERSISTENT, maxIndirectSegments: c.maxIndirect,
      maxInFlight: c.maxInFlight, onHalt: (e) => this.halted.push(e),
    });
    this.svc.start();
  }

  /** Tears the ring service down (drained, everything released: checked) and connects a fresh one. */
  private async reconnect(problems: string[]): Promise<void> {
    await this.release(problems);
    if (problems.length === 0) {
      this.connect();
      this.counters.reconnects++;
    }
  }

  private async release(problems: string[]): Promise<void> {
    await this.svc.close();
    this.port.close();
    if (this.mapper.live.size !== 0) problems.push(`after close the backend still maps ${this.mapper.mappedPages()} pages (${[...this.mapper.live.values()].map((l) => l.refs.join(',')).join(' / ')})`);
    const u = this.plat.usage(BACKEND);
    if (u.mappings !== 0 || u.ports !== 0) problems.push(`after close the platform sees the backend holding ${u.mappings} mappings and ${u.ports} ports`);
    if (this.stats.inFlight !== 0) problems.push(`after close stats.in_flight is ${this.stats.inFlight}`);
  }

  /** The frontend's response handler: consume, check each answer as it is read. */
  private consume(): void {
    const s = this.sring;
    const f = this.front;
    const L = this.L;
    for (;;) {
      const rp = rspProd(s);
      while (f.rspCons !== rp) {
        if (((rp - f.rspCons) >>> 0) > s.size) {
          this.async.push(`backend published rsp_prod ${rp}, more than a ring ahead of rsp_cons ${f.rspCons}`);
          f.rspCons = rp;
          break;
        }
        const off = entryOffset(s, f.rspCons);
        f.rspCons = (f.rspCons + 1) >>> 0;
        const b = s.bytes;
        for (const p of L.rspPadding) {
          if (b[off + p] !== 0) this.async.push(`response at slot ${(f.rspCons - 1) >>> 0} has padding byte ${p} = 0x${b[off + p]!.toString(16)} (XSA-216: must be zero)`);
        }
        const idLo = rd32(b, off);
        const idHi = rd32(b, off + 4);
        const op = b[off + L.rspOperation]!;
        const status = (rd16(b, off + L.rspStatus) << 16) >> 16;
        if (status !== BLKIF_RSP_OKAY && status !== BLKIF_RSP_ERROR && status !== BLKIF_RSP_EOPNOTSUPP) {
          this.async.push(`response id ${idLo}:${idHi} has status ${status}, which blkif.h does not define`);
        }
        const o = this.outstanding.get(idLo);
        if (o === undefined || o.plan.raw.idHi !== idHi) {
          if (this.expectAny) this.answered++;
          else this.async.push(`response with id ${idLo}:${idHi}, which no outstanding request has (op ${op}, status ${status})`);
          this.extra++;
          continue;
        }
        if (o.status !== undefined) {
          this.async.push(`second response to request ${idLo} (${o.plan.label}): status ${status} after ${o.status}`);
          continue;
        }
        o.status = status;
        this.answered++;
        if (op !== o.rspOp) this.async.push(`response to ${o.plan.label} (id ${idLo}) has operation ${op}, want ${o.rspOp}`);
        if (!o.plan.expect.includes(status)) {
          this.async.push(`${o.plan.label} (id ${idLo}) answered ${statusName(status)}, want ${o.plan.expect.map(statusName).join(' or ')}`);
        }
      }
      Atomics.store(s.idx, 3, (f.rspCons + 1) >>> 0);
      if (rspProd(s) === f.rspCons) return;
    }
  }

  /** Publishes up to index `to` (a u32), notifying as ring.h says, plus `extra` spurious notifies. */
  private publish(to: number, extra: number): void {
    const s = this.sring;
    const old = Atomics.load(s.idx, 0);
    Atomics.store(s.idx, 0, to >>> 0);
    const ev = Atomics.load(s.idx, 1);
    if ((((to - ev) >>> 0) < ((to - old) >>> 0)) || extra > 0) this.port.notify();
    for (let i = 1; i < extra; i++) this.port.notify();
  }

  /** Waits until `done()` or the deadline; false on a hang. */
  private async settle(done: () => boolean, storm: boolean): Promise<boolean> {
    const deadline = Date.now() + BATCH_DEADLINE_MS;
    let spins = 0;
    while (!done()) {
      if (storm) this.port.notify();
      await turn();
      if (++spins % 256 === 0 && Date.now() > deadline) return false;
    }
    return true;
  }

  /** `batch(rng, mode)` publishes one batch and checks every oracle; the problems found (empty: fine). */
  async batch(rng: Rng, mode: BatchMode): Promise<string[]> {
    const problems: string[] = [];
    const c = this.cfg;
    const s = this.sring;
    if (mode === 'jump') return this.jump(rng);
    if (mode === 'replay') return this.replay(rng);

    const sentinel = 1 + rng.int(255);
    this.sentinel = sentinel;
    const planner = new BatchPlanner(rng, c, this.pools, this.slices, this.noise, sentinel, () => {
      const id = this.nextIdLo;
      this.nextIdLo = (this.nextIdLo + 1) >>> 0 || 1;
      return id;
    });
    const room = s.size;
    // Usually a few requests, now and then the whole ring (up to 64 entries).
    const n = 1 + rng.int(Math.min(room, rng.chance(0.05) ? 64 : 8));
    const plans: Planned[] = [];
    for (let i = 0; i < n; i++) {
      if (mode === 'chaos') plans.push(rng.chance(0.7) ? planner.chaos(this.ringPages.refs) : planner.flawed());
      else plans.push((rng.chance(0.72) ? planner.wellFormed() : undefined) ?? planner.flawed());
    }
    planner.finish();
    const fill = rng.chance(0.2) ? rng.int(256) : 0;
    this.outstanding.clear();
    this.expectAny = false;
    this.answered = 0;
    this.extra = 0;
    const first = this.front.reqProdPvt;
    const names = new Set<number>();
    for (const p of plans) {
      const slot = this.front.reqProdPvt;
      const off = nextRequestOffset(this.front);
      writeEntry(this.L, s.bytes, off, p.raw, fill);
      const opByte = s.bytes[off]!;
      const rspOp = opByte === 6 ? s.bytes[off + 1]! : opByte;
      if (p.rspOp !== -1 && p.rspOp !== rspOp) problems.push(`fuzzer bug: ${p.label} planned response op ${p.rspOp}, entry says ${rspOp}`);
      this.outstanding.set(p.raw.idLo, { plan: p, slot, rspOp, status: undefined });
      for (const r of p.names) names.add(r);
      this.counters.requests++;
      if (p.rspOp === -1) this.counters.chaos++;
      else if (p.expect.length === 1 && p.expect[0] === BLKIF_RSP_OKAY && p.effect !== 'none') this.counters.wellFormed++;
      else this.counters.flawed++;
    }
    this.mapper.named = mode === 'chaos' ? undefined : names;
    const mapsBefore = this.mapper.maps;
    const failedBefore = this.mapper.failedMaps;
    const copiesBefore = this.mapper.copies;

    // Race: rewrite what the backend already copied, each time it maps or does I/O. A request
    // is copied when it is consumed (index below req_cons); its indirect pages are copied later
    // in the same synchronous dispatch, after the map this hook may be running in, so they are
    // rewritten only once a later request was consumed. The backend must act on its copies
    // only. Slots already holding responses (below rsp_prod_pvt) are left alone.
    let rewrites = 0;
    const indirectOwner = new Map<number, number>();
    for (const [k, p] of plans.entries()) for (const pg of p.indirect) indirectOwner.set(pg.ref, (first + k) >>> 0);
    const indirectPages = new Map<number, Page>();
    for (const p of plans) for (const pg of p.indirect) indirectPages.set(pg.ref, pg);
    if (mode === 'race') {
      const consumed = (i: number): boolean => ((i - first) >>> 0) + 1 < ((this.svc.back.reqCons - first) >>> 0);
      const rewrite = (): void => {
        const b = this.svc.back;
        for (let i = b.rspProdPvt; i !== b.reqCons; i = (i + 1) >>> 0) {
          if (((i - first) >>> 0) >= plans.length) continue;
          this.scribble(rng, entryOffset(s, i));
          rewrites++;
        }
        for (const [ref, owner] of indirectOwner) {
          if (!consumed(owner)) continue;
          const pg = indirectPages.get(ref)!;
          for (let k = 0; k < 64; k++) {
            const o = rng.int(512) * 8;
            wr32(pg.buf, o, rng.pick(this.pools.decoy).ref);
            pg.buf[o + 4] = rng.int(8);
            pg.buf[o + 5] = 7;
          }
          pg.shadow?.set(pg.buf);
          rewrites++;
        }
      };
      this.mapper.beforeMap = rewrite;
      this.disk.onIo = rewrite;
    }

    // Publish in one go or in a few steps, with or without spurious events.
    const storm = mode === 'storm';
    const steps = rng.chance(0.3) ? 1 + rng.int(3) : 1;
    for (let k = 1; k <= steps; k++) {
      const to = k === steps ? this.front.reqProdPvt : (first + Math.floor((plans.length * k) / steps)) >>> 0;
      this.publish(to, storm ? 1 + rng.int(50) : rng.chance(0.05) ? 1 : 0);
      if (k < steps) for (let t = rng.int(3); t >= 0; t--) await turn();
    }
    if (storm) this.counters.storms++;
    if (mode === 'teardown') return this.teardown(rng, problems);
    // Answers with an id nobody has count too: a backend that mangles ids must not look hung.
    const ok = await this.settle(() => this.answered + this.extra >= plans.length && this.svc.inFlight === 0, storm);
    this.mapper.beforeMap = undefined;
    this.mapper.afterUnmap = undefined;
    this.disk.onIo = undefined;
    this.counters.rewrites += rewrites;
    // A few more turns: late or duplicate answers would show up now.
    for (let t = 0; t < 3; t++) await turn();
    this.counters.maps += this.mapper.maps - mapsBefore;
    this.counters.failedMaps += this.mapper.failedMaps - failedBefore;
    this.counters.copies += this.mapper.copies - copiesBefore;
    this.mapper.named = undefined;

    problems.push(...this.async.splice(0));
    if (!ok) {
      const missing = [...this.outstanding.values()].filter((o) => o.status === undefined);
      problems.push(`backend hung: ${missing.length} of ${plans.length} requests unanswered after ${BATCH_DEADLINE_MS} ms ` +
        `(req_prod ${reqProd(s)}, rsp_prod ${rspProd(s)}, rsp_cons ${this.front.rspCons}, in flight ${this.svc.inFlight}, halted ${this.svc.isHalted}): ` +
        missing.slice(0, 3).map((o) => o.plan.label).join('; '));
    }
    if (this.halted.length > 0) problems.push(`ring halted on a well-formed ring: ${this.halted[0]!.message}`);
    problems.push(...this.mapperProblems());
    problems.push(...this.disk.misuse.splice(0));
    this.checkHeld(problems);
    this.checkData(mode, problems);
    for (const o of this.outstanding.values()) {
      if (o.status === BLKIF_RSP_OKAY) this.counters.ok++;
      else if (o.status === BLKIF_RSP_ERROR) this.counters.error++;
      else if (o.status === BLKIF_RSP_EOPNOTSUPP) this.counters.eopnotsupp++;
    }
    if (mode === 'chaos' && problems.length === 0) {
      // Garbage may have written anywhere on the disk: take the disk as the new truth.
      this.disk.ram.data.copy(this.model);
      await this.reconnect(problems);
    }
    return problems;
  }

  /**
   * The frontend goes away with requests in flight: the ring service is closed a few turns
   * after the batch was published. close() must drain what is in flight (no hang), answer
   * nothing malformed meanwhile, and release every mapping and the channel; pages the backend
   * may only read stay untouched. What landed on the disk is then taken as the truth.
   */
  private async teardown(rng: Rng, problems: string[]): Promise<string[]> {
    for (let t = rng.int(4); t > 0; t--) await turn();
    this.counters.teardowns++;
    const inFlight = this.svc.inFlight;
    let timer: NodeJS.Timeout | undefined;
    const released = await Promise.race([
      this.release(problems).then(() => true),
      new Promise<boolean>((r) => { timer = setTimeout(() => r(false), BATCH_DEADLINE_MS); }),
    ]);
    clearTimeout(timer);
    for (let t = 0; t < 3; t++) await turn();
    problems.push(...this.async.splice(0));
    if (!released) problems.push(`closing the ring with ${inFlight} requests in flight did not finish in ${BATCH_DEADLINE_MS} ms`);
    problems.push(...this.mapperProblems(), ...this.disk.misuse.splice(0));
    for (const pg of [...this.pools.ro, ...this.pools.ind, ...this.pools.src]) {
      if (pg.shadow !== undefined && !pg.buf.equals(pg.shadow)) problems.push(`the backend wrote into page ref ${pg.ref} (${pg.pool} pool) it may only read`);
    }
    this.mapper.beforeMap = undefined;
    this.mapper.afterUnmap = undefined;
    this.disk.onIo = undefined;
    this.disk.ram.data.copy(this.model);
    if (problems.length === 0) {
      this.connect();
      this.counters.reconnects++;
    }
    return problems;
  }

  /** Rewrites a consumed entry: decoy refs, another op, sector and count, a different id. */
  private scribble(rng: Rng, off: number): void {
    const b = this.sring.bytes;
    const L = this.L;
    b[off] = rng.int(7);
    b[off + 1] = rng.int(12);
    wr32(b, off + L.id, rng.u32());
    wr32(b, off + L.rwSector, rng.int(this.cfg.sectors));
    for (let i = 0; i < 11; i++) {
      const o = off + L.rwSeg + 8 * i;
      if (o + 8 > off + L.size) break;
      wr32(b, o, rng.pick(this.pools.decoy).ref);
      b[o + 4] = 0;
      b[o + 5] = 7;
    }
  }

  private mapperProblems(): string[] {
    return this.mapper.violations.splice(0);
  }

  /**
   * Nothing but the ring and the persistent grants may stay mapped between batches. With
   * persistent grants and indirect requests, indirect descriptor pages are cached too (Linux
   * maps them through its persistent tree), in a cache of their own bounded by the persistent
   * limit and by what the requests in flight can use (8 pages each).
   */
  private checkHeld(problems: string[]): void {
    const c = this.cfg;
    const ringPages = 1 << c.ringPageOrder;
    const held = this.mapper.mappedPages();
    const persistent = this.svc.persistentGrants;
    const inFlight = Math.min(c.maxInFlight ?? this.sring.size, this.sring.size);
    const indirectBound = c.persistent && !c.grantCopy && c.maxIndirect > 0 ? Math.max(1, Math.min(DEFAULT_MAX_PERSISTENT, inFlight * 8)) : 0;
    const beyond = held - ringPages - persistent;
    if (beyond < 0 || beyond > indirectBound) {
      problems.push(`between batches the backend maps ${held} pages: ring ${ringPages} + persistent ${persistent}` +
        `${indirectBound > 0 ? ` + up to ${indirectBound} cached indirect pages` : ''} expected`);
    }
    if (persistent > DEFAULT_MAX_PERSISTENT) problems.push(`the persistent grant cache holds ${persistent} grants, over its bound ${DEFAULT_MAX_PERSISTENT}`);
    if (this.svc.inFlight !== 0 || this.stats.inFlight !== 0) problems.push(`between batches ${this.svc.inFlight} requests are in flight (stats ${this.stats.inFlight})`);
  }

  private checkData(mode: BatchMode, problems: string[]): void {
    const model = this.model;
    for (const o of this.outstanding.values()) {
      const p = o.plan;
      if (p.effect === 'read') {
        let pos = p.sector * 512;
        for (const [i, sl] of p.slices.entries()) {
          const a = sl.first * 512;
          const len = (sl.last - sl.first + 1) * 512;
          if (o.status === BLKIF_RSP_OKAY) {
            if (model.compare(sl.page.buf, a, a + len, pos, pos + len) !== 0) {
              problems.push(`${p.label}: seg ${i} (ref ${sl.page.ref}) holds ${describeDiff(sl.page.buf, a, model, pos, len)} after an OKAY read`);
              break;
            }
          } else if (!allBytes(sl.page.buf, a, len, this.sentinel)) {
            // Grant copy: the data reaches the guest after the read, one piece after another, so
            // a read refused at a later segment (a read-only grant) has filled the earlier ones
            // already, with the disk's data; nothing else may be there.
            if (this.cfg.grantCopy && model.compare(sl.page.buf, a, a + len, pos, pos + len) === 0) {
              pos += len;
              continue;
            }
            problems.push(`${p.label}: answered ${statusName(o.status ?? 0)} but wrote ${this.cfg.grantCopy ? 'other than the disk\'s data ' : ''}into its target seg ${i} (ref ${sl.page.ref})`);
            break;
          }
          pos += len;
        }
      }
    }
    // Pages the backend may only read must hold what the frontend wrote (sources, read-only
    // grants, indirect descriptors); in chaos batches writable source pages may be written.
    for (const pg of [...this.pools.ro, ...this.pools.ind, ...(mode === 'chaos' ? [] : this.pools.src)]) {
      if (pg.shadow !== undefined && !pg.buf.equals(pg.shadow)) {
        problems.push(`the backend wrote into ${pg.readonly ? 'read-only' : 'source'} page ref ${pg.ref} (${pg.pool} pool)`);
        pg.shadow.set(pg.buf);
      }
    }
    if (mode === 'chaos') for (const pg of this.pools.src) pg.shadow!.set(pg.buf);
    // The model follows what succeeded.
    for (const o of this.outstanding.values()) {
      if (o.status === BLKIF_RSP_OKAY) applyToModel(model, o.plan);
    }
  }

  /** `checkDisk()` compares the whole disk with the model. */
  checkDisk(): string | undefined {
    const d = this.disk.ram.data;
    if (d.equals(this.model)) return undefined;
    let i = 0;
    while (d[i] === this.model[i]) i++;
    return `the disk differs from the model at byte ${i} (sector ${Math.floor(i / 512)}): 0x${d[i]!.toString(16)} vs 0x${this.model[i]!.toString(16)}`;
  }

  /** req_prod far past the ring: the ring halts, nothing more is answered or mapped. */
  private async jump(rng: Rng): Promise<string[]> {
    const problems: string[] = [];
    const b = this.svc.back;
    const size = this.sring.size;
    const to = rng.chance(0.5)
      ? (b.rspProdPvt + size + 1 + rng.int(rng.chance(0.5) ? 4 : 0x7fffffff)) >>> 0
      : (b.reqCons - 1 - rng.int(size)) >>> 0; // backwards: as far ahead as it gets modulo 2^32
    const maps = this.mapper.maps + this.mapper.failedMaps;
    const rp = rspProd(this.sring);
    this.outstanding.clear();
    this.expectAny = false;
    this.answered = 0;
    this.publish(to, 1 + rng.int(3));
    const ok = await this.settle(() => this.svc.isHalted, false);
    for (let t = 0; t < 3; t++) await turn();
    problems.push(...this.async.splice(0));
    if (!ok) problems.push(`req_prod ${to} with rsp_prod_pvt ${b.rspProdPvt} (ring of ${size}) did not halt the ring`);
    if (this.halted.length !== 1) problems.push(`onHalt called ${this.halted.length} times for one overflow`);
    if (rspProd(this.sring) !== rp) problems.push(`a halted ring published ${(rspProd(this.sring) - rp) >>> 0} responses`);
    if (this.mapper.maps + this.mapper.failedMaps !== maps) problems.push('a halted ring mapped grants');
    this.counters.halts++;
    // An event after the halt must not wake it.
    this.port.notify();
    await turn();
    await turn();
    if (rspProd(this.sring) !== rp) problems.push('a halted ring answered after another event');
    problems.push(...this.mapperProblems());
    this.halted = [];
    await this.reconnect(problems);
    return problems;
  }

  /** req_prod a full ring ahead over stale entries: each is served again (any answer), and the ring stays sane. */
  private async replay(rng: Rng): Promise<string[]> {
    const problems: string[] = [];
    const size = this.sring.size;
    const b = this.svc.back;
    const to = (b.rspProdPvt + size) >>> 0;
    this.outstanding.clear();
    this.expectAny = true;
    this.answered = 0;
    this.front.reqProdPvt = to;
    this.mapper.named = undefined;
    this.publish(to, 1);
    const ok = await this.settle(() => this.answered >= size && this.svc.inFlight === 0, rng.chance(0.3));
    for (let t = 0; t < 3; t++) await turn();
    problems.push(...this.async.splice(0));
    if (!ok) problems.push(`replay of ${size} stale entries: ${this.answered} answered, backend in flight ${this.svc.inFlight}`);
    if (this.halted.length > 0) problems.push(`a ring exactly full halted: ${this.halted[0]!.message}`);
    problems.push(...this.mapperProblems());
    problems.push(...this.disk.misuse.splice(0));
    if (problems.length === 0) this.checkHeld(problems);
    // Replayed writes and read-only checks: the stale entries' pages may have new content.
    for (const pg of [...this.pools.ro, ...this.pools.ind]) {
      if (pg.shadow !== undefined && !pg.buf.equals(pg.shadow)) problems.push(`the backend wrote into read-only page ref ${pg.ref} during a replay`);
    }
    for (const pg of this.pools.src) pg.shadow!.set(pg.buf);
    this.disk.ram.data.copy(this.model);
    await this.reconnect(problems);
    return problems;
  }

  /** `close()` releases everything; problems if anything stays mapped, bound or granted. */
  async close(): Promise<string[]> {
    if (this.closed) return [];
    this.closed = true;
    const problems: string[] = [];
    const d = this.checkDisk();
    if (d !== undefined) problems.push(d);
    await this.release(problems);
    problems.push(...this.async.splice(0), ...this.mapperProblems());
    this.pools.close();
    const u = this.plat.usage(FRONTEND);
    if (u.mappings !== 0) problems.push(`frontend maps ${u.mappings} pages`);
    this.mapper.close();
    return problems;
  }

  /** `describe()` is the session's configuration in one line. */
  describe(): string {
    return describeConfig(this.cfg);
  }
}

function statusName(s: number): string {
  return s === BLKIF_RSP_OKAY ? 'OKAY' : s === BLKIF_RSP_ERROR ? 'ERROR' : s === BLKIF_RSP_EOPNOTSUPP ? 'EOPNOTSUPP' : `status ${s}`;
}

function allBytes(b: Buffer, off: number, len: number, v: number): boolean {
  for (let i = off; i < off + len; i++) if (b[i] !== v) return false;
  return true;
}

function describeDiff(got: Buffer, goff: number, want: Buffer, woff: number, len: number): string {
  let i = 0;
  while (i < len && got[goff + i] === want[woff + i]) i++;
  return `0x${got[goff + i]?.toString(16)} at byte ${i} where the disk model has 0x${want[woff + i]?.toString(16)} (disk byte ${woff + i})`;
}

