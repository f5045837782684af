// Backpressure, fairness, grant-pool limits, flush ordering, barriers, discard, read-only
// disks, argument checks and AbortSignal, against the scripted backend holding responses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
  BLKIF_RSP_EOPNOTSUPP, VDISK_READONLY,
} from '../../protocol/blkif.ts';
import { isBlkfrontError } from '../../lib/blkfront/errors.ts';
import { waitFor } from '../support/blkfront-fixture.ts';
import { attach, assertReleased, pattern, world } from './blkfront-harness.ts';

test('a full ring queues requests and sends them in submission order as slots free up', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxQueues: 1, maxRingPageOrder: 0 });
  w.backend.hold = true;
  const ops = Array.from({ length: 100 }, (_, i) => f.write(i * 8, pattern(512, i)));
  await waitFor(() => w.backend.heldCount === 32, 2000, 'a full ring');
  assert.equal(w.backend.seen.length, 32, 'never more than the ring holds');
  assert.equal(f.stats().queued, 68);
  w.backend.hold = false;
  w.backend.release();
  await Promise.all(ops);
  assert.deepEqual(w.backend.seen.map((r) => r.sector), Array.from({ length: 100 }, (_, i) => i * 8), 'FIFO');
  for (let i = 0; i < 100; i++) assert.deepEqual(w.disk.subarray(i * 4096, i * 4096 + 512), pattern(512, i));
  await f.disconnect();
  assertReleased(w);
});

test('a large operation at the head is not overtaken by small ones behind it', async (t) => {
  const w = await world(t, { diskBytes: 4 * 1024 * 1024 });
  const f = await attach(w, { maxQueues: 1, maxRingPageOrder: 0, maxIndirectSegments: 0 });
  w.backend.hold = true;
  const filler = Array.from({ length: 30 }, (_, i) => f.read(i * 8, Buffer.alloc(512)));
  await waitFor(() => w.backend.heldCount === 30, 2000, 'ring nearly full');
  // 1 MiB = 256 pages = 24 requests of <= 11 segments; then small ones.
  const big = f.write(4096, pattern(1024 * 1024, 9));
  const small = Array.from({ length: 10 }, (_, i) => f.write(8 + i * 8, pattern(512, 100 + i)));
  w.backend.hold = false;
  w.backend.release();
  await Promise.all([...filler, big, ...small]);
  const order = w.backend.seen.slice(30).map((r) => (r.sector >= 4096 ? 'big' : 'small'));
  assert.deepEqual(order, [...Array(24).fill('big'), ...Array(10).fill('small')]);
  assert.deepEqual(w.disk.subarray(4096 * 512, 4096 * 512 + 1024 * 1024), pattern(1024 * 1024, 9));
  await f.disconnect();
  assertReleased(w);
});

test('persistent grant pool limit: requests wait for pages, then proceed', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxQueues: 1, maxIndirectSegments: 0, maxPersistentPages: 32 });
  w.backend.hold = true;
  // Each 11-page write needs 11 pooled pages: two fit in 32, the third waits.
  const ops = [0, 1, 2, 3].map((i) => f.write(i * 88, pattern(11 * 4096, i)));
  await waitFor(() => w.backend.heldCount === 2, 2000, 'two requests');
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(w.backend.seen.length, 2, 'the third request waits for grant pages, not for a ring slot');
  w.backend.hold = false;
  w.backend.release();
  await Promise.all(ops);
  for (let i = 0; i < 4; i++) assert.deepEqual(w.disk.subarray(i * 88 * 512, i * 88 * 512 + 11 * 4096), pattern(11 * 4096, i));
  await f.disconnect();
  assertReleased(w);
});

