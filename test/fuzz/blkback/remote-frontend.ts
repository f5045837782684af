// The blkback fuzzer's frontend against a real backend process: `xenblk serve` on the
// simulator (this process attached as the guest domain) or on real Xen (a dom0 program sharing
// pages through /dev/xen/gntalloc, test/xen/dom0/bad-frontend.ts). The frontend does
// the xenbus handshake itself (blkif.h "Frontend XenBus Nodes"), then publishes the same
// planned batches as the in-process session (generate.ts) through real shared memory and event
// channels. What differs from in process: no hooks inside the backend (no rewrite races), the
// grant checks are the platform's own (the simulator's table or Xen's maps only what was granted), and the
// disk model is checked against the image file. After each batch the backend process must be
// alive; after a req_prod jump it halts that ring, and the frontend reconnects with a fresh one
// (Closing, Closed, Initialising, as Linux blkfront does for a broken ring).
import fs from 'node:fs';
import type { SharedPages } from '../../../gnttab/gnttab.ts';
import type { EventChannel } from '../../../evtchn/evtchn.ts';
import type { Host } from '../../../lib/host/host.ts';
import { BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, ringEntrySize, VDISK_READONLY } from '../../../protocol/blkif.ts';
import { entryOffset, frontRingInit, nextRequestOffset, rspProd, sringInit } from '../../../protocol/ring.ts';
import type { FrontRing, Sring } from '../../../protocol/ring.ts';
import { XenbusState, parseXenbusState } from '../../../protocol/xenbus-state.ts';
import type { Rng } from '../fuzzer.ts';
import { GrantPools, SliceAllocator } from './grant-pools.ts';
import { BatchPlanner, applyToModel } from './generate.ts';
import type { Planned, SessionConfig } from './generate.ts';
import { entryLayout, readResponse, writeEntry } from './raw-entry.ts';
import type { EntryLayout } from './raw-entry.ts';

/** A hang detector on a loaded machine, not a measurement. */
const DEADLINE_MS = 30_000;

export type RemoteBatchMode = 'clean' | 'storm' | 'chaos' | 'jump';

interface Outstanding {
  readonly plan: Planned;
  readonly rspOp: number;
  status: number | undefined;
}

/** Our half of one vbd whose backend runs in another process (the simulator or Xen). */
export class RemoteFrontend {
  private readonly L: EntryLayout;
  private readonly slices: SliceAllocator;
  private ring: SharedPages | undefined;
  private sring!: Sring;
  private front!: FrontRing;
  private port: EventChannel | undefined;
  cfg!: SessionConfig;
  private readonly outstanding = new Map<number, Outstanding>();
  private answered = 0;
  private extra = 0;
  private readonly async: string[] = [];
  private wake: (() => void) | undefined;
  private nextIdLo = 1;
  private readonly model: Buffer;
  private sentinel = 0;
  reconnects = 0;
  /** Responses seen, by status (OKAY 0, ERROR -1, EOPNOTSUPP -2), over the whole session. */
  readonly statuses = { okay: 0, error: 0, eopnotsupp: 0 };

  constructor(
    private readonly host: Host,
    readonly pools: GrantPools,
    private readonly fe: string,
    private readonly be: string,
    private readonly image: string,
    private readonly abi: 'x86_64' | 'x86_32',
    private readonly order: number,
    private readonly noise: Buffer,
    /** The backend serves by grant copy (it was started so; a frontend cannot see it). */
    private readonly backendCopies = false,
  ) {
    this.L = entryLayout(abi);
    this.slices = new SliceAllocator(pools.rw);
    this.model = fs.readFileSync(image);
  }

  private async state(path: string): Promise<XenbusState> {
    return parseXenbusState(await this.host.xenstore.tryRead(`${path}/state`).catch(() => undefined));
  }

