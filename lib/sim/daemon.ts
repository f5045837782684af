// The simulated Xen host's daemon: the hypervisor and toolstack of the simulator.
//
// It runs our xenstored (a privileged socket for dom0, one socket per domain), keeps the domain
// list (a domain is created when its first process attaches, with /local/domain/<id> and
// @introduceDomain; it dies with its last process, domain 0 excepted), owns every domain's
// memory, grant-table and event-page files, answers the hypercalls of attached processes
// (hypercall.ts), and cleans up after a process the moment its control connection closes — a
// clean DETACH, an exit, or kill -9 alike: unmap notifications of its mappings fire, its pins
// are dropped, its ports close (peers' ends become unbound, as after EVTCHNOP_close), its grants
// are revoked (pages still mapped by a peer stay alive, as a dying Xen domain's do, until that
// peer unmaps), and when the domain dies it is removed from XenStore as a toolstack would
// (backend directories naming it, /local/domain/<id>) and @releaseDomain fires.
import fs from 'node:fs';
import net from 'node:net';
import { connect } from '../../xenstore/connect.ts';
import { createXenstored, type Xenstored } from '../../xenstore/server/xenstored.ts';
import type { Xenstore } from '../../xenstore/xenstore.ts';
import { errnoNumber } from '../../native/libc.ts';
import { Mapping, PAGE } from '../../native/memory.ts';
import { mkfifo, openFifoWriter, ringFifo } from '../../native/fifo.ts';
import { libc } from '../../native/libc.ts';
import { DOMID_SELF, isDomid } from '../../gnttab/grant-entry.ts';
import { SIM_CHUNK, SIM_MAX_BATCH, UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT } from '../../gnttab/sim.ts';
import { EVTCHNSTAT, NR_PORTS, SLOT, SLOTS, SLOT_WORDS, raiseEvent } from '../../evtchn/sim-shared-info.ts';
import { CHUNK_FREE, CHUNK_ZOMBIE, DomainInstance } from './domain.ts';
import { HC, HC_HEADER, HC_MAX_PAYLOAD, encodeError, hcName } from './hypercall.ts';
import { SimPaths } from './paths.ts';
import { listenDomainSocket, type DomainSocket } from './xs-domain-socket.ts';

/** Options of a simulator daemon. */
export interface SimDaemonOptions {
  readonly dir: string;
  /** Page frames of RAM per domain (default 16384 = 64 MiB, sparse). */
  readonly nrFrames?: number;
  /** Grant-table entries per domain (default 16384, Xen's v1 limit with 32 grant frames). */
  readonly nrGrants?: number;
  /**
   * Back each domain's RAM with 2 MiB pages, allocated when the domain is created (superpages.ts:
   * as Xen's domain builder gives guests superpages). Default false: RAM stays sparse.
   */
  readonly superpages?: boolean;
  /** Diagnostics; default silent. */
  readonly log?: (line: string) => void;
}

/** One attached process in `sim status`. */
export interface SimProcessStatus {
  readonly slot: number;
  readonly pid: number;
  /** Mappings it holds of other domains' grants (pages). */
  readonly mappedPages: number;
}

/** One port in `sim status`. */
export interface SimPortStatus {
  readonly port: number;
  readonly state: 'unbound' | 'interdomain';
  readonly remoteDomid: number;
  readonly remotePort: number;
  readonly slot: number;
}

/** One domain in `sim status`. */
export interface SimDomainStatus {
  readonly domid: number;
  readonly instance: number;
  /** Released but some of its pages are still mapped by others. */
  readonly dying: boolean;
  /** Whether its RAM is on 2 MiB pages: 'on', 'off' (not asked), or why the kernel refused. */
  readonly superpages: string;
  readonly processes: SimProcessStatus[];
  /** Grant entries currently GTF_permit_access. */
  readonly granted: number;
  /** Of those, entries pinned by a mapping. */
  readonly grantsMapped: number;
  readonly ports: SimPortStatus[];
}

/** What `sim status` reports. */
export interface SimStatus {
  readonly dir: string;
  readonly pid: number;
  readonly domains: SimDomainStatus[];
}

class Errno extends Error {
  constructor(readonly code: string, readonly at: number | undefined, detail: string) {
    super(detail);
  }
}

interface MapRecord {
  readonly grantor: DomainInstance;
  readonly refs: number[];
  readonly frames: number[];
  readonly writable: boolean;
  action: number;
  offset: number;
  port: number;
}

