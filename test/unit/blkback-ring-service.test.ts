// The blkback data path on the in-process memory platform: a minimal frontend written here
// from blkif.h and ring.h (shares pages, encodes requests with the protocol codecs, reads
// responses) drives one RingService over a RAM disk or a gated disk whose completions the
// test controls.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMemoryPlatform } from '../support/memory-host.ts';
import type { MemoryPlatform } from '../support/memory-host.ts';
import type { GrantMapper, SharedPages } from '../../gnttab/gnttab.ts';
import { GnttabError } from '../../gnttab/error.ts';
import type { EventChannel } from '../../evtchn/evtchn.ts';
import type { BlkifAbi, BlkifRequest } from '../../protocol/blkif.ts';
import {
  BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
  BLKIF_OP_RESERVED_1, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
  BLKIF_RSP_OKAY, decodeResponse, encodeIndirectSegments, encodeRequest, newBlkifRequest, newBlkifResponse,
  ringEntrySize,
} from '../../protocol/blkif.ts';
import type { FrontRing } from '../../protocol/ring.ts';
import {
  entryOffset, finalCheckForResponses, frontRingInit, nextRequestOffset, pushRequestsAndCheckNotify,
  sringInit, unconsumedResponses,
} from '../../protocol/ring.ts';
import type { BlockBackend } from '../../lib/backends/block-backend.ts';
import { createRamDisk } from '../../lib/backends/ram.ts';
import type { RamDisk } from '../../lib/backends/ram.ts';
import { COPY_BUFFER_KEEP, LATENCY_SAMPLE, RingService, RingServiceError } from '../../lib/blkback/ring-service.ts';
import type { VbdGeometry } from '../../lib/blkback/ring-service.ts';
import { VbdStats } from '../../lib/blkback/stats.ts';

const FE = 7;
const BE = 0;

interface Seg { page: SharedPages; first: number; last: number }
interface Rsp { status: number; operation: number }

interface Pair {
  plat: MemoryPlatform;
  svc: RingService;
  stats: VbdStats;
  front: FrontRing;
  port: EventChannel;
  abi: BlkifAbi;
  /** Pages granted by the frontend (writable unless asked otherwise). */
  page(fill?: number, writable?: boolean): SharedPages;
  /** Queues a request (fields over a fresh request); `push` publishes and notifies. */
  queue(fields: Partial<BlkifRequest> & { segs?: Seg[]; indirect?: SharedPages }): Promise<Rsp>;
  push(): void;
  submit(fields: Partial<BlkifRequest> & { segs?: Seg[]; indirect?: SharedPages }): Promise<Rsp>;
  order: number[];
}

function pair(opts: {
  abi?: BlkifAbi; order?: number; backing?: BlockBackend; vbd?: Partial<VbdGeometry>;
  persistent?: boolean; maxPersistentGrants?: number; maxIndirect?: number; maxInFlight?: number;
  grantCopy?: boolean;
  onHalt?: (e: RingServiceError) => void;
  /** Wraps the backend's mapper for the service (the ring itself is mapped without it). */
  wrapMapper?: (m: GrantMapper) => GrantMapper;
} = {}): Pair {
  const abi = opts.abi ?? 'x86_64';
  const plat = createMemoryPlatform({ ramPages: 2048 });
  const sharer = plat.sharer(FE);
  const ringPages = sharer.share(BE, 1 << (opts.order ?? 0), true);
  const sring = sringInit(new Uint8Array(ringPages.buffer.buffer, ringPages.buffer.byteOffset, ringPages.buffer.byteLength), ringEntrySize(abi));
  const front = frontRingInit(sring);
  const port = plat.evtchn(FE).allocUnbound(BE);
  const mapper = plat.mapper(BE);
  const ring = mapper.map(FE, ringPages.refs, true);
  const channel = plat.evtchn(BE).bindInterdomain(FE, port.localPort);
  const backing = opts.backing ?? createRamDisk({ size: 1 << 20 });
  const vbd: VbdGeometry = {
    sectors: 2048, sectorSize: backing.sectorSize, readonly: backing.readonly, flush: backing.capabilities.flush,
    discard: backing.capabilities.discard, discardSecure: backing.capabilities.discardSecure, ...opts.vbd,
  };
  const stats = new VbdStats();
  const svc = new RingService({
    abi, ring, channel, mapper: opts.wrapMapper?.(mapper) ?? mapper, frontendDomid: FE, backing, vbd, stats,
    persistent: opts.persistent ?? false, maxPersistentGrants: opts.maxPersistentGrants, grantCopy: opts.grantCopy,
    maxIndirectSegments: opts.maxIndirect ?? 256, maxInFlight: opts.maxInFlight, onHalt: opts.onHalt,
  });
  svc.start();

  let nextId = 1;
  const waiting = new Map<number, (r: Rsp) => void>();
  const order: number[] = [];
  const rsp = newBlkifResponse();
  port.onEvent(() => {
    do {
      while (unconsumedResponses(front) > 0) {
        decodeResponse(abi, sring.bytes, entryOffset(sring, front.rspCons), rsp);
        front.rspCons = (front.rspCons + 1) >>> 0;
        const w = waiting.get(rsp.idLo);
        assert.ok(w !== undefined, `response for unknown id ${rsp.idLo}`);
        waiting.delete(rsp.idLo);
        order.push(rsp.idLo);
        w({ status: rsp.status, operation: rsp.operation });
      }
    } while (finalCheckForResponses(front));
  });

  const p: Pair = {
    plat, svc, stats, front, port, abi, order,
    page(fill = 0, writable = true) {
      const pg = sharer.share(BE, 1, writable);
      pg.buffer.fill(fill);
      return pg;
    },
    queue(fields) {
      const req = newBlkifRequest();
      const id = nextId++;
      req.idLo = id;
      req.idHi = 0xdead;
      req.operation = fields.operation ?? BLKIF_OP_READ;
      req.dataOp = fields.dataOp ?? req.operation;
      req.sectorNumber = fields.sectorNumber ?? 0;
      req.nrSectors = fields.nrSectors ?? 0;
      req.discardFlag = fields.discardFlag ?? 0;
      const segs = fields.segs ?? [];
      req.nrSegments = fields.nrSegments ?? segs.length;
      segs.forEach((s, i) => { req.segGref[i] = s.page.refs[0]!; req.segFirst[i] = s.first; req.segLast[i] = s.last; });
      if (req.operation === BLKIF_OP_INDIRECT) {
        const ind = fields.indirect ?? sharer.share(BE, Math.ceil(segs.length / 512), false);
        encodeIndirectSegments(ind.buffer, req);
        req.nrIndirectPages = ind.refs.length;
        ind.refs.forEach((r, i) => { req.indirectGrefs[i] = r; });
      }
      encodeRequest(abi, sring.bytes, nextRequestOffset(front), req);
      return new Promise<Rsp>((resolve) => waiting.set(id, resolve));
    },
    push() {
      if (pushRequestsAndCheckNotify(front)) port.notify();
    },
    submit(fields) {
      const r = p.queue(fields);
      p.push();
      return r;
    },
  };
  return p;
}

