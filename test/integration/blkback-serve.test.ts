// `xenblk serve` on the simulator, every actor its own process: the simulator daemon, the
// backend (the CLI exactly as a user runs it), and a guest. The guest is this same file run
// as a child with XENBLK_BLKBACK_IT_FRONT set: a deliberately small frontend written from
// blkif.h and Linux blkfront's xenbus behaviour (rings, indirect pages, persistent grants,
// reconnect and re-issue after the backend goes away), driven line by line over stdin so the
// test can act between its steps. Data is a pattern of the absolute byte offset, so the test
// checks the backing file's bytes itself.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startSim, readStatus } from '../../lib/sim/start.ts';
import type { SimHandle } from '../../lib/sim/start.ts';
import { attachSim } from '../../lib/sim/attach.ts';
import type { Host } from '../../lib/host/host.ts';
import type { SharedPages } from '../../gnttab/gnttab.ts';
import type { EventChannel } from '../../evtchn/evtchn.ts';
import type { BlkifAbi } from '../../protocol/blkif.ts';
import {
  BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY,
  decodeResponse, encodeIndirectSegments, encodeRequest, newBlkifRequest, newBlkifResponse, ringEntrySize,
} from '../../protocol/blkif.ts';
import type { FrontRing } from '../../protocol/ring.ts';
import {
  entryOffset, finalCheckForResponses, freeRequests, frontRingInit, nextRequestOffset, pushRequestsAndCheckNotify,
  sringInit, unconsumedResponses,
} from '../../protocol/ring.ts';
import { XenbusState, parseXenbusState } from '../../protocol/xenbus-state.ts';
import { vbdPaths } from '../../lib/toolstack/vbd.ts';
import { bundleCli, removeCliBundle } from '../support/cli-bundle.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SELF = fileURLToPath(import.meta.url);
const FE_DOMID = 3;

/** The pattern byte at absolute disk byte `o` for `seed`. */
function patternByte(o: number, seed: number): number {
  return ((Math.floor(o / 512) * 31) + (o % 512) * 7 + seed * 13) & 0xff;
}

// =============================================================================================
// The guest (child process)

interface FrontConfig {
  abi: BlkifAbi;
  order: number;
  queues: number;
  persistent: boolean;
  /** Largest indirect request we send (0: direct only, 11 segments). */
  indirect: number;
  /** Write no `protocol` key (the backend must assume x86_32). */
  noProtocol?: boolean;
  /** Options for `xenblk serve` (the backend's side of the case). */
  serveArgs?: string[];
}

interface Queue {
  pages: SharedPages;
  front: FrontRing;
  port: EventChannel;
}

interface Seg { page: SharedPages; off: number; first: number; last: number }

interface Pending {
  id: number;
  op: number;
  dataOp: number;
  sector: number;
  nrSectors: number;
  secure: boolean;
  segs: Seg[];
  resolve: (status: number) => void;
  sent: boolean;
}

class Guest {
  private cfg: FrontConfig | undefined;
  private queues: Queue[] = [];
  private connected = false;
  private readonly pending = new Map<number, Pending>();
  private readonly backlog: Pending[] = [];
  private nextId = 1;
  private pool: SharedPages[] = [];
  private oldPages: SharedPages[] = [];
  private maxIndirect = 0;
  reissued = 0;
  backendStates: string[] = [];
  private stateWaiters: (() => void)[] = [];
  private reconnecting = false;

  constructor(private readonly host: Host, readonly p: ReturnType<typeof vbdPaths>) {}

  async watchBackend(): Promise<void> {
    const xs = this.host.xenstore;
    const w = xs.watch(`${this.p.backend}/state`);
    for await (const _e of w) {
      const st = await this.backendState();
      this.backendStates.push(String(st));
      for (const f of this.stateWaiters.splice(0)) f();
      await this.onBackendState(st);
    }
  }

  private async backendState(): Promise<XenbusState> {
    // Until the toolstack has created the disk, dom0's backend tree is not ours to read
    // (xenstored answers EACCES rather than reveal what exists there).
    const v = await this.host.xenstore.tryRead(`${this.p.backend}/state`).catch(() => undefined);
    return parseXenbusState(v);
  }

  private async waitBackend(pred: (s: XenbusState) => boolean): Promise<XenbusState> {
    for (;;) {
      const s = await this.backendState();
      if (pred(s)) return s;
      await new Promise<void>((r) => { this.stateWaiters.push(r); setTimeout(r, 100); });
    }
  }

  private async setState(s: XenbusState): Promise<void> {
    await this.host.xenstore.write(`${this.p.frontend}/state`, String(s));
  }