  /** Waits (polling: the backend may move several states between two looks) until `pred`. */
  private async waitBackend(pred: (s: XenbusState) => boolean, what: string): Promise<void> {
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      const s = await this.state(this.be);
      if (pred(s)) return;
      if (Date.now() > deadline) throw new Error(`backend never reached ${what} (it is ${s})`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** talk_to_blkback + connect: a fresh ring, Initialised, wait Connected, read the disk, Connected. */
  async connect(): Promise<void> {
    const xs = this.host.xenstore;
    await this.waitBackend((s) => s === XenbusState.InitWait, 'InitWait');
    const maxOrder = Number((await xs.tryRead(`${this.be}/max-ring-page-order`)) ?? '0');
    const order = Math.min(this.order, maxOrder);
    this.ring = this.pools.grant(0, 1 << order, true);
    const bytes = new Uint8Array(this.ring.buffer.buffer, this.ring.buffer.byteOffset, this.ring.buffer.byteLength);
    this.sring = sringInit(bytes, ringEntrySize(this.abi));
    this.front = frontRingInit(this.sring);
    this.port = this.host.evtchn.allocUnbound(this.pools.backendDomid);
    this.port.onEvent(() => this.consume());
    const fe = this.fe;
    const ring = this.ring;
    const port = this.port;
    const persistent = (await xs.tryRead(`${this.be}/feature-persistent`)) === '1';
    await xs.transaction(async (tx) => {
      for (const k of await tx.directory(fe)) if (/^(ring-ref[0-9]*|ring-page-order|event-channel)$/.test(k)) await tx.rm(`${fe}/${k}`);
      if (order === 0) await tx.write(`${fe}/ring-ref`, String(ring.refs[0]));
      else {
        await tx.write(`${fe}/ring-page-order`, String(order));
        for (const [i, r] of ring.refs.entries()) await tx.write(`${fe}/ring-ref${i}`, String(r));
      }
      await tx.write(`${fe}/event-channel`, String(port.localPort));
      await tx.write(`${fe}/protocol`, `${this.abi}-abi`);
      await tx.write(`${fe}/feature-persistent`, persistent ? '1' : '0');
      await tx.write(`${fe}/state`, String(XenbusState.Initialised));
    });
    await this.waitBackend((s) => s === XenbusState.Connected, 'Connected');
    const key = async (k: string): Promise<string | undefined> => xs.tryRead(`${this.be}/${k}`);
    const info = Number((await key('info')) ?? '0');
    const discard = (await key('feature-discard')) === '1';
    this.cfg = {
      abi: this.abi, ringPageOrder: order, persistent,
      maxIndirect: Math.min(4096, Number((await key('feature-max-indirect-segments')) ?? '0')),
      sectorSize: Number(await key('sector-size')) as 512 | 4096,
      readonly: (info & VDISK_READONLY) !== 0,
      sectors: Number(await key('sectors')),
      flush: (await key('feature-flush-cache')) === '1',
      discard, discardSecure: discard && (await key('discard-secure')) === '1',
      maxInFlight: undefined,
      // Whether the backend maps or copies is not visible to a frontend: its creator says.
      grantCopy: this.backendCopies,
    };
    await xs.write(`${fe}/state`, String(XenbusState.Connected));
  }

  /** Closing, Closed (the backend lets the ring go), Initialising, and a fresh connection. */
  async reconnect(): Promise<void> {
    const xs = this.host.xenstore;
    await xs.write(`${this.fe}/state`, String(XenbusState.Closing));
    await this.waitBackend((s) => s === XenbusState.Closing || s === XenbusState.Closed, 'Closing');
    await xs.write(`${this.fe}/state`, String(XenbusState.Closed));
    await this.waitBackend((s) => s === XenbusState.Closed || s === XenbusState.InitWait, 'Closed');
    this.port?.close();
    this.port = undefined;
    await this.releaseRing();
    await xs.write(`${this.fe}/state`, String(XenbusState.Initialising));
    await this.connect();
    this.reconnects++;
  }

  /** Ends access to the old ring once the backend unmapped it (EBUSY until then). */
  async releaseRing(): Promise<void> {
    const old = this.ring;
    this.ring = undefined;
    if (old === undefined) return;
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      try {
        this.pools.release(old);
        return;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`the backend still maps the old ring: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    }
  }

  private consume(): void {
    const s = this.sring;
    const f = this.front;
    for (;;) {
      const rp = rspProd(s);
      if (((rp - f.rspCons) >>> 0) > s.size) {
        this.async.push(`backend published rsp_prod ${rp}, more than a ring ahead of rsp_cons ${f.rspCons}`);
        f.rspCons = rp;
      }
      while (f.rspCons !== rp) {
        const r = readResponse(this.L, s.bytes, entryOffset(s, f.rspCons));
        f.rspCons = (f.rspCons + 1) >>> 0;
        if (r.dirtyPadding.length > 0) this.async.push(`response id ${r.idLo} has non-zero padding ${r.dirtyPadding.join(' ')} (XSA-216)`);
        if (r.status !== BLKIF_RSP_OKAY && r.status !== BLKIF_RSP_ERROR && r.status !== BLKIF_RSP_EOPNOTSUPP) this.async.push(`response id ${r.idLo} has undefined status ${r.status}`);
        const o = this.outstanding.get(r.idLo);
        if (o === undefined || o.plan.raw.idHi !== r.idHi || o.status !== undefined) {
          this.async.push(`response with id ${r.idLo}:${r.idHi}, which no outstanding request has (op ${r.operation}, status ${r.status})`);
          this.extra++;
          continue;
        }
        o.status = r.status;
        this.answered++;
        if (r.status === BLKIF_RSP_OKAY) this.statuses.okay++;
        else if (r.status === BLKIF_RSP_ERROR) this.statuses.error++;
        else if (r.status === BLKIF_RSP_EOPNOTSUPP) this.statuses.eopnotsupp++;
        if (r.operation !== o.rspOp) this.async.push(`response to ${o.plan.label} has operation ${r.operation}, want ${o.rspOp}`);
        if (!o.plan.expect.includes(r.status)) this.async.push(`${o.plan.label} answered ${r.status}, want ${o.plan.expect.join(' or ')}`);
      }
      Atomics.store(s.idx, 3, (f.rspCons + 1) >>> 0);
      if (rspProd(s) === f.rspCons) break;
    }
    this.wake?.();
  }

  private publish(to: number, extra: number): void {
    const s = this.sring;
    const old = Atomics.load(s.idx, 0);
    Atomics.store(s.idx, 0, to >>> 0);
    const ev = Atomics.load(s.idx, 1);
    if ((((to - ev) >>> 0) < ((to - old) >>> 0)) || extra > 0) this.port!.notify();
    for (let i = 1; i < extra; i++) this.port!.notify();
  }

  /** Resolves when `done()` or false after the deadline; woken by each event. */
  private settle(done: () => boolean, ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      if (done()) { resolve(true); return; }
      const timer = setTimeout(() => { this.wake = undefined; resolve(done()); }, ms);
      this.wake = () => {
        if (!done()) return;
        clearTimeout(timer);
        this.wake = undefined;
        resolve(true);
      };
    });
  }

  /** `batch(rng, mode)` publishes one batch; the problems found. */
  async batch(rng: Rng, mode: RemoteBatchMode): Promise<string[]> {
    const problems: string[] = [];
    const s = this.sring;
    if (mode === 'jump') {
      const rp = rspProd(s);
      this.outstanding.clear();
      this.publish((this.front.reqProdPvt + s.size + 1 + rng.int(1000)) >>> 0, 1);
      // Nothing may be answered; give the backend a moment to (wrongly) do so.
      await new Promise((r) => setTimeout(r, 20));
      problems.push(...this.async.splice(0));
      if (rspProd(s) !== rp) problems.push(`after req_prod jumped past the ring the backend published ${(rspProd(s) - rp) >>> 0} responses`);
      await this.reconnect();
      return problems;
    }
    this.sentinel = 1 + rng.int(255);
    const planner = new BatchPlanner(rng, this.cfg, this.pools, this.slices, this.noise, this.sentinel, () => {
      const id = this.nextIdLo;
      this.nextIdLo = (this.nextIdLo + 1) >>> 0 || 1;
      return id;
    });
    const n = 1 + rng.int(Math.min(s.size, rng.chance(0.05) ? 32 : 8));
    const plans: Planned[] = [];
    for (let i = 0; i < n; i++) {
      if (mode === 'chaos') plans.push(rng.chance(0.7) ? planner.chaos(this.ring!.refs) : planner.flawed());
      else plans.push((rng.chance(0.72) ? planner.wellFormed() : undefined) ?? planner.flawed());
    }
    planner.finish();
    this.outstanding.clear();
    this.answered = 0;
    this.extra = 0;
    for (const p of plans) {
      const off = nextRequestOffset(this.front);
      writeEntry(this.L, s.bytes, off, p.raw, rng.chance(0.2) ? rng.int(256) : 0);
      const rspOp = s.bytes[off] === 6 ? s.bytes[off + 1]! : s.bytes[off]!;
      this.outstanding.set(p.raw.idLo, { plan: p, rspOp, status: undefined });
    }
    this.publish(this.front.reqProdPvt, mode === 'storm' ? 1 + rng.int(100) : 0);
    if (mode === 'storm') for (let i = 0; i < 50; i++) { await new Promise((r) => setImmediate(r)); this.port!.notify(); }
    const ok = await this.settle(() => this.answered + this.extra >= plans.length, DEADLINE_MS);
    problems.push(...this.async.splice(0));
    if (!ok) {
      const idx = Array.from(s.idx);
      problems.push(`backend hung: ${plans.length - this.answered} of ${plans.length} requests unanswered after ${DEADLINE_MS} ms ` +
        `(req_prod ${idx[0]}, req_event ${idx[1]}, rsp_prod ${idx[2]}, rsp_event ${idx[3]}, rsp_cons ${this.front.rspCons}): ` +
        [...this.outstanding.values()].filter((o) => o.status === undefined).map((o) => o.plan.label).join('; '));
      return problems;
    }
    this.checkData(mode, problems);
    return problems;
  }

  private checkData(mode: RemoteBatchMode, problems: string[]): void {
    const model = this.model;
    for (const o of this.outstanding.values()) {
      const p = o.plan;
      if (p.effect !== 'read') continue;
      let pos = p.sector * 512;
      for (const [i, sl] of p.slices.entries()) {
        const a = sl.first * 512;
        const len = (sl.last - sl.first + 1) * 512;
        const holdsData = model.compare(sl.page.buf, a, a + len, pos, pos + len) === 0;
        // A grant-copy backend copies a read's data into the guest piece by piece after the
        // read, so a read refused at a later segment (a read-only grant) has filled the earlier
        // ones with the disk's data already; nothing else may be there.
        const untouched = sl.page.buf.subarray(a, a + len).every((b) => b === this.sentinel) || (this.backendCopies && holdsData);
        if (o.status === BLKIF_RSP_OKAY ? !holdsData : !untouched) {
          problems.push(`${p.label}: seg ${i} (ref ${sl.page.ref}) ${o.status === BLKIF_RSP_OKAY ? 'does not hold the disk\'s data after an OKAY read' : 'was written by a refused read'}`);
          break;
        }
        pos += len;
      }
    }
    for (const pg of [...this.pools.ro, ...this.pools.ind, ...(mode === 'chaos' ? [] : this.pools.src)]) {
      if (pg.shadow !== undefined && !pg.buf.equals(pg.shadow)) {
        problems.push(`the backend wrote into ${pg.readonly ? 'read-only' : 'source'} page ref ${pg.ref}`);
        pg.shadow.set(pg.buf);
      }
    }
    if (mode === 'chaos') {
      for (const pg of this.pools.src) pg.shadow!.set(pg.buf);
      // Garbage may have written anywhere: the file is the new truth.
      fs.readFileSync(this.image).copy(model);
      return;
    }
    for (const o of this.outstanding.values()) {
      if (o.status === BLKIF_RSP_OKAY) applyToModel(model, o.plan);
    }
  }

  /** `checkDisk()` compares the image file with the model. */
  checkDisk(): string | undefined {
    const d = fs.readFileSync(this.image);
    if (d.equals(this.model)) return undefined;
    let i = 0;
    while (d[i] === this.model[i]) i++;
    return `the image differs from the model at byte ${i} (sector ${Math.floor(i / 512)})`;
  }

  /** `close()` says Closing/Closed to the backend and releases the ring and the port. */
  async close(): Promise<void> {
    const xs = this.host.xenstore;
    await xs.write(`${this.fe}/state`, String(XenbusState.Closing)).catch(() => {});
    await this.waitBackend((s) => s !== XenbusState.Connected, 'not Connected').catch(() => {});
    await xs.write(`${this.fe}/state`, String(XenbusState.Closed)).catch(() => {});
    await this.waitBackend((s) => s === XenbusState.Closed || s === XenbusState.InitWait || s === XenbusState.Unknown, 'Closed').catch(() => {});
    this.port?.close();
    this.port = undefined;
    await this.releaseRing().catch(() => {});
  }
}