function fullSegs(pages: SharedPages[]): Seg[] {
  return pages.map((page) => ({ page, first: 0, last: 7 }));
}

async function closeAndCheckClean(p: Pair): Promise<void> {
  await p.svc.close();
  const u = p.plat.usage(BE);
  assert.equal(u.mappings, 0, 'every grant mapping released');
  assert.equal(u.ports, 0, 'the event channel unbound');
  assert.equal(p.stats.inFlight, 0);
  assert.equal(p.stats.persistentGrants, 0);
}

/** A disk whose reads and writes complete only when the test says so, logging every call. */
function gatedDisk(inner: RamDisk): BlockBackend & { log: string[]; inFlight: number; maxInFlight: number; release(n?: number): void } {
  const gates: (() => void)[] = [];
  const d = {
    ...inner,
    description: 'gated',
    sectorSize: inner.sectorSize,
    physicalSectorSize: inner.physicalSectorSize,
    readonly: inner.readonly,
    capabilities: { ...inner.capabilities, flush: true },
    log: [] as string[],
    inFlight: 0,
    maxInFlight: 0,
    size: () => inner.size(),
    async gate(tag: string) {
      d.log.push(`start ${tag}`);
      d.inFlight++;
      d.maxInFlight = Math.max(d.maxInFlight, d.inFlight);
      await new Promise<void>((r) => gates.push(r));
      d.inFlight--;
      d.log.push(`end ${tag}`);
    },
    async read(offset: number, bufs: readonly Uint8Array[]) { await d.gate(`read ${offset / 512}`); await inner.read(offset, bufs); },
    async write(offset: number, bufs: readonly Uint8Array[]) { await d.gate(`write ${offset / 512}`); await inner.write(offset, bufs); },
    async flush() { await d.gate('flush'); },
    release(n = 1) { for (let i = 0; i < n; i++) gates.shift()?.(); },
  };
  return d;
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (cond()) return;
    await tick();
  }
  assert.fail(`never happened: ${what}`);
}

for (const [abi, grantCopy] of [['x86_64', false], ['x86_32', false], ['x86_64', true]] as const) {
  test(`${abi}: multi-segment writes with partial sectors land on the disk and read back${grantCopy ? ' (grant copy)' : ''}`, async () => {
    const disk = createRamDisk({ size: 1 << 20 });
    const p = pair({ abi, backing: disk, grantCopy });
    const pages = [p.page(0x11, false), p.page(0x22, false), p.page(0x33, false)];
    pages[0]!.buffer.fill(0x44, 3 * 512, 8 * 512);
    const segs = [{ page: pages[0]!, first: 3, last: 7 }, { page: pages[1]!, first: 0, last: 7 }, { page: pages[2]!, first: 0, last: 1 }];
    const w = await p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 100, segs });
    assert.deepEqual(w, { status: BLKIF_RSP_OKAY, operation: BLKIF_OP_WRITE });
    const expected = Buffer.concat([Buffer.alloc(5 * 512, 0x44), Buffer.alloc(8 * 512, 0x22), Buffer.alloc(2 * 512, 0x33)]);
    assert.deepEqual(disk.data.subarray(100 * 512, 115 * 512), expected);

    const into = [p.page(0), p.page(0)];
    const r = await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 100, segs: [{ page: into[0]!, first: 0, last: 7 }, { page: into[1]!, first: 1, last: 7 }] });
    assert.deepEqual(r, { status: BLKIF_RSP_OKAY, operation: BLKIF_OP_READ });
    assert.deepEqual(into[0]!.buffer, expected.subarray(0, 4096));
    assert.deepEqual(into[1]!.buffer.subarray(512), expected.subarray(4096, 4096 + 7 * 512));
    assert.equal(into[1]!.buffer.subarray(0, 512).every((x) => x === 0), true, 'sector 0 of the page was not part of the read');
    assert.equal(p.stats.wrReq, 1);
    assert.equal(p.stats.rdReq, 1);
    assert.equal(p.stats.wrSect, 15);
    assert.equal(p.stats.rdSect, 15);
    await closeAndCheckClean(p);
  });
}

/** The three ways blkback reaches the guest's pages: map per request, persistent grants, grant copy. */
const MODES = [
  { label: 'persistent grants off', persistent: false, grantCopy: false },
  { label: 'persistent grants on', persistent: true, grantCopy: false },
  { label: 'grant copy (persistent offered but not used)', persistent: true, grantCopy: true },
] as const;

for (const { label, persistent: offered, grantCopy } of MODES) {
  const persistent = offered && !grantCopy;
  test(`indirect requests of 40 segments, ${label}`, async () => {
    const disk = createRamDisk({ size: 1 << 20 });
    const p = pair({ backing: disk, persistent: offered, grantCopy, order: 1 });
    const src = Array.from({ length: 40 }, (_, i) => p.page(i + 1, false));
    const w = await p.submit({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_WRITE, sectorNumber: 8, segs: fullSegs(src) });
    assert.deepEqual(w, { status: BLKIF_RSP_OKAY, operation: BLKIF_OP_WRITE }, 'INDIRECT is answered with indirect_op, as Linux does');
    for (let i = 0; i < 40; i++) assert.equal(disk.data[(8 + i * 8) * 512], i + 1);
    const dst = Array.from({ length: 40 }, () => p.page(0));
    const r = await p.submit({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_READ, sectorNumber: 8, segs: fullSegs(dst) });
    assert.equal(r.status, BLKIF_RSP_OKAY);
    dst.forEach((pg, i) => assert.equal(pg.buffer.every((x) => x === i + 1), true, `page ${i}`));
    // Read the same pages again: with persistent grants they are found in the cache.
    await p.submit({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_READ, sectorNumber: 8, segs: fullSegs(dst) });
    // 80 data pages and the three requests' indirect pages, kept in one cache as Linux does.
    assert.equal(p.svc.persistentGrants, persistent ? 83 : 0);
    assert.equal(p.stats.persistentGrants, persistent ? 83 : 0);
    await closeAndCheckClean(p);
  });
}

