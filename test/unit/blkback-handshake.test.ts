// blkback's xenbus handshake end to end in one process: our in-memory xenstored on Unix sockets
// (dom0 and the frontend domain each on their own socket, so permissions apply), the memory
// platform for grants and channels, our toolstack creating the disk, and a small frontend
// written here from blkif.h (xenbus keys, ring setup, requests) that plays the guest.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createXenstored } from '../../xenstore/server/xenstored.ts';
import { connect } from '../../xenstore/connect.ts';
import type { Xenstore } from '../../xenstore/xenstore.ts';
import { createMemoryPlatform } from '../support/memory-host.ts';
import type { MemoryPlatform } from '../support/memory-host.ts';
import type { SharedPages } from '../../gnttab/gnttab.ts';
import type { EventChannel } from '../../evtchn/evtchn.ts';
import type { BlkifAbi, BlkifRequest } from '../../protocol/blkif.ts';
import {
  BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, VDISK_READONLY, decodeResponse, encodeRequest,
  newBlkifRequest, newBlkifResponse, ringEntrySize,
} from '../../protocol/blkif.ts';
import type { FrontRing } from '../../protocol/ring.ts';
import {
  entryOffset, finalCheckForResponses, frontRingInit, nextRequestOffset, pushRequestsAndCheckNotify, sringInit,
  unconsumedResponses,
} from '../../protocol/ring.ts';
import { XenbusState, parseXenbusState } from '../../protocol/xenbus-state.ts';
import { createRamDisk } from '../../lib/backends/ram.ts';
import type { RamDisk } from '../../lib/backends/ram.ts';
import { Blkback } from '../../lib/blkback/backend.ts';
import type { BlkbackOptions } from '../../lib/blkback/backend.ts';
import { createVbd, removeVbd, waitForState } from '../../lib/toolstack/vbd.ts';
import type { VbdPaths } from '../../lib/toolstack/vbd.ts';
import { listVbds } from '../../lib/toolstack/list.ts';

const FE = 5;

interface World {
  plat: MemoryPlatform;
  xs0: Xenstore;
  xsFe: Xenstore;
  disks: Map<string, RamDisk>;
  startBackend(opts?: Partial<BlkbackOptions>): Promise<Blkback>;
  /** A second dom0 connection (a restarted backend process gets its own). */
  dom0(): Promise<Xenstore>;
}