  /** Linux blkfront's reaction to the backend's state (blkback_changed). */
  private async onBackendState(st: XenbusState): Promise<void> {
    if (st === XenbusState.Closed && this.connected) {
      // The backend went away with our rings: forget them, re-issue later (blkif_recover).
      this.connected = false;
      this.dropRings();
      await this.setState(XenbusState.Closed);
      this.reconnect();
    } else if (st === XenbusState.Closing && this.connected) {
      // Hot-unplug asked by the toolstack.
      this.connected = false;
      await this.setState(XenbusState.Closed);
      await this.waitBackend((s) => s === XenbusState.Closed || s === XenbusState.Unknown);
      this.dropRings();
    } else if (st === XenbusState.Connected && this.connected) {
      this.emit({ event: 'capacity', sectors: Number(await this.host.xenstore.tryRead(`${this.p.backend}/sectors`)) });
    }
  }

  private reconnect(): void {
    if (this.reconnecting || this.cfg === undefined) return;
    this.reconnecting = true;
    void (async () => {
      await this.waitBackend((s) => s === XenbusState.InitWait);
      await this.setup(this.cfg!);
      this.reconnecting = false;
      for (const r of [...this.pending.values()].sort((a, b) => a.id - b.id)) {
        if (r.sent) { r.sent = false; this.reissued++; this.backlog.push(r); }
      }
      this.backlog.sort((a, b) => a.id - b.id);
      this.pump();
    })();
  }

  emit(o: object): void {
    process.stdout.write(`${JSON.stringify(o)}\n`);
  }

  async connect(cfg: FrontConfig): Promise<Record<string, string | undefined>> {
    this.cfg = cfg;
    await this.waitBackend((s) => s === XenbusState.InitWait);
    await this.setup(cfg);
    const keys: Record<string, string | undefined> = {};
    for (const k of ['sectors', 'sector-size', 'info', 'feature-persistent', 'feature-flush-cache', 'feature-discard', 'discard-granularity', 'feature-max-indirect-segments', 'hotplug-status']) {
      keys[k] = await this.host.xenstore.tryRead(`${this.p.backend}/${k}`);
    }
    return keys;
  }

  /** talk_to_blkback + connect: rings, keys, Initialised, wait Connected, Connected. */
  private async setup(cfg: FrontConfig): Promise<void> {
    const { sharer, evtchn, xenstore: xs } = this.host;
    const fe = this.p.frontend;
    this.queues = [];
    for (let q = 0; q < cfg.queues; q++) {
      const pages = sharer.share(0, 1 << cfg.order, true);
      const sring = sringInit(new Uint8Array(pages.buffer.buffer, pages.buffer.byteOffset, pages.buffer.byteLength), ringEntrySize(cfg.abi));
      const front = frontRingInit(sring);
      const port = evtchn.allocUnbound(0);
      const queue: Queue = { pages, front, port };
      port.onEvent(() => this.onResponses(queue));
      this.queues.push(queue);
    }
    await xs.transaction(async (tx) => {
      for (const k of ['ring-ref', 'ring-page-order', 'multi-queue-num-queues', 'event-channel']) await tx.rm(`${fe}/${k}`).catch(() => undefined);
      if (cfg.order > 0) await tx.write(`${fe}/ring-page-order`, String(cfg.order));
      if (cfg.queues > 1) await tx.write(`${fe}/multi-queue-num-queues`, String(cfg.queues));
      for (const [q, s] of this.queues.entries()) {
        const dir = cfg.queues > 1 ? `${fe}/queue-${q}` : fe;
        if (cfg.order === 0) await tx.write(`${dir}/ring-ref`, String(s.pages.refs[0]));
        else for (const [i, r] of s.pages.refs.entries()) await tx.write(`${dir}/ring-ref${i}`, String(r));
        await tx.write(`${dir}/event-channel`, String(s.port.localPort));
      }
      if (!cfg.noProtocol) await tx.write(`${fe}/protocol`, `${cfg.abi}-abi`);
      await tx.write(`${fe}/feature-persistent`, cfg.persistent ? '1' : '0');
      await tx.write(`${fe}/state`, String(XenbusState.Initialised));
    });
    await this.waitBackend((s) => s === XenbusState.Connected);
    const adv = Number((await xs.tryRead(`${this.p.backend}/feature-max-indirect-segments`)) ?? '0');
    this.maxIndirect = Math.min(adv, cfg.indirect);
    await this.setState(XenbusState.Connected);
    this.connected = true;
  }

  private dropRings(): void {
    for (const q of this.queues) {
      q.port.close();
      this.oldPages.push(q.pages);
    }
    this.queues = [];
    this.releaseOld();
  }

  /** Ends access to old ring pages once the backend no longer maps them (EBUSY until then). */
  private releaseOld(): void {
    const { sharer } = this.host;
    this.oldPages = this.oldPages.filter((pg) => {
      try { sharer.endAccess(pg); return false; } catch { return true; }
    });
  }