for (const { label, persistent: offered, grantCopy } of MODES) {
  const persistent = offered && !grantCopy;
  // 600 descriptors: a whole indirect page (512) and 88 in the second, which is read in part.
  test(`an indirect request spanning two indirect pages (600 segments, x86_32) is served, ${label}`, async () => {
    const disk = createRamDisk({ size: 4 << 20 });
    const p = pair({ abi: 'x86_32', backing: disk, maxIndirect: 4096, vbd: { sectors: 8192 }, persistent: offered, grantCopy });
    const src = Array.from({ length: 600 }, (_, i) => p.page((i * 7) & 0xff, false));
    const w = await p.submit({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_WRITE, sectorNumber: 16, segs: fullSegs(src) });
    assert.deepEqual(w, { status: BLKIF_RSP_OKAY, operation: BLKIF_OP_WRITE });
    for (let i = 0; i < 600; i++) assert.equal(disk.data[(16 + i * 8) * 512 + 100], (i * 7) & 0xff, `segment ${i}`);
    assert.equal(p.stats.wrSect, 4800);
    assert.equal(p.svc.persistentGrants, persistent ? 600 + 2 : 0, 'the data pages and the two indirect pages');
    await closeAndCheckClean(p);
  });
}

test('every malformed request is answered (ERROR / EOPNOTSUPP) and the ring keeps serving', async () => {
  const disk = createRamDisk({ size: 1 << 20 });
  const p = pair({ backing: disk, maxIndirect: 32 });
  const good = p.page(5, false);
  const other = p.plat.sharer(FE).share(99, 1, true); // granted to another domain
  const cases: [string, Promise<Rsp>, number][] = [
    ['past the end', p.queue({ operation: BLKIF_OP_WRITE, sectorNumber: 2047, segs: fullSegs([good]) }), BLKIF_RSP_ERROR],
    ['sector 2^53', p.queue({ operation: BLKIF_OP_READ, sectorNumber: 2 ** 53, segs: fullSegs([p.page()]) }), BLKIF_RSP_ERROR],
    ['reserved op', p.queue({ operation: BLKIF_OP_RESERVED_1 }), BLKIF_RSP_EOPNOTSUPP],
    ['unknown op 99', p.queue({ operation: 99 }), BLKIF_RSP_EOPNOTSUPP],
    ['read of 0 segments', p.queue({ operation: BLKIF_OP_READ, segs: [] }), BLKIF_RSP_ERROR],
    ['12 direct segments', p.queue({ operation: BLKIF_OP_READ, nrSegments: 12, segs: fullSegs([p.page()]) }), BLKIF_RSP_ERROR],
    ['last_sect 8', p.queue({ operation: BLKIF_OP_READ, segs: [{ page: p.page(), first: 0, last: 8 }] }), BLKIF_RSP_ERROR],
    ['first > last', p.queue({ operation: BLKIF_OP_READ, segs: [{ page: p.page(), first: 5, last: 4 }] }), BLKIF_RSP_ERROR],
    ['indirect over the advertised max', p.queue({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_READ, segs: fullSegs(Array.from({ length: 33 }, () => p.page())) }), BLKIF_RSP_ERROR],
    ['indirect_op FLUSH', p.queue({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_FLUSH_DISKCACHE, segs: fullSegs([p.page()]) }), BLKIF_RSP_ERROR],
    ['gref never granted', p.queue({ operation: BLKIF_OP_READ, segs: [{ page: { ...good, refs: [999_999] }, first: 0, last: 7 }] }), BLKIF_RSP_ERROR],
    ['gref granted to another domain', p.queue({ operation: BLKIF_OP_READ, segs: fullSegs([other]) }), BLKIF_RSP_ERROR],
    ['read into a read-only grant', p.queue({ operation: BLKIF_OP_READ, segs: fullSegs([good]) }), BLKIF_RSP_ERROR],
    ['discard past the end', p.queue({ operation: BLKIF_OP_DISCARD, sectorNumber: 2000, nrSectors: 49 }), BLKIF_RSP_ERROR],
    ['well formed write', p.queue({ operation: BLKIF_OP_WRITE, sectorNumber: 2040, segs: fullSegs([good]) }), BLKIF_RSP_OKAY],
  ];
  p.push();
  for (const [what, rsp, status] of cases) assert.equal((await rsp).status, status, what);
  assert.equal(disk.data[2040 * 512], 5);
  assert.equal(disk.data[2039 * 512], 0, 'the rejected write past the end wrote nothing');
  assert.equal(p.stats.errors, cases.length - 1);
  await closeAndCheckClean(p);
});