interface Slot {
  readonly index: number;
  readonly gen: number;
  readonly pid: number;
  readonly dom: DomainInstance;
  readonly maptrack: Map<number, MapRecord>;
  readonly ports: Set<number>;
  readonly refChunks: Set<number>;
  readonly frameChunks: Set<number>;
  nextHandle: number;
  gone: boolean;
}

interface Conn {
  readonly sock: net.Socket;
  slot: Slot | undefined;
  /** Requests are handled one at a time per connection. */
  queue: Promise<void>;
  buf: Buffer;
  closed: boolean;
}

const DEFAULT_FRAMES = 16384;
const DEFAULT_GRANTS = 16384;

/** A running simulator daemon. */
export class SimDaemon {
  readonly paths: SimPaths;
  private readonly nrFrames: number;
  private readonly nrGrants: number;
  private readonly superpages: boolean;
  private readonly log: (line: string) => void;
  private readonly live = new Map<number, DomainInstance>();
  private readonly creating = new Map<number, Promise<DomainInstance>>();
  /** Domains being released: a new instance of the same domid waits for the old one to be gone. */
  private readonly releasing = new Map<number, Promise<void>>();
  private readonly dying = new Set<DomainInstance>();
  private readonly slots: (Slot | undefined)[] = new Array(SLOTS.max);
  private readonly conns = new Set<Conn>();
  private readonly xsSockets = new Map<DomainInstance, DomainSocket>();
  private slotTableMap!: Mapping;
  private slotTable!: Uint32Array;
  private server!: net.Server;
  private xenstored!: Xenstored;
  private xs!: Xenstore;
  // (each is set by init(); abort() copes with any still unset)
  private nextInstance = 1;
  private nextGen = 1;
  private stopping: Promise<void> | undefined;
  private madeDir = false;
  private readonly ring = (slot: number, gen: number): void => this.ringDoorbell(slot, gen);

  private constructor(opts: SimDaemonOptions) {
    this.paths = new SimPaths(opts.dir);
    this.nrFrames = opts.nrFrames ?? DEFAULT_FRAMES;
    this.nrGrants = opts.nrGrants ?? DEFAULT_GRANTS;
    this.superpages = opts.superpages ?? false;
    this.log = opts.log ?? (() => {});
    if (!Number.isInteger(this.nrFrames) || this.nrFrames < SIM_CHUNK || this.nrFrames % SIM_CHUNK !== 0) throw new RangeError(`nrFrames ${this.nrFrames}: a positive multiple of ${SIM_CHUNK}`);
    if (!Number.isInteger(this.nrGrants) || this.nrGrants < SIM_CHUNK || this.nrGrants % SIM_CHUNK !== 0) throw new RangeError(`nrGrants ${this.nrGrants}: a positive multiple of ${SIM_CHUNK}`);
  }

  /** `SimDaemon.start(opts)` creates the simulator in `opts.dir` and starts serving; rejects if one already runs there. */
  static async start(opts: SimDaemonOptions): Promise<SimDaemon> {
    const d = new SimDaemon(opts);
    try {
      await d.init();
    } catch (e) {
      await d.abort();
      throw e;
    }
    return d;
  }

  /** Undo a partial init (another daemon runs here, a socket could not be bound, ...). */
  private async abort(): Promise<void> {
    if (this.server !== undefined) await new Promise<void>((r) => this.server.close(() => r()));
    try { await this.xs?.close(); } catch { /* not connected */ }
    await this.xenstored?.close();
    for (const dom of this.live.values()) { dom.unlinkFiles(); dom.finalize(); }
    this.live.clear();
    if (this.slotTableMap !== undefined) {
      this.slotTableMap.unmap();
      fs.rmSync(this.paths.slots, { force: true });
    }
    if (this.madeDir) fs.rmSync(this.paths.dir, { recursive: true, force: true });
  }