  private takePage(): SharedPages {
    if (this.cfg?.persistent) {
      const pg = this.pool.pop();
      if (pg !== undefined) return pg;
    }
    return this.host.sharer.share(0, 1, true);
  }

  private givePage(pg: SharedPages): void {
    if (this.cfg?.persistent) this.pool.push(pg);
    else this.oldPages.push(pg);
  }

  /** Segment layout for `count` sectors: varied first/last within pages, as a scatter list would give. */
  private segments(count: number, salt: number): Seg[] {
    const segs: Seg[] = [];
    let left = count;
    for (let i = 0; left > 0; i++) {
      const len = Math.min(left, 1 + ((i * 5 + salt) % 8));
      const first = (i + salt) % (8 - len + 1);
      segs.push({ page: this.takePage(), off: count - left, first, last: first + len - 1 });
      left -= len;
    }
    return segs;
  }

  /** Reads/writes `count` sectors at `sector`, cut into requests of at most the negotiated segments. */
  async io(op: number, sector: number, count: number, seed: number): Promise<{ statuses: number[]; mismatches: number }> {
    const maxSegs = this.maxIndirect > 11 ? this.maxIndirect : 11;
    const all = this.segments(count, sector + seed);
    if (op === BLKIF_OP_WRITE) {
      for (const s of all) {
        for (let k = s.first; k <= s.last; k++) {
          const abs = (sector + s.off + (k - s.first)) * 512;
          for (let b = 0; b < 512; b++) s.page.buffer[k * 512 + b] = patternByte(abs + b, seed);
        }
      }
    }
    const reqs: Promise<number>[] = [];
    let done = 0;
    for (let i = 0; i < all.length; i += maxSegs) {
      const segs = all.slice(i, i + maxSegs);
      const first = segs[0]!;
      const nr = segs.reduce((n, s) => n + s.last - s.first + 1, 0);
      const useIndirect = segs.length > 11;
      reqs.push(this.submit(useIndirect ? BLKIF_OP_INDIRECT : op, op, sector + first.off, nr, segs));
      done += nr;
    }
    assert.equal(done, count);
    this.emit({ event: 'submitted', sector, count });
    const statuses = await Promise.all(reqs);
    let mismatches = 0;
    if (op === BLKIF_OP_READ) {
      for (const s of all) {
        for (let k = s.first; k <= s.last; k++) {
          const abs = (sector + s.off + (k - s.first)) * 512;
          for (let b = 0; b < 512; b++) if (s.page.buffer[k * 512 + b] !== patternByte(abs + b, seed)) mismatches++;
        }
      }
    }
    for (const s of all) this.givePage(s.page);
    this.releaseOld();
    return { statuses, mismatches };
  }

  submit(op: number, dataOp: number, sector: number, nrSectors: number, segs: Seg[], secure = false): Promise<number> {
    return new Promise<number>((resolve) => {
      const r: Pending = { id: this.nextId++, op, dataOp, sector, nrSectors, secure, segs, resolve, sent: false };
      this.pending.set(r.id, r);
      this.backlog.push(r);
      this.pump();
    });
  }

  /** Puts queued requests on the rings while there is room. */
  private pump(): void {
    if (!this.connected) return;
    const cfg = this.cfg!;
    const touched = new Set<Queue>();
    while (this.backlog.length > 0) {
      const r = this.backlog[0]!;
      const q = this.queues[r.id % this.queues.length]!;
      if (freeRequests(q.front) === 0) break;
      this.backlog.shift();
      const req = newBlkifRequest();
      req.idLo = r.id;
      req.operation = r.op;
      req.dataOp = r.dataOp;
      req.sectorNumber = r.sector;
      req.nrSectors = r.nrSectors;
      req.discardFlag = r.secure ? 1 : 0;
      req.nrSegments = r.segs.length;
      r.segs.forEach((s, i) => { req.segGref[i] = s.page.refs[0]!; req.segFirst[i] = s.first; req.segLast[i] = s.last; });
      if (r.op === BLKIF_OP_INDIRECT) {
        const ind = this.host.sharer.share(0, Math.ceil(r.segs.length / 512), false);
        encodeIndirectSegments(ind.buffer, req);
        req.nrIndirectPages = ind.refs.length;
        ind.refs.forEach((g, i) => { req.indirectGrefs[i] = g; });
        this.oldPages.push(ind);
      }
      encodeRequest(cfg.abi, q.front.sring.bytes, nextRequestOffset(q.front), req);
      r.sent = true;
      touched.add(q);
    }
    for (const q of touched) {
      if (!pushRequestsAndCheckNotify(q.front)) continue;
      try {
        q.port.notify();
      } catch {
        // The backend's end is gone (it died): the requests wait in the ring for recovery.
      }
    }
  }