test('read-only disk refuses writes, flushes and discards; 4096-byte sectors refuse misaligned I/O', async () => {
  const ro = createRamDisk({ size: 1 << 20, readonly: true });
  const p = pair({ backing: ro });
  assert.equal((await p.submit({ operation: BLKIF_OP_WRITE, segs: fullSegs([p.page(1)]) })).status, BLKIF_RSP_ERROR);
  assert.equal((await p.submit({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_WRITE, segs: fullSegs([p.page(1)]) })).status, BLKIF_RSP_ERROR);
  assert.equal((await p.submit({ operation: BLKIF_OP_FLUSH_DISKCACHE })).status, BLKIF_RSP_ERROR);
  assert.equal((await p.submit({ operation: BLKIF_OP_DISCARD, nrSectors: 8 })).status, BLKIF_RSP_ERROR);
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, segs: fullSegs([p.page(1)]) })).status, BLKIF_RSP_OKAY);
  assert.equal(ro.data.every((x) => x === 0), true);
  await closeAndCheckClean(p);

  const big = createRamDisk({ size: 1 << 20, sectorSize: 4096 });
  const q = pair({ backing: big });
  assert.equal((await q.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 4, segs: fullSegs([q.page(1)]) })).status, BLKIF_RSP_ERROR, 'start not on a 4 KiB sector');
  assert.equal((await q.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 8, segs: [{ page: q.page(1), first: 0, last: 3 }] })).status, BLKIF_RSP_ERROR, 'half a sector');
  assert.equal((await q.submit({ operation: BLKIF_OP_DISCARD, sectorNumber: 8, nrSectors: 4 })).status, BLKIF_RSP_ERROR);
  assert.equal((await q.submit({ operation: BLKIF_OP_FLUSH_DISKCACHE, sectorNumber: 3 })).status, BLKIF_RSP_OKAY, 'a flush without data: sector_number means nothing (Linux checks alignment per segment)');
  assert.equal((await q.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 8, segs: fullSegs([q.page(1)]) })).status, BLKIF_RSP_OKAY);
  assert.equal(big.data[4096], 1);
  await closeAndCheckClean(q);
});

test('discard zeroes the range (secure too); unsupported discard is EOPNOTSUPP', async () => {
  const disk = createRamDisk({ size: 1 << 20, contents: Buffer.alloc(1 << 20, 0xee) });
  const p = pair({ backing: disk });
  assert.equal((await p.submit({ operation: BLKIF_OP_DISCARD, sectorNumber: 10, nrSectors: 6 })).status, BLKIF_RSP_OKAY);
  assert.equal((await p.submit({ operation: BLKIF_OP_DISCARD, sectorNumber: 100, nrSectors: 1, discardFlag: BLKIF_DISCARD_SECURE })).status, BLKIF_RSP_OKAY);
  assert.equal(disk.data.subarray(10 * 512, 16 * 512).every((x) => x === 0), true);
  assert.equal(disk.data.subarray(100 * 512, 101 * 512).every((x) => x === 0), true);
  assert.equal(disk.data[16 * 512], 0xee);
  assert.equal(disk.data[10 * 512 - 1], 0xee);
  assert.equal(p.stats.dsReq, 2);
  await closeAndCheckClean(p);
  const q = pair({ vbd: { discard: false } });
  const r = await q.submit({ operation: BLKIF_OP_DISCARD, sectorNumber: 0, nrSectors: 8 });
  assert.deepEqual(r, { status: BLKIF_RSP_EOPNOTSUPP, operation: BLKIF_OP_DISCARD });
  await closeAndCheckClean(q);
});

test('a request that completes early is answered before an earlier slow one', async () => {
  const inner = createRamDisk({ size: 1 << 20 });
  const slow: (() => void)[] = [];
  const disk: BlockBackend = {
    ...inner, description: 'slow at sector 0', sectorSize: 512, physicalSectorSize: 512, readonly: false, capabilities: inner.capabilities,
    size: () => inner.size(),
    async read(off, bufs) {
      if (off === 0) await new Promise<void>((r) => slow.push(r));
      await inner.read(off, bufs);
    },
    write: (off, bufs) => inner.write(off, bufs), flush: () => inner.flush(), discard: (o, l, x) => inner.discard(o, l, x), close: () => inner.close(),
  };
  const p = pair({ backing: disk });
  const first = p.queue({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: fullSegs([p.page()]) });
  // Not adjacent to the first, or the two would be merged into one call.
  const second = p.queue({ operation: BLKIF_OP_READ, sectorNumber: 16, segs: fullSegs([p.page()]) });
  p.push();
  await second;
  assert.deepEqual(p.order, [2], 'the fast request was answered while the slow one is in flight');
  assert.equal(p.svc.inFlight, 1);
  slow.shift()!();
  await first;
  assert.deepEqual(p.order, [2, 1]);
  await closeAndCheckClean(p);
});

for (const grantCopy of [false, true]) test(`adjacent reads or writes published together go to the disk as one call; each is answered, with the call's status${grantCopy ? ' (grant copy)' : ''}`, async () => {
  const inner = createRamDisk({ size: 1 << 20 });
  const disk = gatedDisk(inner);
  const p = pair({ backing: disk, maxIndirect: 32, grantCopy });
  // Three adjacent writes (one direct, one indirect, one direct), a write elsewhere, a read
  // adjacent to them (other direction: not merged), two adjacent reads.
  const srcs = [p.page(1, false), p.page(2, false), p.page(3, false), p.page(4, false)];
  const rsps = [
    p.queue({ operation: BLKIF_OP_WRITE, sectorNumber: 0, segs: fullSegs([srcs[0]!]) }),
    p.queue({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_WRITE, sectorNumber: 8, segs: fullSegs([srcs[1]!, srcs[2]!]) }),
    p.queue({ operation: BLKIF_OP_WRITE, sectorNumber: 24, segs: [{ page: srcs[3]!, first: 0, last: 3 }] }),
    p.queue({ operation: BLKIF_OP_WRITE, sectorNumber: 100, segs: fullSegs([p.page(5, false)]) }),
    p.queue({ operation: BLKIF_OP_READ, sectorNumber: 28, segs: fullSegs([p.page()]) }),
    p.queue({ operation: BLKIF_OP_READ, sectorNumber: 200, segs: fullSegs([p.page()]) }),
    p.queue({ operation: BLKIF_OP_READ, sectorNumber: 208, segs: fullSegs([p.page()]) }),
  ];
  p.push();
  await until(() => disk.inFlight === 4, 'four calls started');
  assert.deepEqual(disk.log, ['start write 0', 'start write 100', 'start read 28', 'start read 200']);
  disk.release(4);
  const got = await Promise.all(rsps);
  assert.ok(got.every((r) => r.status === BLKIF_RSP_OKAY), JSON.stringify(got));
  assert.equal(p.stats.merged, 3);
  assert.equal(p.stats.wrSect, 8 + 16 + 4 + 8);
  assert.equal(p.stats.rdSect, 16 + 8);
  const expect = Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 2), Buffer.alloc(4096, 3), Buffer.alloc(2048, 4)]);
  assert.deepEqual(inner.data.subarray(0, expect.length), expect);

  // A merged call that fails fails each of its requests; a separate one is unaffected.
  const failing: BlockBackend = { ...inner, size: () => inner.size(), async write(off) { throw new Error(`no write at ${off}`); } };
  const q = pair({ backing: failing, grantCopy });
  const bad = [0, 8, 16].map((sectorNumber) => q.queue({ operation: BLKIF_OP_WRITE, sectorNumber, segs: fullSegs([q.page(9, false)]) }));
  const good = q.queue({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: fullSegs([q.page()]) });
  q.push();
  assert.deepEqual((await Promise.all(bad)).map((r) => r.status), [BLKIF_RSP_ERROR, BLKIF_RSP_ERROR, BLKIF_RSP_ERROR]);
  assert.equal((await good).status, BLKIF_RSP_OKAY);
  assert.equal(q.stats.merged, 2);
  await closeAndCheckClean(p);
  await closeAndCheckClean(q);
});