  private async init(): Promise<void> {
    const p = this.paths;
    if (!fs.existsSync(p.dir)) {
      fs.mkdirSync(p.dir, { recursive: true, mode: 0o700 });
      this.madeDir = true;
    }
    if (await isListening(p.ctl)) throw new Error(`a simulator is already running in ${p.dir}`);
    removeStale(p.dir);
    const fd = fs.openSync(p.slots, 'w+', 0o600);
    try {
      fs.ftruncateSync(fd, SLOTS.size);
      this.slotTableMap = Mapping.file(fd, 0, SLOTS.size, true, 'slot table');
    } finally {
      fs.closeSync(fd);
    }
    const v = this.slotTableMap.view();
    this.slotTable = new Uint32Array(v.buffer, v.byteOffset, v.length / 4);
    this.xenstored = createXenstored({
      isDomainAlive: (domid) => this.live.has(domid),
      log: (l) => this.log(`xenstored: ${l}`),
    });
    await this.xenstored.listen(p.xenstored, 0);
    this.xs = await connect({ socketPath: p.xenstored });
    await this.createDomain(0);
    this.server = net.createServer((sock) => this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(p.ctl, () => resolve());
    });
    fs.chmodSync(p.ctl, 0o600);
    fs.writeFileSync(p.pid, `${process.pid}\n`);
  }

  /** `d.status()` lists domains, their processes, grants in use and bound channels. */
  status(): SimStatus {
    const domains: SimDomainStatus[] = [];
    for (const dom of [...this.live.values(), ...this.dying]) {
      const processes: SimProcessStatus[] = [];
      for (const i of dom.slots) {
        const s = this.slots[i]!;
        let mappedPages = 0;
        for (const r of s.maptrack.values()) mappedPages += r.refs.length;
        processes.push({ slot: s.index, pid: s.pid, mappedPages });
      }
      const ports: SimPortStatus[] = [];
      if (!dom.released) {
        for (let p = 1; p < NR_PORTS; p++) {
          const f = dom.port(p);
          if (f.state === EVTCHNSTAT.unbound || f.state === EVTCHNSTAT.interdomain) {
            ports.push({ port: p, state: f.state === EVTCHNSTAT.unbound ? 'unbound' : 'interdomain', remoteDomid: f.remoteDomid, remotePort: f.remotePort, slot: f.ownerSlot });
          }
        }
      }
      domains.push({
        domid: dom.domid, instance: dom.instance, dying: dom.released, superpages: dom.superpages, processes,
        granted: dom.grantedCount(), grantsMapped: dom.active.size, ports,
      });
    }
    return { dir: this.paths.dir, pid: process.pid, domains };
  }

  /** `d.stop()` detaches every process, releases every domain and removes everything it created. */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of [...this.conns]) {
      c.closed = true;
      c.sock.destroy();
    }
    await closed;
    for (const s of this.slots) if (s !== undefined) await this.dropSlot(s);
    for (const dom of [...this.live.values()]) {
      if (dom.domid !== 0) await this.releaseDomain(dom);
    }
    const dom0 = this.live.get(0);
    if (dom0 !== undefined) {
      this.live.delete(0);
      dom0.released = true;
      dom0.unlinkFiles();
      dom0.finalize();
    }
    for (const dom of this.dying) dom.finalize();
    this.dying.clear();
    try { await this.xs.close(); } catch { /* already dropped */ }
    await this.xenstored.close();
    this.slotTableMap.unmap();
    for (const f of [this.paths.ctl, this.paths.slots, this.paths.pid, this.paths.xenstored]) fs.rmSync(f, { force: true });
    if (this.madeDir) {
      try { fs.rmdirSync(this.paths.dir); } catch { /* someone else's files are in it */ }
    }
  }

  // ---- connections and framing -------------------------------------------------------------

  private accept(sock: net.Socket): void {
    const c: Conn = { sock, slot: undefined, queue: Promise.resolve(), buf: Buffer.alloc(0), closed: false };
    this.conns.add(c);
    sock.on('data', (chunk: Buffer) => this.onData(c, chunk));
    sock.on('error', () => {});
    sock.on('close', () => {
      c.closed = true;
      this.conns.delete(c);
      c.queue = c.queue.then(async () => {
        if (c.slot !== undefined && !c.slot.gone) await this.dropSlot(c.slot);
      }).catch((e: unknown) => this.log(`cleanup failed: ${String(e)}`));
    });
  }

  private onData(c: Conn, chunk: Buffer): void {
    c.buf = c.buf.length === 0 ? chunk : Buffer.concat([c.buf, chunk]);
    while (c.buf.length >= HC_HEADER) {
      const len = c.buf.readUInt32LE(0);
      const op = c.buf.readUInt32LE(4);
      if (len > HC_MAX_PAYLOAD || len % 4 !== 0) {
        this.log(`dropping a client: bad hypercall frame (op ${op}, ${len} bytes)`);
        c.sock.destroy();
        return;
      }
      if (c.buf.length < HC_HEADER + len) return;
      const payload = c.buf.subarray(HC_HEADER, HC_HEADER + len);
      c.buf = c.buf.subarray(HC_HEADER + len);
      const words = new Uint32Array(len / 4);
      for (let i = 0; i < words.length; i++) words[i] = payload.readUInt32LE(4 * i);
      c.queue = c.queue.then(() => this.handle(c, op, words)).catch((e: unknown) => {
        this.log(`internal error in ${hcName(op)}: ${e instanceof Error ? e.stack : String(e)}`);
        this.reply(c, -errnoNumber('EIO'), encodeError(undefined, `internal error: ${String(e)}`));
      });
    }
  }

  private reply(c: Conn, status: number, payload: Uint8Array): void {
    if (c.closed) return;
    const b = Buffer.alloc(HC_HEADER + payload.length);
    b.writeUInt32LE(payload.length, 0);
    b.writeInt32LE(status, 4);
    b.set(payload, HC_HEADER);
    c.sock.write(b);
  }

  private replyWords(c: Conn, words: ArrayLike<number>): void {
    const b = Buffer.alloc(4 * words.length);
    for (let i = 0; i < words.length; i++) b.writeUInt32LE(words[i]! >>> 0, 4 * i);
    this.reply(c, 0, b);
  }

  private async handle(c: Conn, op: number, w: Uint32Array): Promise<void> {
    try {
      if (op === HC.STATUS) {
        this.reply(c, 0, Buffer.from(JSON.stringify(this.status())));
        return;
      }
      if (op === HC.ATTACH) {
        if (c.slot !== undefined) throw new Errno('EINVAL', undefined, 'already attached');
        need(w, 2);
        const slot = await this.attach(w[0]!, w[1]!);
        if (c.closed) {
          await this.dropSlot(slot);
          return;
        }
        c.slot = slot;
        this.replyWords(c, [slot.index, slot.gen, slot.dom.instance, slot.dom.nrFrames, slot.dom.nrGrants, NR_PORTS]);
        return;
      }
      const s = c.slot;
      if (s === undefined || s.gone) throw new Errno('EINVAL', undefined, `${hcName(op)} before ATTACH`);
      switch (op) {
        case HC.DETACH:
          await this.dropSlot(s);
          this.reply(c, 0, new Uint8Array(0));
          return;
        case HC.GRANT_CHUNK:
          this.replyWords(c, [this.grantChunk(s)]);
          return;
        case HC.FRAME_RUN:
          need(w, 1);
          this.replyWords(c, [this.frameRun(s, w[0]!)]);
          return;
        case HC.MAP: {
          need(w, 3);
          const n = w[2]!;
          if (n < 1 || n > SIM_MAX_BATCH || w.length !== 3 + n) throw new Errno('EINVAL', undefined, `bad ref count ${n}`);
          this.replyWords(c, this.map(s, w[0]!, w[1]! === 1, Array.from(w.subarray(3))));
          return;
        }
        case HC.UNMAP:
          need(w, 1);
          this.unmap(s, w[0]!);
          this.reply(c, 0, new Uint8Array(0));
          return;
        case HC.SET_UNMAP_NOTIFY:
          need(w, 4);
          this.setUnmapNotify(s, w[0]!, w[1]!, w[2]!, w[3]!);
          this.reply(c, 0, new Uint8Array(0));
          return;
        case HC.ALLOC_UNBOUND:
          need(w, 1);
          this.replyWords(c, [this.allocUnbound(s, w[0]!)]);
          return;
        case HC.BIND_INTERDOMAIN:
          need(w, 2);
          this.replyWords(c, [this.bindInterdomain(s, w[0]!, w[1]!)]);
          return;
        case HC.CLOSE_PORT:
          need(w, 1);
          if (!s.ports.has(w[0]!)) throw new Errno('EINVAL', w[0]!, 'port not bound by this process');
          this.closePort(s.dom, w[0]!, s);
          this.reply(c, 0, new Uint8Array(0));
          return;
        default:
          throw new Errno('ENOSYS', undefined, `unknown hypercall ${op}`);
      }
    } catch (e) {
      if (!(e instanceof Errno)) throw e;
      this.reply(c, -errnoNumber(e.code), encodeError(e.at, e.message));
    }
  }

  // ---- domains and processes ---------------------------------------------------------------

  private async attach(domid: number, pid: number): Promise<Slot> {
    if (!isDomid(domid)) throw new Errno('EINVAL', undefined, `domid ${domid} is not an ordinary domain id`);
    await this.releasing.get(domid);
    let dom = this.live.get(domid);
    if (dom === undefined) {
      let p = this.creating.get(domid);
      if (p === undefined) {
        p = this.createDomain(domid);
        this.creating.set(domid, p);
        p.finally(() => this.creating.delete(domid)).catch(() => {});
      }
      dom = await p;
    }
    let index = -1;
    for (let i = 0; i < SLOTS.max; i++) if (this.slots[i] === undefined) { index = i; break; }
    if (index < 0) throw new Errno('ENOSPC', undefined, `more than ${SLOTS.max} attached processes`);
    const gen = this.nextGen++;
    mkfifo(this.paths.doorbell(index, gen));
    const slot: Slot = {
      index, gen, pid, dom, maptrack: new Map(), ports: new Set(), refChunks: new Set(), frameChunks: new Set(), nextHandle: 1, gone: false,
    };
    this.slots[index] = slot;
    dom.slots.add(index);
    const t = this.slotTable;
    const b = index * SLOT_WORDS;
    Atomics.store(t, b + SLOT.upcall, 0);
    Atomics.store(t, b + SLOT.domid, domid);
    Atomics.store(t, b + SLOT.pid, pid);
    Atomics.store(t, b + SLOT.gen, gen);
    this.log(`d${domid}: process ${pid} attached (slot ${index})`);
    return slot;
  }

  private async createDomain(domid: number): Promise<DomainInstance> {
    const inst = this.nextInstance++;
    const dom = DomainInstance.create(this.paths, domid, inst, this.nrFrames, this.nrGrants, this.superpages);
    if (this.superpages) this.log(`d${domid}: RAM on 2 MiB pages: ${dom.superpages}`);
    // The domain exists (for xenstored's permission checks naming it) before its entries are written.
    this.live.set(domid, dom);
    try {
      if (domid !== 0) {
        this.xsSockets.set(dom, await listenDomainSocket(this.xenstored.core, this.paths.xs(domid, inst), domid));
      }
      // libxl__domain_make: /local/domain/<id> readable by the domain, owned by dom0.
      const base = `/local/domain/${domid}`;
      const ro = [{ domid: 0, perm: 'n' as const }, { domid, perm: 'r' as const }];
      await this.xs.transaction(async (tx) => {
        await tx.write(base, '');
        await tx.setPermissions(base, ro);
        await tx.write(`${base}/domid`, String(domid));
        await tx.setPermissions(`${base}/domid`, ro);
        await tx.write(`${base}/name`, domid === 0 ? 'Domain-0' : `sim-${domid}`);
        await tx.setPermissions(`${base}/name`, ro);
        await tx.write(`${base}/device`, '');
        await tx.setPermissions(`${base}/device`, ro);
        await tx.write(`${base}/data`, '');
        await tx.setPermissions(`${base}/data`, [{ domid, perm: 'n' }]);
      });
      if (domid !== 0) this.xenstored.introduceDomain(domid);
    } catch (e) {
      this.live.delete(domid);
      await this.xsSockets.get(dom)?.close();
      this.xsSockets.delete(dom);
      dom.unlinkFiles();
      dom.finalize();
      throw e;
    }
    this.log(`d${domid}: created (instance ${inst})`);
    return dom;
  }

  /** Everything a process held goes, as when its /dev/xen devices close with it. */
  private async dropSlot(s: Slot): Promise<void> {
    if (s.gone) return;
    s.gone = true;
    const dom = s.dom;
    // 1. Its mappings of others' grants: unmap notifications, then unpin (gntdev release).
    for (const [h, rec] of [...s.maptrack]) this.releaseMapping(s, h, rec);
    // 2. Its ports: peers' ends become unbound.
    for (const p of [...s.ports]) this.closePort(dom, p, s);
    // 3. Its grants: revoke every entry nobody maps; pinned ones stay until the mapper lets go.
    this.revokeChunks(dom, s);
    // 4. Its slot and doorbell.
    const t = this.slotTable;
    const b = s.index * SLOT_WORDS;
    Atomics.store(t, b + SLOT.gen, 0);
    Atomics.store(t, b + SLOT.upcall, 0);
    Atomics.store(t, b + SLOT.domid, 0);
    Atomics.store(t, b + SLOT.pid, 0);
    fs.rmSync(this.paths.doorbell(s.index, s.gen), { force: true });
    this.slots[s.index] = undefined;
    dom.slots.delete(s.index);
    this.log(`d${dom.domid}: process ${s.pid} detached (slot ${s.index})`);
    // 5. A domain dies with its last process (dom0 never does).
    if (dom.slots.size === 0 && dom.domid !== 0 && !dom.released && this.live.get(dom.domid) === dom) {
      await this.releaseDomain(dom);
    }
  }

  private releaseDomain(dom: DomainInstance): Promise<void> {
    const domid = dom.domid;
    const p = this.doReleaseDomain(dom).finally(() => {
      if (this.releasing.get(domid) === p) this.releasing.delete(domid);
    });
    this.releasing.set(domid, p);
    return p;
  }

  private async doReleaseDomain(dom: DomainInstance): Promise<void> {
    const domid = dom.domid;
    this.live.delete(domid);
    dom.released = true;
    for (const i of [...dom.slots]) {
      const s = this.slots[i];
      if (s !== undefined) await this.dropSlot(s);
    }
    dom.unlinkFiles();
    const sock = this.xsSockets.get(dom);
    if (sock !== undefined) {
      this.xsSockets.delete(dom);
      await sock.close();
    }
    // As libxl does on destroy: backend directories serving the domain, then its own tree.
    try {
      for (const be of await this.tryDirectory('/local/domain')) {
        for (const type of await this.tryDirectory(`/local/domain/${be}/backend`)) {
          const p = `/local/domain/${be}/backend/${type}/${domid}`;
          if ((await this.xs.tryRead(p)) !== undefined) await this.xs.rm(p);
        }
      }
      await this.xs.rm(`/local/domain/${domid}`);
    } catch (e) {
      this.log(`d${domid}: xenstore cleanup: ${String(e)}`);
    }
    this.xenstored.releaseDomain(domid);
    if (dom.active.size === 0) dom.finalize();
    else this.dying.add(dom);
    this.log(`d${domid}: released (instance ${dom.instance})`);
  }

  private async tryDirectory(path: string): Promise<string[]> {
    try {
      return await this.xs.directory(path);
    } catch {
      return [];
    }
  }

  // ---- grants ------------------------------------------------------------------------------

  private grantChunk(s: Slot): number {
    const own = s.dom.refOwner;
    for (let c = 0; c < own.length; c++) {
      if (own[c] === CHUNK_FREE) {
        own[c] = s.index;
        s.refChunks.add(c);
        return c * SIM_CHUNK;
      }
    }
    throw new Errno('ENOSPC', undefined, `d${s.dom.domid} has no grant reference left (${s.dom.nrGrants})`);
  }

  private frameRun(s: Slot, count: number): number {
    if (count < 1 || count % SIM_CHUNK !== 0) throw new Errno('EINVAL', undefined, `frame count ${count}`);
    const own = s.dom.frameOwner;
    const need = count / SIM_CHUNK;
    let run = 0;
    for (let c = 0; c < own.length; c++) {
      run = own[c] === CHUNK_FREE ? run + 1 : 0;
      if (run === need) {
        const first = c - need + 1;
        for (let k = first; k <= c; k++) {
          own[k] = s.index;
          s.frameChunks.add(k);
        }
        return first * SIM_CHUNK;
      }
    }
    throw new Errno('ENOSPC', undefined, `d${s.dom.domid} has no ${count} contiguous free frames`);
  }

  private map(s: Slot, grantorDomid: number, writable: boolean, refs: number[]): number[] {
    const g = this.live.get(grantorDomid);
    if (g === undefined) throw new Errno('ESRCH', undefined, `no domain ${grantorDomid}`);
    const frames: number[] = [];
    for (let i = 0; i < refs.length; i++) {
      const r = g.pin(refs[i]!, s.dom.domid, writable);
      if (typeof r !== 'number') {
        for (let j = 0; j < i; j++) this.unpin(g, refs[j]!, writable);
        throw new Errno(r.code, refs[i]!, r.detail);
      }
      frames.push(r);
    }
    const handle = s.nextHandle++;
    s.maptrack.set(handle, { grantor: g, refs, frames, writable, action: 0, offset: 0, port: 0 });
    return [handle, g.instance, ...frames];
  }

  private unmap(s: Slot, handle: number): void {
    const rec = s.maptrack.get(handle);
    if (rec === undefined) throw new Errno('EINVAL', undefined, `no mapping with handle ${handle}`);
    this.releaseMapping(s, handle, rec);
  }

  private setUnmapNotify(s: Slot, handle: number, action: number, offset: number, port: number): void {
    const rec = s.maptrack.get(handle);
    if (rec === undefined) throw new Errno('EINVAL', undefined, `no mapping with handle ${handle}`);
    if ((action & ~(UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT)) !== 0) throw new Errno('EINVAL', undefined, `unknown action ${action}`);
    if ((action & UNMAP_NOTIFY_CLEAR_BYTE) !== 0) {
      if (offset >= rec.refs.length * PAGE) throw new Errno('EINVAL', undefined, `clear byte ${offset} outside the mapping`);
      if (!rec.writable) throw new Errno('EINVAL', undefined, 'clear byte on a read-only mapping');
    }
    if ((action & UNMAP_NOTIFY_SEND_EVENT) !== 0 && !s.ports.has(port)) throw new Errno('EINVAL', port, 'port not bound by this process');
    rec.action = action;
    rec.offset = offset;
    rec.port = port;
  }

  /** gntdev's order: clear the byte, unmap (unpin), then send the event. */
  private releaseMapping(s: Slot, handle: number, rec: MapRecord): void {
    s.maptrack.delete(handle);
    const g = rec.grantor;
    if ((rec.action & UNMAP_NOTIFY_CLEAR_BYTE) !== 0) {
      try {
        g.clearByte(rec.frames[Math.floor(rec.offset / PAGE)]!, rec.offset % PAGE);
      } catch (e) {
        this.log(`unmap notify: clear byte: ${String(e)}`);
      }
    }
    for (const ref of rec.refs) this.unpin(g, ref, rec.writable);
    if ((rec.action & UNMAP_NOTIFY_SEND_EVENT) !== 0 && s.ports.has(rec.port)) this.send(s.dom, rec.port);
  }

  private unpin(g: DomainInstance, ref: number, writable: boolean): void {
    if (!g.unpin(ref, writable)) return;
    const c = Math.floor(ref / SIM_CHUNK);
    if (g.refOwner[c] === CHUNK_ZOMBIE) {
      g.revokeEntry(ref);
      this.reapZombies(g);
    }
    if (g.released && g.active.size === 0 && this.dying.delete(g)) g.finalize();
  }

  private revokeChunks(dom: DomainInstance, s: Slot): void {
    const pinnedFrameChunks = new Set<number>();
    for (const c of s.refChunks) {
      let pinned = false;
      for (let ref = c * SIM_CHUNK; ref < (c + 1) * SIM_CHUNK; ref++) {
        const act = dom.active.get(ref);
        if (act !== undefined) {
          pinned = true;
          pinnedFrameChunks.add(Math.floor(act.frame / SIM_CHUNK));
        } else {
          dom.revokeEntry(ref);
        }
      }
      dom.refOwner[c] = pinned ? CHUNK_ZOMBIE : CHUNK_FREE;
    }
    for (const c of s.frameChunks) dom.frameOwner[c] = pinnedFrameChunks.has(c) ? CHUNK_ZOMBIE : CHUNK_FREE;
    s.refChunks.clear();
    s.frameChunks.clear();
  }

  /** Zombie chunks with no pinned grant left become free again. */
  private reapZombies(dom: DomainInstance): void {
    const pinnedRefChunks = new Set<number>();
    const pinnedFrameChunks = new Set<number>();
    for (const [ref, act] of dom.active) {
      pinnedRefChunks.add(Math.floor(ref / SIM_CHUNK));
      pinnedFrameChunks.add(Math.floor(act.frame / SIM_CHUNK));
    }
    for (let c = 0; c < dom.refOwner.length; c++) {
      if (dom.refOwner[c] === CHUNK_ZOMBIE && !pinnedRefChunks.has(c)) dom.refOwner[c] = CHUNK_FREE;
    }
    for (let c = 0; c < dom.frameOwner.length; c++) {
      if (dom.frameOwner[c] === CHUNK_ZOMBIE && !pinnedFrameChunks.has(c)) dom.frameOwner[c] = CHUNK_FREE;
    }
  }

  // ---- event channels ----------------------------------------------------------------------

  private allocUnbound(s: Slot, remote: number): number {
    const rd = remote === DOMID_SELF ? s.dom.domid : remote;
    if (!isDomid(rd)) throw new Errno('EINVAL', undefined, `remote domid ${remote}`);
    if (!this.live.has(rd)) throw new Errno('ESRCH', undefined, `no domain ${rd}`);
    const p = s.dom.freePort();
    if (p < 0) throw new Errno('ENOSPC', undefined, `d${s.dom.domid} has no free port`);
    s.dom.resetPortBits(p);
    s.dom.setPort(p, { state: EVTCHNSTAT.unbound, remoteDomid: rd, remotePort: 0, remoteInstance: 0, ownerSlot: s.index, ownerGen: s.gen });
    s.ports.add(p);
    return p;
  }

  private bindInterdomain(s: Slot, remote: number, rport: number): number {
    const dom = s.dom;
    const rd = remote === DOMID_SELF ? dom.domid : remote;
    if (!isDomid(rd)) throw new Errno('EINVAL', undefined, `remote domid ${remote}`);
    const r = this.live.get(rd);
    if (r === undefined) throw new Errno('ESRCH', undefined, `no domain ${rd}`);
    if (rport < 1 || rport >= NR_PORTS) throw new Errno('EINVAL', rport, 'port out of range');
    const rf = r.port(rport);
    if (rf.state !== EVTCHNSTAT.unbound || rf.remoteDomid !== dom.domid) {
      throw new Errno('EINVAL', rport, `port ${rport} of d${rd} is not unbound for d${dom.domid}`);
    }
    const p = dom.freePort();
    if (p < 0) throw new Errno('ENOSPC', undefined, `d${dom.domid} has no free port`);
    dom.resetPortBits(p);
    dom.setPort(p, { state: EVTCHNSTAT.interdomain, remoteDomid: rd, remotePort: rport, remoteInstance: r.instance, ownerSlot: s.index, ownerGen: s.gen });
    r.setPort(rport, { ...rf, state: EVTCHNSTAT.interdomain, remoteDomid: dom.domid, remotePort: p, remoteInstance: dom.instance });
    s.ports.add(p);
    // event_channel.c evtchn_bind_interdomain: events sent on the unbound remote port were
    // dropped, so the new local port is conservatively marked pending.
    raiseEvent(dom.page, p, this.slotTable, this.ring);
    return p;
  }

  private closePort(dom: DomainInstance, p: number, s: Slot): void {
    s.ports.delete(p);
    const f = dom.port(p);
    if (f.state === EVTCHNSTAT.interdomain) {
      const r = this.live.get(f.remoteDomid);
      if (r !== undefined && r.instance === f.remoteInstance && !(r === dom && f.remotePort === p)) {
        const rf = r.port(f.remotePort);
        if (rf.state === EVTCHNSTAT.interdomain && rf.remotePort === p && rf.remoteInstance === dom.instance) {
          // event_channel.c evtchn_close: the remote end goes back to unbound, for us.
          r.setPort(f.remotePort, { ...rf, state: EVTCHNSTAT.unbound, remoteDomid: dom.domid, remotePort: 0, remoteInstance: 0 });
        }
      }
    }
    dom.setPort(p, { state: EVTCHNSTAT.closed, remoteDomid: 0, remotePort: 0, remoteInstance: 0, ownerSlot: 0, ownerGen: 0 });
    dom.resetPortBits(p);
  }

  /** EVTCHNOP_send from port `p` of `dom`, on behalf of one of its processes. */
  private send(dom: DomainInstance, p: number): void {
    const f = dom.port(p);
    if (f.state !== EVTCHNSTAT.interdomain) return;
    const r = f.remoteInstance === dom.instance ? dom : this.live.get(f.remoteDomid);
    if (r === undefined || r.instance !== f.remoteInstance) return;
    raiseEvent(r.page, f.remotePort, this.slotTable, this.ring);
  }

  private ringDoorbell(slot: number, gen: number): void {
    let fd: number;
    try {
      fd = openFifoWriter(this.paths.doorbell(slot, gen));
    } catch {
      return; // that process is gone
    }
    try {
      ringFifo(fd);
    } finally {
      libc.close(fd);
    }
  }
}

function need(w: Uint32Array, n: number): void {
  if (w.length < n) throw new Errno('EINVAL', undefined, `expected ${n} words, got ${w.length}`);
}

async function isListening(path: string): Promise<boolean> {
  if (!fs.existsSync(path)) return false;
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

const STALE = /^(ctl\.sock|xenstored\.sock|slots|daemon\.pid|xs-\d+\.\d+\.sock|(mem|gnttab|evtchn)-\d+\.\d+|doorbell-\d+\.\d+)$/;

/** Remove what a previous daemon that died without cleaning up left behind. */
function removeStale(dir: string): void {
  for (const name of fs.readdirSync(dir)) {
    if (STALE.test(name)) fs.rmSync(`${dir}/${name}`, { force: true });
  }
}