  private onResponses(q: Queue): void {
    const rsp = newBlkifResponse();
    const abi = this.cfg!.abi;
    do {
      while (unconsumedResponses(q.front) > 0) {
        decodeResponse(abi, q.front.sring.bytes, entryOffset(q.front.sring, q.front.rspCons), rsp);
        q.front.rspCons = (q.front.rspCons + 1) >>> 0;
        const r = this.pending.get(rsp.idLo);
        if (r === undefined || !r.sent) {
          this.emit({ event: 'protocol-error', id: rsp.idLo });
          continue;
        }
        this.pending.delete(r.id);
        r.resolve(rsp.status);
      }
    } while (finalCheckForResponses(q.front));
    this.pump();
  }

  async close(): Promise<void> {
    this.connected = false;
    await this.setState(XenbusState.Closing);
    await this.waitBackend((s) => s === XenbusState.Closing || s === XenbusState.Closed);
    await this.setState(XenbusState.Closed);
    await this.waitBackend((s) => s === XenbusState.Closed || s === XenbusState.Unknown);
    this.dropRings();
  }

  async leftovers(): Promise<number> {
    for (let i = 0; i < 50 && this.oldPages.length > 0; i++) {
      this.releaseOld();
      await new Promise((r) => setTimeout(r, 20));
    }
    for (const pg of this.pool.splice(0)) this.oldPages.push(pg);
    this.releaseOld();
    return this.oldPages.length;
  }
}

async function guestMain(): Promise<void> {
  const { dir, vdev } = JSON.parse(process.env.XENBLK_BLKBACK_IT_FRONT!) as { dir: string; vdev: string };
  const host = await attachSim({ dir, domid: FE_DOMID });
  const g = new Guest(host, vbdPaths(FE_DOMID, vdev, 0));
  void g.watchBackend().catch(() => undefined);
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const cmd = JSON.parse(line) as { n: number; op: string; [k: string]: unknown };
    let out: object;
    try {
      switch (cmd.op) {
        case 'init': await host.xenstore.write(`${g.p.frontend}/state`, String(XenbusState.Initialising)); out = {}; break;
        case 'connect': out = { keys: await g.connect(cmd.cfg as FrontConfig) }; break;
        case 'write': out = await g.io(BLKIF_OP_WRITE, cmd.sector as number, cmd.count as number, cmd.seed as number); break;
        case 'read': out = await g.io(BLKIF_OP_READ, cmd.sector as number, cmd.count as number, cmd.seed as number); break;
        case 'flush': out = { statuses: [await g.submit(BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_FLUSH_DISKCACHE, 0, 0, [])] }; break;
        case 'discard': out = { statuses: [await g.submit(BLKIF_OP_DISCARD, BLKIF_OP_DISCARD, cmd.sector as number, cmd.count as number, [], cmd.secure === true)] }; break;
        case 'close': await g.close(); out = { leftovers: await g.leftovers() }; break;
        case 'leftovers': out = { leftovers: await g.leftovers() }; break;
        case 'stats': out = { reissued: g.reissued, backendStates: g.backendStates }; break;
        case 'exit': await host.close(); process.exit(0); break;
        default: out = { error: `unknown op ${cmd.op}` };
      }
    } catch (e) {
      out = { error: e instanceof Error ? e.stack ?? e.message : String(e) };
    }
    process.stdout.write(`${JSON.stringify({ re: cmd.n, ...out })}\n`);
  }
}

// =============================================================================================
// The test (parent process)

/** A guest process driven over stdin/stdout. */
class GuestProc {
  readonly child: ChildProcess;
  private n = 0;
  private readonly waiting = new Map<number, (v: Record<string, unknown>) => void>();
  readonly events: Record<string, unknown>[] = [];
  stderr = '';

  constructor(dir: string, vdev: string) {
    this.child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), SELF], {
      cwd: ROOT, env: { ...process.env, XENBLK_BLKBACK_IT_FRONT: JSON.stringify({ dir, vdev }) }, stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr!.on('data', (b: Buffer) => { this.stderr += b.toString(); });
    const rl = readline.createInterface({ input: this.child.stdout! });
    rl.on('line', (line) => {
      const v = JSON.parse(line) as Record<string, unknown>;
      if (typeof v.re === 'number') {
        this.waiting.get(v.re)?.(v);
        this.waiting.delete(v.re);
      } else this.events.push(v);
    });
  }

  send(op: string, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const n = ++this.n;
    return new Promise((resolve, reject) => {
      const onExit = (): void => reject(new Error(`guest exited during ${op}: ${this.stderr}`));
      this.child.once('exit', onExit);
      this.waiting.set(n, (v) => {
        this.child.off('exit', onExit);
        if (typeof v.error === 'string') reject(new Error(`guest ${op}: ${v.error}`));
        else resolve(v);
      });
      this.child.stdin!.write(`${JSON.stringify({ n, op, ...args })}\n`);
    });
  }

  async exit(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const done = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.stdin!.write(`${JSON.stringify({ n: ++this.n, op: 'exit' })}\n`);
    await done;
  }

  kill(): Promise<void> {
    const done = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGKILL');
    return done;
  }
}