test('a barrier waits for earlier requests and later requests wait for the barrier', async () => {
  const gated = gatedDisk(createRamDisk({ size: 1 << 20 }));
  const p = pair({ backing: gated });
  const w1 = p.queue({ operation: BLKIF_OP_WRITE, sectorNumber: 0, segs: fullSegs([p.page(1)]) });
  const bar = p.queue({ operation: BLKIF_OP_WRITE_BARRIER, sectorNumber: 8, segs: fullSegs([p.page(2)]) });
  const w2 = p.queue({ operation: BLKIF_OP_WRITE, sectorNumber: 16, segs: fullSegs([p.page(3)]) });
  p.push();
  await until(() => gated.log.length === 1, 'first write issued');
  for (let i = 0; i < 20; i++) await tick();
  assert.deepEqual(gated.log, ['start write 0'], 'nothing else issued while the write before the barrier is in flight');
  gated.release(); // write 0
  await until(() => gated.log.includes('start flush'), 'barrier flush issued');
  gated.release(); // pre-flush
  await until(() => gated.log.includes('start write 8'), 'barrier data');
  gated.release(); // barrier write
  await until(() => gated.log.filter((x) => x === 'start flush').length === 2, 'post-flush');
  assert.equal(gated.log.includes('start write 16'), false, 'the write after the barrier waits');
  gated.release(); // post-flush
  await until(() => gated.log.includes('start write 16'), 'write after the barrier issued');
  gated.release();
  assert.deepEqual(await Promise.all([w1, bar, w2]).then((r) => r.map((x) => x.status)), [0, 0, 0]);
  assert.deepEqual(gated.log, [
    'start write 0', 'end write 0', 'start flush', 'end flush', 'start write 8', 'end write 8',
    'start flush', 'end flush', 'start write 16', 'end write 16',
  ]);
  assert.equal(p.stats.fReq, 1);
  await closeAndCheckClean(p);
});

test('in flight is bounded: excess requests wait (oo_req) and are all served', async () => {
  const gated = gatedDisk(createRamDisk({ size: 1 << 20 }));
  const p = pair({ backing: gated, maxInFlight: 2 });
  // Gaps between the writes, so that each is a call of its own (adjacent ones would merge).
  const rs = Array.from({ length: 6 }, (_, i) => p.queue({ operation: BLKIF_OP_WRITE, sectorNumber: i * 16, segs: fullSegs([p.page(i)]) }));
  p.push();
  await until(() => gated.inFlight === 2, 'two issued');
  for (let i = 0; i < 20; i++) await tick();
  assert.equal(gated.inFlight, 2);
  for (let i = 0; i < 6; i++) {
    await until(() => gated.inFlight > 0, 'next issued');
    gated.release();
    await tick();
  }
  const all = await Promise.all(rs);
  assert.deepEqual(all.map((r) => r.status), [0, 0, 0, 0, 0, 0]);
  assert.equal(gated.maxInFlight, 2);
  assert.ok(p.stats.ooReq >= 1);
  await closeAndCheckClean(p);
});

test('one request in LATENCY_SAMPLE is timed for the latency histogram', async () => {
  const p = pair();
  const n = 3 * LATENCY_SAMPLE + 5;
  for (let i = 0; i < n; i++) {
    const r = await p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: (i % 8) * 8, segs: fullSegs([p.page(i & 0xff)]) });
    assert.equal(r.status, BLKIF_RSP_OKAY);
  }
  const snap = p.stats.snapshot();
  assert.equal(snap.wr_req, n);
  assert.equal(snap.latency_us.reduce((a, b) => a + b, 0), 3, `${n} requests: the ${LATENCY_SAMPLE}th, ${2 * LATENCY_SAMPLE}th and ${3 * LATENCY_SAMPLE}th are timed`);
  await closeAndCheckClean(p);
});

test('a frontend that overruns the ring halts that ring without a crash', async () => {
  let halted: RingServiceError | undefined;
  const p = pair({ onHalt: (e) => { halted = e; } });
  // req_prod published 33 ahead on a 32-entry ring.
  Atomics.store(p.front.sring.idx, 0, 33);
  p.port.notify();
  await until(() => halted !== undefined, 'halt reported');
  assert.equal(halted!.field, 'req_prod');
  assert.equal(p.svc.isHalted, true);
  assert.equal(p.order.length, 0);
  await closeAndCheckClean(p);
});

