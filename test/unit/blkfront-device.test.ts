// blkfront against the scripted backend on the memory platform: the handshake publishes what
// blkif.h asks for, data round-trips through every request shape, and everything is released.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { XenbusState } from '../../protocol/xenbus-state.ts';
import { BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE } from '../../protocol/blkif.ts';
import { attach, assertReleased, pattern, world } from './blkfront-harness.ts';

test('attach walks the handshake and publishes rings, protocol and persistent grants', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxRingPageOrder: 2, maxQueues: 1 });
  const fp = w.paths.frontendPath;
  assert.equal(await w.xs0.read(`${fp}/state`), String(XenbusState.Connected));
  assert.equal(await w.xs0.read(`${fp}/ring-page-order`), '2');
  for (let i = 0; i < 4; i++) assert.match(await w.xs0.read(`${fp}/ring-ref${i}`), /^[0-9]+$/);
  assert.equal(await w.xs0.tryRead(`${fp}/ring-ref`), undefined);
  assert.match(await w.xs0.read(`${fp}/event-channel`), /^[0-9]+$/);
  assert.equal(await w.xs0.read(`${fp}/protocol`), 'x86_64-abi');
  assert.equal(await w.xs0.read(`${fp}/feature-persistent`), '1');
  const info = await f.getInfo();
  assert.equal(info.sectors, w.disk.length / 512);
  assert.equal(info.sectorSize, 512);
  assert.equal(info.readWrite, true);
  assert.equal(info.features.ringPageOrder, 2);
  assert.equal(info.features.queues, 1);
  assert.equal(info.features.flush, 'flush-cache');
  assert.equal(info.features.persistentGrants, true);
  const walked = f.transitions.filter((s) => s.side === 'frontend').map((s) => s.name);
  assert.deepEqual(walked.slice(-2), ['Initialised', 'Connected']);
  await f.disconnect();
  assert.equal(await w.xs0.read(`${fp}/state`), String(XenbusState.Closed));
  assertReleased(w);
});

test('multi-queue publishes queue-N directories and spreads requests', async (t) => {
  const w = await world(t, { backend: { maxQueues: 4 } });
  const f = await attach(w, { maxQueues: 3, maxRingPageOrder: 0 });
  const fp = w.paths.frontendPath;
  assert.equal(await w.xs0.read(`${fp}/multi-queue-num-queues`), '3');
  for (let q = 0; q < 3; q++) {
    assert.match(await w.xs0.read(`${fp}/queue-${q}/ring-ref`), /^[0-9]+$/);
    assert.match(await w.xs0.read(`${fp}/queue-${q}/event-channel`), /^[0-9]+$/);
  }
  assert.equal(await w.xs0.tryRead(`${fp}/event-channel`), undefined);
  const data = pattern(64 * 4096, 7);
  await Promise.all(Array.from({ length: 64 }, (_, i) => f.write(i * 8, data.subarray(i * 4096, (i + 1) * 4096))));
  assert.deepEqual(w.disk.subarray(0, data.length), data);
  assert.deepEqual(new Set(w.backend.seen.map((r) => r.queue)), new Set([0, 1, 2]));
  await f.disconnect();
  assertReleased(w);
});

for (const persistent of [false, true]) {
  for (const indirect of [0, 64]) {
    for (const abi of ['x86_64', 'x86_32'] as const) {
      test(`round trip abi=${abi} persistent=${persistent} indirect=${indirect}: unaligned, multi-segment, >11 segments`, async (t) => {
        const w = await world(t, { diskBytes: 2 * 1024 * 1024 });
        const f = await attach(w, { abi, persistent, maxIndirectSegments: indirect, maxQueues: 2, maxRingPageOrder: 1 });
        assert.equal((await f.getInfo()).features.protocol, `${abi}-abi`);
        // Several buffers of odd sizes (multiples of 512, not of 4096), starting mid-page.
        const bufs = [pattern(512, 1), pattern(3 * 512, 2), pattern(37 * 4096 + 1024, 3), pattern(512, 4)];
        const total = Buffer.concat(bufs);
        await f.write(13, bufs);
        assert.deepEqual(w.disk.subarray(13 * 512, 13 * 512 + total.length), total, 'backing bytes equal what was written');
        const back = [Buffer.alloc(1024), Buffer.alloc(total.length - 1024)];
        await f.read(13, back);
        assert.deepEqual(Buffer.concat(back), total);
        const shapes = w.backend.seen.filter((r) => r.dataOp === BLKIF_OP_WRITE || r.dataOp === BLKIF_OP_READ);
        assert.ok(shapes.some((r) => r.firstSect === 5), 'first request starts at sector 5 of its page');
        if (indirect > 0) {
          assert.ok(shapes.some((r) => r.operation === BLKIF_OP_INDIRECT && r.nrSegments > 11), 'indirect requests carry > 11 segments');
          assert.ok(shapes.every((r) => r.nrSegments <= indirect));
        } else {
          assert.ok(shapes.every((r) => r.operation !== BLKIF_OP_INDIRECT && r.nrSegments <= 11));
        }
        await f.disconnect();
        assertReleased(w);
      });
    }
  }
}