test('flush is sent only after every earlier write is answered, and later writes are not sent before it', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxQueues: 2 });
  w.backend.hold = true;
  const writes = [f.write(0, pattern(4096, 1)), f.write(8, pattern(4096, 2))];
  const flush = f.flush();
  const after = f.write(16, pattern(4096, 3));
  await waitFor(() => w.backend.heldCount === 2, 2000, 'two writes');
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(w.backend.seen.map((r) => r.operation), [BLKIF_OP_WRITE, BLKIF_OP_WRITE]);
  w.backend.release();
  await Promise.all(writes);
  await waitFor(() => w.backend.heldCount === 2, 2000, 'the flush and the later write');
  assert.equal(w.backend.seen[2]!.operation, BLKIF_OP_FLUSH_DISKCACHE);
  assert.equal(w.backend.seen[2]!.nrSegments, 0);
  assert.equal(w.backend.seen[3]!.operation, BLKIF_OP_WRITE);
  w.backend.hold = false;
  w.backend.release();
  await flush;
  await after;
  await f.disconnect();
  assertReleased(w);
});

test('flush uses an empty WRITE_BARRIER when only feature-barrier is offered', async (t) => {
  const w = await world(t, { backend: { flushCache: false, barrier: true } });
  const f = await attach(w);
  assert.equal((await f.getInfo()).features.flush, 'barrier');
  await f.flush();
  assert.deepEqual(w.backend.seen.map((r) => [r.operation, r.nrSegments]), [[BLKIF_OP_WRITE_BARRIER, 0]]);
  await f.disconnect();
  assertReleased(w);
});

test('without flush features flush completes locally; EOPNOTSUPP to a flush turns flushing off', async (t) => {
  const w = await world(t, { backend: { flushCache: false, barrier: false } });
  const f = await attach(w);
  assert.equal((await f.getInfo()).features.flush, 'none');
  await f.write(0, pattern(512, 1));
  await f.flush();
  assert.deepEqual(w.backend.seen.map((r) => r.operation), [BLKIF_OP_WRITE]);
  await f.disconnect();

  const w2 = await world(t);
  const f2 = await attach(w2);
  w2.backend.statusFor = (req) => (req.operation === BLKIF_OP_FLUSH_DISKCACHE ? BLKIF_RSP_EOPNOTSUPP : undefined);
  await f2.flush();
  assert.equal((await f2.getInfo()).features.flush, 'none');
  await f2.flush();
  assert.equal(w2.backend.seen.length, 1, 'no flush sent once the backend refused one');
  await f2.disconnect();
  assertReleased(w2);
});

test('discard zeroes the range; secure sets BLKIF_DISCARD_SECURE; refused when not offered', async (t) => {
  const w = await world(t);
  w.disk.fill(0x5a);
  const f = await attach(w);
  const info = await f.getInfo();
  assert.equal(info.features.discard, true);
  assert.equal(info.features.discardGranularity, 4096);
  await f.discard(16, 24);
  await f.discard(64, 8, { secure: true });
  const back = Buffer.alloc(24 * 512);
  await f.read(16, back);
  assert.ok(back.every((b) => b === 0));
  assert.equal(w.disk[15 * 512], 0x5a);
  assert.equal(w.disk[40 * 512], 0x5a);
  const d = w.backend.seen.filter((r) => r.operation === BLKIF_OP_DISCARD);
  assert.deepEqual(d.map((r) => [r.sector, r.nrSectors, r.discardFlag]), [[16, 24, 0], [64, 8, BLKIF_DISCARD_SECURE]]);
  await f.disconnect();

  const w2 = await world(t, { backend: { discard: false } });
  const f2 = await attach(w2);
  await assert.rejects(f2.discard(0, 8), (e) => isBlkfrontError(e, 'EOPNOTSUPP'));
  await f2.disconnect();
  const w3 = await world(t, { backend: { discardSecure: false } });
  const f3 = await attach(w3);
  await assert.rejects(f3.discard(0, 8, { secure: true }), (e) => isBlkfrontError(e, 'EOPNOTSUPP'));
  await f3.discard(0, 8);
  await f3.disconnect();
  assertReleased(w3);
});