test('persistent grants: a grant that was an indirect page is found again as a data page (one cache, one bound, as Linux)', async () => {
  const disk = createRamDisk({ size: 1 << 20 });
  const p = pair({ backing: disk, persistent: true, maxPersistentGrants: 16 });
  // Linux blkfront takes indirect and data pages from one pool of granted pages: a page is the
  // indirect page of one request and carries data in the next.
  const data = Array.from({ length: 12 }, (_, i) => p.page(i + 1));
  const ind = p.page(0);
  assert.equal((await p.submit({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_WRITE, sectorNumber: 0, segs: fullSegs(data), indirect: ind })).status, BLKIF_RSP_OKAY);
  assert.equal(p.svc.persistentGrants, 13);
  const mapped = p.plat.usage(BE).mappings;
  // The former indirect page receives a read: found in the cache, writable, no new mapping.
  ind.buffer.fill(0xee);
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 8, segs: fullSegs([ind]) })).status, BLKIF_RSP_OKAY);
  assert.ok(ind.buffer.every((x) => x === 2), 'the read landed in the former indirect page');
  assert.equal(p.plat.usage(BE).mappings, mapped, 'no map for a grant already cached as an indirect page');
  // And a former data page serves as the next indirect page, again without a mapping.
  const more = Array.from({ length: 3 }, (_, i) => data[i]!);
  assert.equal((await p.submit({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_READ, sectorNumber: 0, segs: fullSegs(more), indirect: data[11]! })).status, BLKIF_RSP_OKAY);
  assert.equal(p.plat.usage(BE).mappings, mapped);
  assert.equal(p.svc.persistentGrants, 13);
  // One bound for both uses, 16 pages. The new indirect page fits (14); its five data pages,
  // one run, do not: the least recently used idle runs go whole, the first indirect page's and
  // then the twelve data pages' (runs are mapped and unmapped as one).
  const extra = Array.from({ length: 6 }, () => p.page());
  assert.equal((await p.submit({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_READ, sectorNumber: 0, segs: fullSegs(extra.slice(0, 5)), indirect: extra[5]! })).status, BLKIF_RSP_OKAY);
  assert.equal(p.svc.persistentGrants, 6);
  assert.equal(p.stats.pgrantEvictions, 13);
  assert.equal(p.plat.usage(BE).mappings, 2 + 1, 'two runs and the ring');
  await closeAndCheckClean(p);
});

test('persistent grants stay mapped, bounded by an LRU; all are released at close', async () => {
  const disk = createRamDisk({ size: 1 << 20 });
  const p = pair({ backing: disk, persistent: true, maxPersistentGrants: 4 });
  const pages = Array.from({ length: 8 }, (_, i) => p.page(i));
  for (let i = 0; i < 8; i++) {
    assert.equal((await p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: i * 8, segs: fullSegs([pages[i]!]) })).status, 0);
    assert.ok(p.svc.persistentGrants <= 4);
  }
  assert.equal(p.svc.persistentGrants, 4);
  assert.equal(p.stats.pgrantEvictions, 4, 'each of the last four writes evicted the least recently used grant');
  assert.equal(p.plat.usage(BE).mappings, 4 + 1, 'four cached grants and the ring');
  // A request with more distinct grants than the cache holds still works (the extra are one-off).
  const many = Array.from({ length: 6 }, () => p.page());
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: fullSegs(many) })).status, 0);
  many.forEach((pg, i) => assert.equal(pg.buffer[0], i));
  assert.equal(p.plat.usage(BE).mappings, 4 + 1);
  await closeAndCheckClean(p);
});

test('persistent grants: a map refused for want of mappings (ENOMEM) gives back idle grants instead of failing I/O', async () => {
  // A process may hold only so many mappings (on Linux one VMA per persistent grant, up to
  // vm.max_map_count): here 5, far below the cache's bound of 64.
  const LIMIT = 5;
  let live = 0;
  let refused = 0;
  const ours = new WeakSet<object>(); // the ring's own mapping, made before, is not counted
  const p = pair({
    persistent: true,
    maxPersistentGrants: 64,
    wrapMapper: (m) => ({
      map(domid, refs, writable) {
        if (live + refs.length > LIMIT) {
          refused++;
          throw new GnttabError('ENOMEM', 'map', domid, refs[0], 'test: out of mappings');
        }
        const x = m.map(domid, refs, writable);
        live += refs.length;
        ours.add(x);
        return x;
      },
      unmap(x) {
        m.unmap(x);
        if (ours.delete(x)) live -= x.refs.length;
      },
      setUnmapNotify: (x, n) => m.setUnmapNotify(x, n),
      copy: (d, b, l, t) => m.copy(d, b, l, t),
      close: () => m.close(),
    }),
  });
  // Eight writes of two fresh pages each (16 grants), then each read back through two more.
  for (let i = 0; i < 8; i++) {
    const segs = fullSegs([p.page(0x20 + 2 * i), p.page(0x21 + 2 * i)]);
    assert.equal((await p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: i * 16, segs })).status, BLKIF_RSP_OKAY);
    assert.ok(p.svc.persistentGrants <= LIMIT);
  }
  assert.ok(refused > 0, 'the limit was reached');
  for (let i = 0; i < 8; i++) {
    const pages = [p.page(), p.page()];
    assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: i * 16, segs: fullSegs(pages) })).status, BLKIF_RSP_OKAY);
    assert.ok(pages[0]!.buffer.every((b) => b === 0x20 + 2 * i) && pages[1]!.buffer.every((b) => b === 0x21 + 2 * i), `data of write ${i}`);
  }
  // Runs of two pages: two fit under the limit of five.
  assert.equal(p.svc.persistentGrants, 4);
  // One more page brings the process to the limit.
  const last = p.page();
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: fullSegs([last]) })).status, BLKIF_RSP_OKAY);
  assert.ok(last.buffer.every((b) => b === 0x20));
  assert.equal(p.svc.persistentGrants, LIMIT);
  // A grant the frontend never made: at the limit the map is refused for want of mappings first
  // (as mmap is before gntdev asks Xen), so the least recently used idle run (two pages) goes
  // and the retry fails for the grant itself; below the limit, nothing goes. Either way the
  // request fails.
  const stranger = { page: { refs: [4000] } as unknown as SharedPages, first: 0, last: 7 };
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: [stranger] })).status, BLKIF_RSP_ERROR);
  assert.equal(p.svc.persistentGrants, LIMIT - 2);
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: [stranger] })).status, BLKIF_RSP_ERROR);
  assert.equal(p.svc.persistentGrants, LIMIT - 2);
  await closeAndCheckClean(p);
  assert.equal(live, 0, 'every mapping released at close');
});