/** `xenblk serve` as a user runs it (through the CLI entry, from the sources). */
class ServeProc {
  readonly child: ChildProcess;
  stderr = '';
  readonly exited: Promise<number | null>;

  constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [shared.bundle, 'serve', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env });
    this.child.stderr!.on('data', (b: Buffer) => { this.stderr += b.toString(); });
    this.child.stdout!.resume();
    this.exited = new Promise((r) => this.child.once('exit', (code) => r(code)));
  }

  async stop(signal: NodeJS.Signals = 'SIGINT'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

function xenblk(args: string[], env: NodeJS.ProcessEnv = process.env): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [shared.bundle, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 30_000, env });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * One simulator for the whole file and the CLI bundled as `npm run build` bundles it (it starts
 * several times faster than through tsx). The bundle goes to the git-ignored test/.build so it
 * resolves koffi from the tree's node_modules.
 */
const shared = { bundle: '', sim: undefined as SimHandle | undefined };

interface Setup {
  sim: SimHandle;
  dir: string;
  image: string;
  runDir: string;
  env: NodeJS.ProcessEnv;
  serve(extra?: string[]): ServeProc;
  guest(vdev?: string): GuestProc;
}

async function startShared(): Promise<void> {
  shared.bundle = bundleCli('blkback-serve');
  // The simulator's memory is MAP_SHARED files: keep them on tmpfs, with a short socket path.
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'xbit-'));
  shared.sim = await startSim({ dir, nrFrames: 16384 });
}

async function stopShared(): Promise<void> {
  if (shared.sim !== undefined) {
    await shared.sim.stop();
    fs.rmSync(shared.sim.dir, { recursive: true, force: true });
  }
  removeCliBundle(shared.bundle);
}

async function setup(t: { after: (f: () => Promise<void>) => void }, size = 8 << 20): Promise<Setup> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-it-'));
  const sim = shared.sim!;
  const dir = sim.dir;
  const runDir = path.join(work, 'run');
  const image = path.join(work, 'disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, size);
  const procs: (ServeProc | GuestProc)[] = [];
  const env = { ...process.env, XENBLK_RUN_DIR: runDir };
  const s: Setup = {
    sim, dir, image, runDir, env,
    serve(extra = []) {
      // XENBLK_RUN_DIR: the control socket goes to the test's own run dir.
      const sp = new ServeProc([image, '--domid', String(FE_DOMID), '--vdev', 'xvdb', '--sim', dir, ...extra], env);
      procs.push(sp);
      return sp;
    },
    guest(vdev = 'xvdb') {
      const g = new GuestProc(dir, vdev);
      procs.push(g);
      return g;
    },
  };
  t.after(async () => {
    for (const p of procs) {
      if (p.child.exitCode === null && p.child.signalCode === null) {
        // Still running at the end: the test failed or hung; say what it was doing.
        process.stderr.write(`--- ${p instanceof ServeProc ? 'serve' : 'guest'} pid ${p.child.pid} still running; its stderr:\n${p.stderr}\n`);
        const done = new Promise<void>((r) => p.child.once('exit', () => r()));
        p.child.kill('SIGKILL');
        await done;
      }
    }
    fs.rmSync(work, { recursive: true, force: true });
  });
  return s;
}

