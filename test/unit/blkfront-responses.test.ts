// Responses from a buggy or hostile backend: unknown, duplicate and stale ids, wrong operations,
// undefined statuses and an overflowing rsp_prod are errors that disable the device (Linux
// blkif_interrupt's checks), never a crash and never a read resolved with the wrong data.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR } from '../../protocol/blkif.ts';
import { BlkfrontError, isBlkfrontError } from '../../lib/blkfront/errors.ts';
import { waitFor } from '../support/blkfront-fixture.ts';
import { attach, assertReleased, pattern, world } from './blkfront-harness.ts';

function protoError(field: string) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof BlkfrontError, String(e));
    assert.equal(e.code, 'EPROTO');
    assert.equal(e.field, field);
    return true;
  };
}

async function disabled(f: { once(ev: string, l: (e: BlkfrontError) => void): unknown }): Promise<BlkfrontError> {
  return new Promise((r) => f.once('disabled', r));
}

test('a response id beyond the ring disables the device; pending and later I/O fail with EPROTO', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxQueues: 1 });
  w.backend.hold = true;
  const pending = f.write(0, pattern(4096, 1));
  await waitFor(() => w.backend.heldCount === 1, 2000, 'the write to reach the backend');
  const off = disabled(f);
  w.backend.inject(0, { idLo: 9999, idHi: 0, operation: BLKIF_OP_WRITE, status: 0 });
  assert.equal((await off).field, 'id');
  await assert.rejects(pending, protoError('id'));
  await assert.rejects(f.read(0, Buffer.alloc(512)), protoError('id'));
  assert.equal(f.connected, false);
  await f.disconnect();
  assertReleased(w);
});

test('a stale response (right slot, old generation) never completes the read now in that slot', async (t) => {
  const w = await world(t);
  w.disk.fill(0xab, 0, 4096);
  const f = await attach(w, { maxQueues: 1 });
  w.backend.hold = true;
  const first = f.read(0, Buffer.alloc(4096));
  await waitFor(() => w.backend.heldCount === 1, 2000, 'first read');
  const old = w.backend.heldResponses()[0]!;
  w.backend.release();
  await first;
  // The next read reuses the freed slot with a new generation; replay the old answer.
  const buf = Buffer.alloc(4096);
  const second = f.read(0, buf);
  await waitFor(() => w.backend.heldCount === 1, 2000, 'second read');
  assert.equal(w.backend.heldResponses()[0]!.idLo, old.idLo, 'same slot reused');
  assert.notEqual(w.backend.heldResponses()[0]!.idHi, old.idHi, 'new generation');
  w.backend.inject(0, old);
  await assert.rejects(second, protoError('id'));
  assert.ok(buf.every((b) => b === 0), 'the caller buffer was not filled by the stale answer');
  await f.disconnect();
  assertReleased(w);
});

test('a duplicated response disables the device', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxQueues: 1 });
  w.backend.hold = true;
  const p = f.write(8, pattern(512, 2));
  await waitFor(() => w.backend.heldCount === 1, 2000, 'write');
  const rsp = w.backend.heldResponses()[0]!;
  w.backend.release();
  await p;
  const off = disabled(f);
  w.backend.inject(0, rsp);
  assert.equal((await off).code, 'EPROTO');
  await f.disconnect();
  assertReleased(w);
});

test('a response with the wrong operation disables the device', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxQueues: 1 });
  w.backend.mutate = (rsp) => { if (rsp.operation === BLKIF_OP_READ) rsp.operation = BLKIF_OP_WRITE; };
  await assert.rejects(f.read(0, Buffer.alloc(512)), protoError('operation'));
  await f.disconnect();
  assertReleased(w);
});

test('rsp_prod beyond what could be outstanding disables the device', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxQueues: 1, maxRingPageOrder: 0 });
  w.backend.hold = true;
  const p = f.read(0, Buffer.alloc(512));
  await waitFor(() => w.backend.heldCount === 1, 2000, 'read');
  w.backend.setRspProd(0, w.backend.rspProdPvt(0) + 33);
  await assert.rejects(p, protoError('rsp_prod'));
  await f.disconnect();
  assertReleased(w);
});

test('error statuses fail only their operation: ERROR -> EIO, EOPNOTSUPP, undefined status -> EIO', async (t) => {
  const w = await world(t);
  const f = await attach(w);
  const statuses: Record<number, number> = { 8: BLKIF_RSP_ERROR, 16: BLKIF_RSP_EOPNOTSUPP, 24: 7 };
  w.backend.statusFor = (req) => statuses[req.sectorNumber];
  await assert.rejects(f.read(8, Buffer.alloc(512 * 8)), (e) => isBlkfrontError(e, 'EIO') && e.value === BLKIF_RSP_ERROR);
  await assert.rejects(f.write(16, Buffer.alloc(512 * 8)), (e) => isBlkfrontError(e, 'EOPNOTSUPP'));
  await assert.rejects(f.read(24, Buffer.alloc(512 * 8)), (e) => isBlkfrontError(e, 'EIO') && e.field === 'status' && e.value === 7);
  // The device is still fine.
  const data = pattern(8192, 3);
  await f.write(40, data);
  const back = Buffer.alloc(8192);
  await f.read(40, back);
  assert.deepEqual(back, data);
  assert.equal(f.connected, true);
  await f.disconnect();
  assertReleased(w);
});

test('a multi-request operation fails as a whole when one of its requests fails', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxIndirectSegments: 0, maxQueues: 1 });
  w.backend.statusFor = (req) => (req.sectorNumber === 88 ? BLKIF_RSP_ERROR : undefined);
  // 200 sectors from 0: requests at 0, 88, 176 (11 pages each).
  await assert.rejects(f.read(0, Buffer.alloc(200 * 512)), (e) => isBlkfrontError(e, 'EIO'));
  assert.equal(f.stats().inFlight, 0);
  await f.disconnect();
  assertReleased(w);
});