test('persistent grants: a request\'s new grants are mapped as one run; the same pages in the same order reach the backing as one buffer', async () => {
  // The kernel pins each I/O vector entry on its own (O_DIRECT): 256 separately mapped pages of
  // a 1 MiB request cost ~100 us more per request than one run of them (persistent-grants.ts).
  const disk = createRamDisk({ size: 1 << 20 });
  const calls: number[][] = [];
  const backing: BlockBackend = {
    ...disk,
    read: async (o, bufs) => { calls.push(bufs.map((b) => b.length)); await disk.read(o, bufs); },
    write: async (o, bufs) => { calls.push(bufs.map((b) => b.length)); await disk.write(o, bufs); },
  };
  const p = pair({ backing, persistent: true });
  const pages = Array.from({ length: 8 }, (_, i) => p.page(i + 1));
  assert.equal((await p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 0, segs: fullSegs(pages) })).status, BLKIF_RSP_OKAY);
  assert.deepEqual(calls.pop(), [8 * 4096], 'mapped as one run: one buffer');
  assert.equal(p.stats.ioVectors, 1, 'counted as one I/O vector entry');
  assert.equal(p.svc.persistentGrants, 8);
  assert.equal(p.plat.usage(BE).mappings, 1 + 1, 'one run and the ring');
  for (const pg of pages) pg.buffer.fill(0);
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: fullSegs(pages) })).status, BLKIF_RSP_OKAY);
  assert.deepEqual(calls.pop(), [8 * 4096], 'found again back to back: one buffer');
  pages.forEach((pg, i) => assert.ok(pg.buffer.every((b) => b === i + 1), `page ${i}`));
  // Partial segments that meet inside the run are one buffer too.
  const part = [{ page: pages[2]!, first: 5, last: 7 }, { page: pages[3]!, first: 0, last: 1 }];
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 8 * 6, segs: part })).status, BLKIF_RSP_OKAY);
  assert.deepEqual(calls.pop(), [5 * 512]);
  assert.ok(pages[2]!.buffer.subarray(5 * 512).every((b) => b === 7) && pages[3]!.buffer.subarray(0, 1024).every((b) => b === 7)
    && pages[2]!.buffer[5 * 512 - 1] === 3 && pages[3]!.buffer[1024] === 4, 'the partial read landed where asked, nothing around it');
  // Another order: one buffer per page, each the right one.
  const reversed = [...pages].reverse();
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: fullSegs(reversed) })).status, BLKIF_RSP_OKAY);
  assert.deepEqual(calls.pop(), new Array(8).fill(4096));
  assert.equal(p.stats.ioVectors, 1 + 1 + 1 + 8);
  assert.equal(p.stats.snapshot().io_vectors, 11);
  reversed.forEach((pg, i) => assert.ok(pg.buffer.every((b) => b === i + 1), `reversed page ${i}`));
  // A fresh page twice in one request, next to a cached one: mapped once, in a run of its own.
  const twice = p.page(0x5a);
  assert.equal((await p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 100, segs: fullSegs([twice, pages[0]!, twice]) })).status, BLKIF_RSP_OKAY);
  assert.deepEqual(calls.pop(), [4096, 4096, 4096]);
  assert.equal(p.svc.persistentGrants, 9);
  assert.equal(p.plat.usage(BE).mappings, 2 + 1);
  const back = p.page();
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 116, segs: fullSegs([back]) })).status, BLKIF_RSP_OKAY);
  assert.ok(back.buffer.every((b) => b === 0x5a));
  assert.equal(p.stats.pgrantEvictions, 0);
  await closeAndCheckClean(p);
});

test('a flush with data writes it between two flushes; without a cache a flush is a no-op that succeeds', async () => {
  const gated = gatedDisk(createRamDisk({ size: 1 << 20 }));
  const p = pair({ backing: gated });
  const r = p.submit({ operation: BLKIF_OP_FLUSH_DISKCACHE, sectorNumber: 24, segs: fullSegs([p.page(9)]) });
  for (let i = 1; i <= 3; i++) {
    await until(() => gated.log.filter((x) => x.startsWith('start')).length === i, `step ${i} issued`);
    gated.release();
  }
  assert.equal((await r).status, 0);
  assert.deepEqual(gated.log.filter((x) => x.startsWith('start')), ['start flush', 'start write 24', 'start flush']);
  await closeAndCheckClean(p);
  const q = pair();
  assert.deepEqual(await q.submit({ operation: BLKIF_OP_FLUSH_DISKCACHE }), { status: 0, operation: BLKIF_OP_FLUSH_DISKCACHE });
  await closeAndCheckClean(q);
});

test('close() waits for requests in flight and answers them before unmapping', async () => {
  const gated = gatedDisk(createRamDisk({ size: 1 << 20 }));
  const p = pair({ backing: gated });
  const r = p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 0, segs: fullSegs([p.page(4)]) });
  await until(() => gated.inFlight === 1, 'issued');
  let closed = false;
  const c = p.svc.close().then(() => { closed = true; });
  for (let i = 0; i < 10; i++) await tick();
  assert.equal(closed, false, 'close waits for the write');
  assert.ok(p.plat.usage(BE).mappings >= 1);
  gated.release();
  await c;
  assert.equal((await r).status, 0);
  await closeAndCheckClean(p);
});

test('events taken and notifications sent are counted: one each per lone request, one event for a batch', async () => {
  const p = pair({});
  const page = p.page(0);
  for (let i = 0; i < 5; i++) {
    const r = await p.submit({ operation: BLKIF_OP_READ, sectorNumber: i * 8, segs: [{ page, first: 0, last: 7 }] });
    assert.equal(r.status, BLKIF_RSP_OKAY);
  }
  // Each lone request found req_event re-armed (a notification to the backend), and each
  // response found rsp_event re-armed by the frontend's final check (one back).
  assert.equal(p.stats.events, 5);
  assert.equal(p.stats.notifies, 5);
  const pages = Array.from({ length: 8 }, () => p.page(0));
  const all = pages.map((pg, i) => p.queue({ operation: BLKIF_OP_READ, sectorNumber: i * 8, segs: [{ page: pg, first: 0, last: 7 }] }));
  p.push();
  for (const r of await Promise.all(all)) assert.equal(r.status, BLKIF_RSP_OKAY);
  assert.equal(p.stats.events, 6, 'eight requests published at once are one notification');
  assert.ok(p.stats.notifies >= 6 && p.stats.notifies <= 13, `notifications ${p.stats.notifies}`);
  assert.equal(p.stats.snapshot().events, 6);
  await closeAndCheckClean(p);
});