async function until<T>(f: () => T | undefined | false, what: string, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Checks the file holds the pattern for [sector, sector+count). */
function checkFile(image: string, sector: number, count: number, seed: number): void {
  const fd = fs.openSync(image, 'r');
  try {
    const b = Buffer.alloc(count * 512);
    fs.readSync(fd, b, 0, b.length, sector * 512);
    let bad = 0;
    for (let i = 0; i < b.length; i++) if (b[i] !== patternByte(sector * 512 + i, seed)) bad++;
    assert.equal(bad, 0, `file bytes of sectors [${sector}, ${sector + count}) differ from what the guest wrote`);
  } finally {
    fs.closeSync(fd);
  }
}

/** Nothing mapped, no port bound, in any domain of the simulator. */
function assertSimClean(dir: string): void {
  const st = readStatus(dir);
  for (const d of st.domains) {
    for (const p of d.processes) assert.equal(p.mappedPages, 0, `domain ${d.domid} process ${p.pid} still maps pages`);
    assert.deepEqual(d.ports, [], `domain ${d.domid} still has ports`);
    assert.equal(d.grantsMapped, 0, `domain ${d.domid} grants still mapped`);
  }
}

const MATRIX: FrontConfig[] = [
  { abi: 'x86_64', order: 0, queues: 1, persistent: false, indirect: 0 },
  { abi: 'x86_32', order: 4, queues: 4, persistent: true, indirect: 64 },
  { abi: 'x86_32', order: 0, queues: 4, persistent: false, indirect: 256, noProtocol: true },
  // Grant copy: the frontend offers persistent grants, the backend does not take them.
  { abi: 'x86_64', order: 2, queues: 2, persistent: true, indirect: 64, serveArgs: ['--grant-copy'] },
];

if (process.env.XENBLK_BLKBACK_IT_FRONT !== undefined) {
  await guestMain();
} else {
  before(startShared);
  after(stopShared);
  for (const cfg of MATRIX) {
    const name = `${cfg.abi}${cfg.noProtocol ? ' (no protocol key)' : ''}, ring order ${cfg.order}, ${cfg.queues} queue(s), persistent ${cfg.persistent ? 'on' : 'off'}, indirect ${cfg.indirect || 'off'}${cfg.serveArgs ? `, serve ${cfg.serveArgs.join(' ')}` : ''}`;
    test(`serve: ${name}: data lands in the file and reads back, flush, discard, clean hot-unplug`, { timeout: 120_000 }, async (t) => {
      const s = await setup(t);
      const serve = s.serve(cfg.serveArgs);
      const g = s.guest();
      const { keys } = await g.send('connect', { cfg }) as { keys: Record<string, string> };
      const copies = cfg.serveArgs?.includes('--grant-copy') === true;
      assert.equal(keys['feature-persistent'], copies ? '0' : '1', 'a grant-copy backend offers no persistent grants');
      assert.equal(keys.sectors, String(16384));
      assert.equal(keys['hotplug-status'], 'connected');
      assert.equal(keys['feature-flush-cache'], '1');
      const writes: [number, number, number][] = [[0, 1, 1], [7, 100, 2], [1000, 700, 3], [16384 - 90, 90, 4]];
      for (const [sector, count, seed] of writes) {
        const r = await g.send('write', { sector, count, seed }) as { statuses: number[] };
        assert.ok(r.statuses.every((x) => x === BLKIF_RSP_OKAY), `write ${sector}+${count}: ${r.statuses}`);
      }
      for (const [sector, count, seed] of writes) {
        const r = await g.send('read', { sector, count, seed }) as { statuses: number[]; mismatches: number };
        assert.ok(r.statuses.every((x) => x === BLKIF_RSP_OKAY));
        assert.equal(r.mismatches, 0, `read back ${sector}+${count}`);
      }
      assert.deepEqual((await g.send('flush')).statuses, [BLKIF_RSP_OKAY]);
      for (const [sector, count, seed] of writes) checkFile(s.image, sector, count, seed);
      // Discard: reads back zeros, and the file has a hole there.
      const before = fs.statSync(s.image).blocks;
      assert.deepEqual((await g.send('discard', { sector: 1000, count: 512 })).statuses, [BLKIF_RSP_OKAY]);
      const zero = await g.send('read', { sector: 1000, count: 512, seed: -1 }) as { mismatches: number };
      assert.ok(zero.mismatches > 0, 'sanity: zeros are not the pattern');
      const bytes = fs.readFileSync(s.image).subarray(1000 * 512, 1512 * 512);
      assert.ok(bytes.every((x) => x === 0), 'discarded range reads as zeros in the file');
      assert.ok(fs.statSync(s.image).blocks < before, 'the file has a hole where the discard was');
      // An error does not stall anything: a write past the end fails, the next one works.
      const past = await g.send('write', { sector: 16384 - 4, count: 8, seed: 5 }) as { statuses: number[] };
      assert.ok(past.statuses.some((x) => x !== BLKIF_RSP_OKAY));
      assert.deepEqual((await g.send('write', { sector: 8, count: 8, seed: 6 }) as { statuses: number[] }).statuses.every((x) => x === 0), true);

      // Statistics through `xenblk stats --json`.
      const stats = xenblk(['stats', '--json', '--run-dir', s.runDir]);
      assert.equal(stats.code, 0, stats.stderr);
      const rep = JSON.parse(stats.stdout) as { disks: { grantCopy: boolean; persistent: boolean; stats: { wr_req: number; rd_req: number; ds_req: number; f_req: number; errors: number; persistent_grants: number } }[] }[];
      assert.equal(rep.length, 1);
      const st = rep[0]!.disks[0]!.stats;
      assert.equal(rep[0]!.disks[0]!.grantCopy, copies);
      assert.equal(rep[0]!.disks[0]!.persistent, cfg.persistent && !copies);
      if (copies) assert.equal(st.persistent_grants, 0, 'nothing of the guest stays mapped');
      assert.ok(st.wr_req >= 5 && st.rd_req >= 5 && st.ds_req === 1 && st.f_req === 1 && st.errors >= 1, JSON.stringify(st));
      const human = xenblk(['stats', '--run-dir', s.runDir]);
      assert.equal(human.code, 0, human.stderr);
      assert.match(human.stdout, /^PID +DOMID +VDEV +STATE +RD_REQ +WR_REQ/);
      assert.match(human.stdout, /\n[0-9]+ +3 +xvdb +Connected +[0-9]+/);
      const table = xenblk(['list', '--sim', s.dir]);
      assert.equal(table.code, 0, table.stderr);
      assert.match(table.stdout, /\n3 +xvdb +51728 +Connected +Connected +16384 +w +/);
      const list = xenblk(['list', '--json', '--sim', s.dir]);
      assert.equal(list.code, 0, list.stderr);
      const disks = JSON.parse(list.stdout) as { vdev: string; backendState: string; frontendState: string; queues?: number }[];
      assert.deepEqual(disks.map((d) => [d.vdev, d.backendState, d.frontendState]), [['xvdb', 'Connected', 'Connected']]);

      // Ctrl-C on serve: hot-unplug; the guest closes its side; serve exits 0 having removed the disk.
      const code = await serve.stop('SIGINT');
      assert.equal(code, 0, serve.stderr);
      const seen = (await g.send('stats')).backendStates as string[];
      assert.ok(seen.includes(String(XenbusState.Closing)), `the guest saw the backend close: ${seen}`);
      const left = await g.send('leftovers') as { leftovers: number };
      assert.equal(left.leftovers, 0, 'every page the guest granted could be revoked: the backend unmapped all');
      await g.exit();
      assertSimClean(s.dir);
      assert.equal(fs.readdirSync(s.runDir).length, 0, 'serve removed its control socket');
    });
  }

  test('backend restart: kill -9 with requests outstanding; the new backend says Closed, the guest reconnects and re-issues, nothing acknowledged is lost', { timeout: 120_000 }, async (t) => {
    const s = await setup(t, 32 << 20);
    const first = s.serve();
    const g = s.guest();
    await g.send('connect', { cfg: { abi: 'x86_64', order: 1, queues: 2, persistent: true, indirect: 32 } });
    const w1 = await g.send('write', { sector: 0, count: 2048, seed: 1 }) as { statuses: number[] };
    assert.ok(w1.statuses.every((x) => x === 0));
    // The backend dies; a write is issued while nobody serves the rings.
    first.child.kill('SIGKILL');
    await first.exited;
    const pending = g.send('write', { sector: 2048, count: 4096, seed: 2 });
    await until(() => g.events.find((e) => e.event === 'submitted' && e.sector === 2048), 'the write was put on the rings');
    const second = s.serve();
    const w2 = await pending as { statuses: number[] };
    assert.ok(w2.statuses.every((x) => x === 0), `all answered OKAY after recovery: ${w2.statuses}`);
    const st1 = await g.send('stats') as { reissued: number; backendStates: string[] };
    assert.ok(st1.reissued > 0, 'requests left on the dead backend\'s rings were re-issued');
    assert.ok(st1.backendStates.includes(String(XenbusState.Closed)), 'the new backend announced Closed');
    // Again, killed while a large write is in flight.
    const big = g.send('write', { sector: 8192, count: 32768, seed: 3 });
    await until(() => g.events.find((e) => e.event === 'submitted' && e.sector === 8192), 'the big write was submitted');
    second.child.kill('SIGKILL');
    await second.exited;
    const third = s.serve();
    const w3 = await big as { statuses: number[] };
    assert.ok(w3.statuses.every((x) => x === 0));
    checkFile(s.image, 0, 2048, 1);
    checkFile(s.image, 2048, 4096, 2);
    checkFile(s.image, 8192, 32768, 3);
    const r = await g.send('read', { sector: 2048, count: 4096, seed: 2 }) as { mismatches: number };
    assert.equal(r.mismatches, 0);
    assert.equal(await third.stop('SIGINT'), 0, third.stderr);
    assert.equal((await g.send('leftovers') as { leftovers: number }).leftovers, 0);
    await g.exit();
    assertSimClean(s.dir);
  });

  test('frontend restart: a new guest process of the same domain reconnects; the old rings are released', { timeout: 120_000 }, async (t) => {
    const s = await setup(t);
    const serve = s.serve();
    const keeper = s.guest(); // keeps domain 3 alive while the other guest process dies
    await keeper.send('stats');
    const g1 = s.guest();
    await g1.send('connect', { cfg: { abi: 'x86_64', order: 2, queues: 2, persistent: true, indirect: 64 } });
    assert.ok(((await g1.send('write', { sector: 64, count: 300, seed: 9 })).statuses as number[]).every((x) => x === 0));
    await g1.kill();
    const g2 = s.guest();
    await g2.send('init');
    await g2.send('connect', { cfg: { abi: 'x86_32', order: 0, queues: 1, persistent: false, indirect: 0 } });
    const r = await g2.send('read', { sector: 64, count: 300, seed: 9 }) as { mismatches: number; statuses: number[] };
    assert.equal(r.mismatches, 0, 'the new guest reads what the old one wrote');
    const st = readStatus(s.dir);
    const dom0 = st.domains.find((d) => d.domid === 0)!;
    const mapped = dom0.processes.reduce((n, p) => n + p.mappedPages, 0);
    assert.equal(mapped, 1, 'the backend maps only the new guest\'s one ring page');
    assert.equal(await serve.stop('SIGINT'), 0, serve.stderr);
    assert.equal((await g2.send('leftovers') as { leftovers: number }).leftovers, 0);
    await g2.exit();
    await keeper.exit();
    assertSimClean(s.dir);
  });

  test('resize while connected: the guest sees Connected again with the new size and can use it; read-only refuses writes', { timeout: 120_000 }, async (t) => {
    const s = await setup(t, 4 << 20);
    const serve = s.serve();
    const g = s.guest();
    const { keys } = await g.send('connect', { cfg: { abi: 'x86_64', order: 0, queues: 1, persistent: false, indirect: 0 } }) as { keys: Record<string, string> };
    assert.equal(keys.sectors, '8192');
    const past = await g.send('write', { sector: 9000, count: 8, seed: 1 }) as { statuses: number[] };
    assert.ok(past.statuses.every((x) => x !== 0), 'beyond the end before the resize');
    fs.truncateSync(s.image, 8 << 20);
    const ev = await until(() => g.events.find((e) => e.event === 'capacity' && e.sectors === 16384), 'the guest saw the new capacity');
    assert.ok(ev);
    const w = await g.send('write', { sector: 9000, count: 8, seed: 1 }) as { statuses: number[] };
    assert.ok(w.statuses.every((x) => x === 0));
    checkFile(s.image, 9000, 8, 1);
    assert.equal(await serve.stop('SIGTERM'), 0, serve.stderr);
    await g.send('leftovers');
    await g.exit();

    const ro = s.serve(['--readonly']);
    const h = s.guest();
    const r = await h.send('connect', { cfg: { abi: 'x86_64', order: 0, queues: 1, persistent: true, indirect: 0 } }) as { keys: Record<string, string> };
    assert.equal(Number(r.keys.info) & 4, 4, 'info has VDISK_READONLY');
    assert.equal(r.keys['feature-discard'], '0');
    const before = fs.readFileSync(s.image);
    const wr = await h.send('write', { sector: 0, count: 16, seed: 7 }) as { statuses: number[] };
    assert.ok(wr.statuses.every((x) => x !== 0), 'writes refused');
    const rd = await h.send('read', { sector: 9000, count: 8, seed: 1 }) as { mismatches: number };
    assert.equal(rd.mismatches, 0);
    assert.ok(before.equals(fs.readFileSync(s.image)), 'the file is unchanged');
    assert.equal(await ro.stop('SIGINT'), 0, ro.stderr);
    await h.send('leftovers');
    await h.exit();
    assertSimClean(s.dir);
  });

  test('examples/serve-file.ts serves a file to a guest and stops cleanly on SIGINT', { timeout: 120_000 }, async (t) => {
    const s = await setup(t, 1 << 20);
    const g = s.guest('xvdc');
    const ex = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), path.join(ROOT, 'examples/serve-file.ts'), s.image, String(FE_DOMID), 'xvdc'], {
      cwd: ROOT, env: { ...s.env, XENBLK_SIM_DIR: s.dir }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    ex.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    ex.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
    const exited = new Promise<number | null>((r) => ex.once('exit', (c) => r(c)));
    t.after(async () => { if (ex.exitCode === null && ex.signalCode === null) { ex.kill('SIGKILL'); await exited; } });
    await g.send('connect', { cfg: { abi: 'x86_64', order: 0, queues: 1, persistent: true, indirect: 0 } });
    assert.ok(((await g.send('write', { sector: 24, count: 40, seed: 11 })).statuses as number[]).every((x) => x === 0));
    checkFile(s.image, 24, 40, 11);
    assert.match(out, /serving .* to domain 3 as xvdc/);
    ex.kill('SIGINT');
    assert.equal(await exited, 0, out);
    assert.match(out, /stopped/);
    await g.send('leftovers');
    await g.exit();
    assertSimClean(s.dir);
  });
}