async function world(t: { after: (f: () => Promise<void> | void) => void }): Promise<World> {
  const dir = mkdtempSync(join(tmpdir(), 'xenblk-hs-'));
  const xsd = createXenstored();
  await xsd.listen(join(dir, 'dom0.sock'), 0);
  await xsd.listen(join(dir, 'fe.sock'), FE);
  const conns: Xenstore[] = [];
  const open = async (sock: string): Promise<Xenstore> => {
    const c = await connect({ socketPath: join(dir, sock) });
    conns.push(c);
    return c;
  };
  const backends: Blkback[] = [];
  const plat = createMemoryPlatform({ ramPages: 4096 });
  const disks = new Map<string, RamDisk>();
  const w: World = {
    plat,
    xs0: await open('dom0.sock'),
    xsFe: await open('fe.sock'),
    disks,
    dom0: () => open('dom0.sock'),
    async startBackend(opts = {}) {
      const xs = opts.host?.xenstore ?? await open('dom0.sock');
      const b = await Blkback.start({
        host: opts.host ?? plat.host(0, xs),
        resizePollMs: 0,
        restartGraceMs: 500,
        openBacking: async (r) => {
          const m = /^ram:([0-9]+)$/.exec(r.params);
          assert.ok(m, `test params are ram:<bytes>, got ${r.params}`);
          // One RAM disk per params for the whole test, so a restarted backend finds the data.
          const d = disks.get(r.params) ?? createRamDisk({ size: Number(m[1]), readonly: r.readonly });
          disks.set(r.params, d);
          return { ...d, close: async () => {} };
        },
        ...opts,
      });
      backends.push(b);
      return b;
    },
  };
  t.after(async () => {
    for (const b of backends) await b.stop();
    for (const c of conns) await c.close().catch(() => undefined);
    await xsd.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return w;
}

async function waitState(xs: Xenstore, path: string, want: XenbusState): Promise<void> {
  assert.ok(await waitForState(xs, `${path}/state`, want, 5000), `${path}/state never became ${want} (is ${await xs.tryRead(`${path}/state`)})`);
}

interface Rsp { status: number; operation: number }

/** The guest side: rings, channels and requests, keyed as blkif.h and Linux blkfront write them. */
class TestFront {
  private queuesState: { pages: SharedPages; front: FrontRing; port: EventChannel; waiting: Map<number, (r: Rsp) => void> }[] = [];
  private nextId = 1;
  readonly dataPages: SharedPages[] = [];

  constructor(
    private readonly w: World,
    readonly p: VbdPaths,
    private readonly opts: { abi?: BlkifAbi; order?: number; queues?: number; protocol?: string | null; persistent?: boolean; extra?: [string, string][] } = {},
  ) {}

  get abi(): BlkifAbi {
    return this.opts.abi ?? 'x86_64';
  }

  /** Sets up rings and channels, publishes them and goes Initialised (talk_to_blkback). */
  async publish(): Promise<void> {
    const { plat, xsFe } = this.w;
    const order = this.opts.order ?? 0;
    const queues = this.opts.queues ?? 1;
    const sharer = plat.sharer(FE);
    const ev = plat.evtchn(FE);
    this.queuesState = [];
    for (let q = 0; q < queues; q++) {
      const pages = sharer.share(0, 1 << order, true);
      const sring = sringInit(new Uint8Array(pages.buffer.buffer, pages.buffer.byteOffset, pages.buffer.byteLength), ringEntrySize(this.abi));
      const front = frontRingInit(sring);
      const port = ev.allocUnbound(0);
      const waiting = new Map<number, (r: Rsp) => void>();
      const rsp = newBlkifResponse();
      port.onEvent(() => {
        do {
          while (unconsumedResponses(front) > 0) {
            decodeResponse(this.abi, sring.bytes, entryOffset(sring, front.rspCons), rsp);
            front.rspCons = (front.rspCons + 1) >>> 0;
            const f = waiting.get(rsp.idLo);
            waiting.delete(rsp.idLo);
            f?.({ status: rsp.status, operation: rsp.operation });
          }
        } while (finalCheckForResponses(front));
      });
      this.queuesState.push({ pages, front, port, waiting });
    }
    const fe = this.p.frontend;
    await xsFe.transaction(async (tx) => {
      if (order > 0) await tx.write(`${fe}/ring-page-order`, String(order));
      if (queues > 1) await tx.write(`${fe}/multi-queue-num-queues`, String(queues));
      for (const [q, s] of this.queuesState.entries()) {
        const dir = queues > 1 ? `${fe}/queue-${q}` : fe;
        if (order === 0) await tx.write(`${dir}/ring-ref`, String(s.pages.refs[0]));
        else for (const [i, r] of s.pages.refs.entries()) await tx.write(`${dir}/ring-ref${i}`, String(r));
        await tx.write(`${dir}/event-channel`, String(s.port.localPort));
      }
      const proto = this.opts.protocol === undefined ? `${this.abi}-abi` : this.opts.protocol;
      if (proto !== null) await tx.write(`${fe}/protocol`, proto);
      await tx.write(`${fe}/feature-persistent`, this.opts.persistent ? '1' : '0');
      for (const [k, v] of this.opts.extra ?? []) await tx.write(`${fe}/${k}`, v);
      await tx.write(`${fe}/state`, String(XenbusState.Initialised));
    });
  }

  async connect(): Promise<void> {
    await waitState(this.w.xs0, this.p.backend, XenbusState.InitWait);
    await this.publish();
    await waitState(this.w.xsFe, this.p.backend, XenbusState.Connected);
    await this.w.xsFe.write(`${this.p.frontend}/state`, String(XenbusState.Connected));
  }

  page(fill = 0): SharedPages {
    const pg = this.w.plat.sharer(FE).share(0, 1, true);
    pg.buffer.fill(fill);
    this.dataPages.push(pg);
    return pg;
  }

  submit(q: number, fields: Partial<BlkifRequest> & { pages?: SharedPages[] }): Promise<Rsp> {
    const s = this.queuesState[q]!;
    const req = newBlkifRequest();
    const id = this.nextId++;
    req.idLo = id;
    req.operation = fields.operation ?? BLKIF_OP_READ;
    req.dataOp = req.operation;
    req.sectorNumber = fields.sectorNumber ?? 0;
    const pages = fields.pages ?? [];
    req.nrSegments = pages.length;
    pages.forEach((pg, i) => { req.segGref[i] = pg.refs[0]!; req.segFirst[i] = 0; req.segLast[i] = 7; });
    encodeRequest(this.abi, s.front.sring.bytes, nextRequestOffset(s.front), req);
    const r = new Promise<Rsp>((resolve) => s.waiting.set(id, resolve));
    if (pushRequestsAndCheckNotify(s.front)) s.port.notify();
    return r;
  }

  async setState(st: XenbusState): Promise<void> {
    await this.w.xsFe.write(`${this.p.frontend}/state`, String(st));
  }

  /** Releases rings, channels and data pages (throws EBUSY if the backend still maps any). */
  release(): void {
    const sharer = this.w.plat.sharer(FE);
    for (const s of this.queuesState) {
      s.port.close();
      sharer.endAccess(s.pages);
    }
    this.queuesState = [];
    for (const pg of this.dataPages.splice(0)) sharer.endAccess(pg);
  }
}

test('create, InitWait with features, connect, I/O, close and reconnect with 4 queues of 4 pages', async (t) => {
  const w = await world(t);
  const p = await createVbd(w.xs0, { frontendDomid: FE, vdev: 'xvdb', params: 'ram:1048576' });
  assert.equal(p.devid, 51728);
  assert.equal(p.backend, `/local/domain/0/backend/vbd/${FE}/51728`);
  assert.deepEqual(await w.xs0.getPermissions(p.backend), [{ domid: 0, perm: 'n' }, { domid: FE, perm: 'r' }]);
  assert.deepEqual(await w.xs0.getPermissions(p.frontend), [{ domid: FE, perm: 'n' }, { domid: 0, perm: 'r' }]);
  await assert.rejects(w.xsFe.write(`${p.backend}/sectors`, '1'), (e: { code?: string }) => e.code === 'EACCES', 'the frontend cannot write the backend half');

  const back = await w.startBackend();
  await waitState(w.xs0, p.backend, XenbusState.InitWait);
  const r = (k: string): Promise<string | undefined> => w.xsFe.tryRead(`${p.backend}/${k}`);
  assert.equal(await r('hotplug-status'), 'connected');
  assert.equal(await r('max-ring-page-order'), '4');
  assert.equal(await r('multi-queue-max-queues'), '4');
  assert.equal(await r('feature-max-indirect-segments'), '256');
  assert.equal(await r('feature-persistent'), '1');
  assert.equal(await r('feature-discard'), '1');

  const f = new TestFront(w, p);
  await f.connect();
  assert.equal(await r('sectors'), '2048');
  assert.equal(await r('sector-size'), '512');
  assert.equal(await r('physical-sector-size'), '512');
  assert.equal(await r('info'), '0');
  const disk = w.disks.get('ram:1048576')!;
  assert.equal((await f.submit(0, { operation: BLKIF_OP_WRITE, sectorNumber: 16, pages: [f.page(0x5a)] })).status, BLKIF_RSP_OKAY);
  assert.equal(disk.data[16 * 512], 0x5a);
  assert.equal(back.disks()[0]!.stats.wr_req, 1);

  // Frontend closes: Closing, then Closed; the device stays (online=1) with nothing mapped.
  await f.setState(XenbusState.Closing);
  await waitState(w.xs0, p.backend, XenbusState.Closing);
  await f.setState(XenbusState.Closed);
  await waitState(w.xs0, p.backend, XenbusState.Closed);
  await back.waitFor(() => back.device(FE, p.devid)?.ringServices.length === 0);
  assert.equal(w.plat.usage(0).mappings, 0);
  assert.equal(w.plat.usage(0).ports, 0);
  f.release();

  // It comes back with 4 queues of 4 pages: Initialising -> InitWait -> Initialised -> Connected.
  const g = new TestFront(w, p, { order: 2, queues: 4 });
  await g.setState(XenbusState.Initialising);
  await g.connect();
  assert.equal(back.device(FE, p.devid)!.ringServices.length, 4);
  assert.equal(back.device(FE, p.devid)!.ringServices[0]!.ringSize, 128);
  const into = [g.page(), g.page(), g.page(), g.page()];
  const rs = await Promise.all(into.map((pg, q) => g.submit(q, { operation: BLKIF_OP_READ, sectorNumber: 16, pages: [pg] })));
  assert.deepEqual(rs.map((x) => x.status), [0, 0, 0, 0]);
  for (const pg of into) assert.equal(pg.buffer[0], 0x5a);
  const listing = await listVbds(w.xs0);
  assert.equal(listing.length, 1);
  assert.equal(listing[0]!.vdev, 'xvdb');
  assert.equal(listing[0]!.backendState, 'Connected');
  assert.equal(listing[0]!.queues, 4);

  // Hot-unplug: the toolstack asks, the frontend closes, the backend closes and lets go.
  const removal = removeVbd(w.xs0, p, { timeoutMs: 5000 });
  await waitState(w.xsFe, p.backend, XenbusState.Closing);
  await g.setState(XenbusState.Closed);
  const res = await removal;
  assert.equal(res.backendClosed, true);
  assert.equal(await w.xs0.tryRead(p.backend), undefined);
  assert.equal(await w.xs0.tryRead(p.frontend), undefined);
  assert.equal(await w.xs0.tryRead(`/local/domain/0/backend/vbd/${FE}`), undefined, 'empty parent removed');
  await back.waitFor(() => back.disks().length === 0);
  assert.equal(w.plat.usage(0).mappings, 0);
  assert.equal(w.plat.usage(0).ports, 0);
  g.release();
});

test('absent protocol means x86_32 (as Linux blkback on x86); read-only disks say so and refuse writes', async (t) => {
  const w = await world(t);
  const p = await createVbd(w.xs0, { frontendDomid: FE, vdev: 'xvdc', params: 'ram:65536', readonly: true });
  const back = await w.startBackend();
  const f = new TestFront(w, p, { abi: 'x86_32', protocol: null, order: 1 });
  await f.connect();
  assert.equal(back.device(FE, p.devid)!.describe().abi, 'x86_32');
  assert.equal(Number(await w.xsFe.read(`${p.backend}/info`)) & VDISK_READONLY, VDISK_READONLY);
  assert.equal(await w.xsFe.tryRead(`${p.backend}/feature-discard`), '0');
  assert.deepEqual(await f.submit(0, { operation: BLKIF_OP_WRITE, pages: [f.page(1)] }), { status: BLKIF_RSP_ERROR, operation: BLKIF_OP_WRITE });
  assert.deepEqual(await f.submit(0, { operation: BLKIF_OP_READ, pages: [f.page(1)] }), { status: BLKIF_RSP_OKAY, operation: BLKIF_OP_READ });
  await back.stop();
  assert.equal(await w.xs0.read(`${p.backend}/state`), String(XenbusState.Closed), 'a stopping backend says Closed');
  assert.equal(w.plat.usage(0).mappings, 0);
  assert.equal(w.plat.usage(0).ports, 0);
  f.release();
});

for (const [what, extra, key] of [
  ['a ring-page-order above the maximum', [['ring-page-order', '9']], 'ring-page-order'],
  ['zero queues', [['multi-queue-num-queues', '0']], 'multi-queue-num-queues'],
  ['an unknown protocol', [['protocol', 'sparc-abi']], 'protocol'],
  ['a ring-ref that is not granted', [['ring-ref', '4000000']], 'ring-ref'],
  ['a garbage event-channel', [['event-channel', 'seven']], 'event-channel'],
] as [string, [string, string][], string][]) {
  test(`a frontend publishing ${what} gets an error node and Closing, nothing stays mapped`, async (t) => {
    const w = await world(t);
    const p = await createVbd(w.xs0, { frontendDomid: FE, vdev: 'xvdb', params: 'ram:65536' });
    const back = await w.startBackend();
    const f = new TestFront(w, p, { extra });
    await waitState(w.xs0, p.backend, XenbusState.InitWait);
    await f.publish();
    await waitState(w.xs0, p.backend, XenbusState.Closing);
    const err = await w.xs0.read(`/local/domain/0/error/backend/vbd/${FE}/${p.devid}/error`);
    assert.match(err, new RegExp(key));
    assert.equal(w.plat.usage(0).mappings, 0);
    assert.equal(w.plat.usage(0).ports, 0);
    assert.equal(back.disks().length, 1, 'the device stays until the toolstack removes it');
    f.release();
  });
}

test('resize while connected rewrites sectors and state together', async (t) => {
  const w = await world(t);
  const p = await createVbd(w.xs0, { frontendDomid: FE, vdev: 'xvdb', params: 'ram:65536' });
  const back = await w.startBackend();
  const f = new TestFront(w, p);
  await f.connect();
  assert.equal(await w.xsFe.read(`${p.backend}/sectors`), '128');
  assert.equal((await f.submit(0, { operation: BLKIF_OP_WRITE, sectorNumber: 200, pages: [f.page(3)] })).status, BLKIF_RSP_ERROR);
  const watch = w.xsFe.watch(`${p.backend}/state`);
  const events: string[] = [];
  const it = watch[Symbol.asyncIterator]();
  await it.next(); // initial event
  w.disks.get('ram:65536')!.resize(262144);
  await back.resize();
  const ev = await it.next();
  events.push(String(ev.value?.path));
  assert.equal(await w.xsFe.read(`${p.backend}/sectors`), '512');
  assert.equal(await w.xsFe.read(`${p.backend}/state`), String(XenbusState.Connected), 'Connected -> Connected tells the frontend to reread');
  assert.deepEqual(events, [`${p.backend}/state`]);
  await watch.close();
  assert.equal((await f.submit(0, { operation: BLKIF_OP_WRITE, sectorNumber: 200, pages: [f.page(3)] })).status, BLKIF_RSP_OKAY);
  await back.stop();
  f.release();
});

test('a restarted backend announces Closed, ignores the old rings and serves the frontend\'s new ones', async (t) => {
  const w = await world(t);
  const p = await createVbd(w.xs0, { frontendDomid: FE, vdev: 'xvdb', params: 'ram:65536' });
  const xsA = await w.dom0();
  const hostA = w.plat.host(0, xsA);
  await w.startBackend({ host: hostA });
  const f = new TestFront(w, p);
  await f.connect();
  assert.equal((await f.submit(0, { operation: BLKIF_OP_WRITE, sectorNumber: 8, pages: [f.page(7)] })).status, 0);
  // The backend process dies: its xenstore connection, mappings and channels go with it.
  await hostA.close();
  assert.equal(w.plat.usage(0).mappings, 0);
  assert.equal(await w.xs0.read(`${p.backend}/state`), String(XenbusState.Connected), 'nobody cleaned up');

  // The frontend reacts to the backend saying Closed as a blkfront does: it closes its side.
  const seen: XenbusState[] = [];
  const watch = w.xsFe.watch(`${p.backend}/state`);
  const follower = (async () => {
    for await (const _e of watch) {
      const st = parseXenbusState(await w.xsFe.tryRead(`${p.backend}/state`));
      seen.push(st);
      if (st === XenbusState.Closed) await f.setState(XenbusState.Closed);
      if (st === XenbusState.InitWait && seen.includes(XenbusState.Closed)) return;
    }
  })();
  const back = await w.startBackend();
  await follower;
  await watch.close();
  assert.ok(seen.includes(XenbusState.Closed), 'the new backend announced Closed first');
  assert.equal(back.device(FE, p.devid)!.ringServices.length, 0, 'old rings not reused');
  f.release();
  await f.publish();
  await waitState(w.xsFe, p.backend, XenbusState.Connected);
  const into = f.page();
  assert.equal((await f.submit(0, { operation: BLKIF_OP_READ, sectorNumber: 8, pages: [into] })).status, 0);
  assert.equal(into.buffer[0], 7, 'the new backend serves the same disk');
});