/** A mapper that counts the maps the service makes (the ring was mapped before it) and the pieces it copies. */
function countingMapper(m: GrantMapper, seen: { maps: number; copies: number; pieces: number }): GrantMapper {
  return {
    map(domid, refs, writable) { seen.maps++; return m.map(domid, refs, writable); },
    unmap: (x) => m.unmap(x),
    setUnmapNotify: (x, n) => m.setUnmapNotify(x, n),
    copy(domid, batch, local, toForeign) { seen.copies++; seen.pieces += batch.count; m.copy(domid, batch, local, toForeign); },
    close: () => m.close(),
  };
}

test('grant copy: no page of the guest is mapped; writes, reads, a flush with data and indirect requests move the right bytes, one copy call per request', async () => {
  const disk = createRamDisk({ size: 1 << 20 });
  const seen = { maps: 0, copies: 0, pieces: 0 };
  const p = pair({ backing: disk, grantCopy: true, persistent: true, maxIndirect: 32, wrapMapper: (m) => countingMapper(m, seen) });
  const src = [p.page(0x5a, false), p.page(0x6b, false)];
  src[1]!.buffer.fill(0x7c, 2048);
  const w = await p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 40, segs: [{ page: src[0]!, first: 2, last: 7 }, { page: src[1]!, first: 0, last: 7 }] });
  assert.equal(w.status, BLKIF_RSP_OKAY);
  const expect = Buffer.concat([Buffer.alloc(6 * 512, 0x5a), Buffer.alloc(2048, 0x6b), Buffer.alloc(2048, 0x7c)]);
  assert.deepEqual(disk.data.subarray(40 * 512, 40 * 512 + expect.length), expect);
  const f = await p.submit({ operation: BLKIF_OP_FLUSH_DISKCACHE, sectorNumber: 0, segs: fullSegs([p.page(0x31, false)]) });
  assert.equal(f.status, BLKIF_RSP_OKAY);
  assert.equal(disk.data.subarray(0, 4096).every((x) => x === 0x31), true, 'the flush\'s data was written');
  const dst = Array.from({ length: 20 }, () => p.page(0xff));
  const r = await p.submit({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_READ, sectorNumber: 38, segs: dst.map((page, i) => ({ page, first: i === 0 ? 4 : 0, last: 7 })) });
  assert.equal(r.status, BLKIF_RSP_OKAY);
  const got = Buffer.concat(dst.map((pg, i) => pg.buffer.subarray(i === 0 ? 2048 : 0)));
  assert.deepEqual(got, disk.data.subarray(38 * 512, 38 * 512 + got.length));
  assert.equal(dst[0]!.buffer.subarray(0, 2048).every((x) => x === 0xff), true, 'sectors outside the segment are untouched');
  assert.equal(seen.maps, 0, 'nothing of the guest was mapped');
  // write, flush, indirect read (its descriptor page, then its data after the read).
  assert.equal(seen.copies, 4);
  assert.equal(seen.pieces, 2 + 1 + 1 + 20);
  assert.equal(p.svc.persistentGrants, 0, 'persistent grants are not used with grant copy');
  assert.ok(p.svc.copyBufferBytes > 0);
  await closeAndCheckClean(p);
  assert.equal(p.svc.copyBufferBytes, 0, 'close frees the copy buffers');
});

test('grant copy: a read into a read-only grant, a ref never granted and another domain\'s grant fail the request; pages and disk stay as they were; the ring keeps serving', async () => {
  const disk = createRamDisk({ size: 1 << 20 });
  disk.data.fill(0x42, 0, 64 * 512);
  const p = pair({ backing: disk, grantCopy: true });
  const ro = p.page(0x11, false);
  const okPage = p.page(0);
  // Refused after the read: the writable first segment may have been copied, the read-only one never.
  const r1 = await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: [{ page: okPage, first: 0, last: 7 }, { page: ro, first: 0, last: 7 }] });
  assert.equal(r1.status, BLKIF_RSP_ERROR);
  assert.equal(ro.buffer.every((x) => x === 0x11), true, 'the read-only page was not written');
  const bogus = { page: { ...ro, refs: [4000] }, first: 0, last: 7 };
  assert.equal((await p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 8, segs: [bogus] })).status, BLKIF_RSP_ERROR);
  const other = p.plat.sharer(FE).share(9, 1, true);
  other.buffer.fill(0x99);
  assert.equal((await p.submit({ operation: BLKIF_OP_WRITE, sectorNumber: 16, segs: fullSegs([other]) })).status, BLKIF_RSP_ERROR);
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 24, segs: fullSegs([other]) })).status, BLKIF_RSP_ERROR);
  assert.equal(other.buffer.every((x) => x === 0x99), true, 'a grant to another domain was not written');
  assert.equal(disk.data.subarray(0, 64 * 512).every((x) => x === 0x42), true, 'no failed write reached the disk');
  assert.equal(p.stats.errors, 4);
  const after = p.page(0);
  assert.equal((await p.submit({ operation: BLKIF_OP_READ, sectorNumber: 0, segs: fullSegs([after]) })).status, BLKIF_RSP_OKAY);
  assert.equal(after.buffer.every((x) => x === 0x42), true);
  await closeAndCheckClean(p);
});

test('grant copy: the slot buffers a ring keeps between requests are bounded by COPY_BUFFER_KEEP', async () => {
  const inner = createRamDisk({ size: 1 << 20 });
  const disk = gatedDisk(inner);
  const p = pair({ backing: disk, grantCopy: true, maxIndirect: 128 });
  // 32 reads of 512 KiB in flight at once (a whole order-0 ring): 16 MiB of buffers.
  const pages = Array.from({ length: 128 }, () => p.page());
  const rsps = Array.from({ length: 32 }, (_, i) => p.queue({ operation: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_READ, sectorNumber: (i % 2) * 1024, segs: fullSegs(pages) }));
  p.push();
  await until(() => disk.inFlight > 0, 'reads issued');
  assert.equal(p.svc.copyBufferBytes, 32 * (512 << 10), 'each request in flight has its buffer');
  disk.release(64);
  const got = await Promise.all(rsps);
  assert.ok(got.every((r) => r.status === BLKIF_RSP_OKAY));
  assert.ok(p.svc.copyBufferBytes <= COPY_BUFFER_KEEP, `${p.svc.copyBufferBytes} bytes kept, bound ${COPY_BUFFER_KEEP}`);
  assert.ok(p.svc.copyBufferBytes > 0, 'some are kept for the next requests');
  await closeAndCheckClean(p);
});