test('a read-only disk refuses writes and discards locally and still reads', async (t) => {
  const w = await world(t, { backend: { info: VDISK_READONLY } });
  w.disk.fill(7, 0, 512);
  const f = await attach(w);
  assert.equal((await f.getInfo()).readWrite, false);
  await assert.rejects(f.write(0, Buffer.alloc(512)), (e) => isBlkfrontError(e, 'EROFS'));
  await assert.rejects(f.discard(0, 1), (e) => isBlkfrontError(e, 'EROFS'));
  const b = Buffer.alloc(512);
  await f.read(0, b);
  assert.equal(b[0], 7);
  assert.ok(w.backend.seen.every((r) => r.dataOp === BLKIF_OP_READ));
  await f.disconnect();
  assertReleased(w);
});

test('arguments are checked: lengths, ranges, sector numbers; 4096-byte sectors address 4096-byte units', async (t) => {
  const w = await world(t, { backend: { sectorSize: 4096 }, diskBytes: 256 * 4096 });
  const f = await attach(w);
  const info = await f.getInfo();
  assert.equal(info.sectorSize, 4096);
  assert.equal(info.sectors, 256);
  await assert.rejects(f.read(0, Buffer.alloc(512)), (e) => isBlkfrontError(e, 'EINVAL') && e.field === 'buffers');
  await assert.rejects(f.read(255, Buffer.alloc(8192)), (e) => isBlkfrontError(e, 'EINVAL') && e.field === 'sector');
  await assert.rejects(f.read(-1, Buffer.alloc(4096)), (e) => isBlkfrontError(e, 'EINVAL'));
  await assert.rejects(f.read(1.5, Buffer.alloc(4096)), (e) => isBlkfrontError(e, 'EINVAL'));
  await f.read(0, []);
  // Two 2 KiB buffers make one 4 KiB sector: any buffer lengths with a whole-sector total.
  const data = pattern(4096, 5);
  await f.write(3, [data.subarray(0, 2048), data.subarray(2048)]);
  assert.deepEqual(w.disk.subarray(3 * 4096, 4 * 4096), data);
  assert.equal(w.backend.seen.at(-1)!.sector, 24, 'wire sectors are 512-byte units');
  await f.disconnect();
  assertReleased(w);
});

test('AbortSignal: a queued operation is never sent; an in-flight read does not touch the buffer afterwards', async (t) => {
  const w = await world(t);
  w.disk.fill(0x33);
  const f = await attach(w, { maxQueues: 1, maxRingPageOrder: 0 });
  w.backend.hold = true;
  const fill = Array.from({ length: 32 }, (_, i) => f.read(i * 8, Buffer.alloc(512)));
  await waitFor(() => w.backend.heldCount === 32, 2000, 'full ring');
  const ac = new AbortController();
  const queued = f.write(1000, pattern(512, 1), { signal: ac.signal });
  ac.abort(new Error('changed my mind'));
  await assert.rejects(queued, (e) => isBlkfrontError(e, 'ABORT_ERR') && /changed my mind/.test((e as Error).message));
  const pre = new AbortController();
  pre.abort();
  await assert.rejects(f.read(0, Buffer.alloc(512), { signal: pre.signal }), (e) => isBlkfrontError(e, 'ABORT_ERR'));
  // Abort a read whose request is on the ring.
  w.backend.hold = false;
  w.backend.release();
  await Promise.all(fill);
  w.backend.hold = true;
  const buf = Buffer.alloc(4096);
  const ac2 = new AbortController();
  const inflight = f.read(0, buf, { signal: ac2.signal });
  await waitFor(() => w.backend.heldCount === 1, 2000, 'read on the ring');
  ac2.abort();
  await assert.rejects(inflight, (e) => isBlkfrontError(e, 'ABORT_ERR'));
  w.backend.hold = false;
  w.backend.release();
  await waitFor(() => f.stats().inFlight === 0, 2000, 'late response consumed');
  assert.ok(buf.every((b) => b === 0), 'late data not copied into an aborted read');
  assert.ok(!w.backend.seen.some((r) => r.sector === 1000), 'aborted queued write never sent');
  await f.read(0, buf);
  assert.equal(buf[0], 0x33);
  await f.disconnect();
  assertReleased(w);
});
