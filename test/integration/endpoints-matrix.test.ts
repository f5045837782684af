// Our blkfront (this process, domain 1) against our blkback (`xenblk serve`, its own process)
// on the simulator, over every combination that matters: ABI {x86_32, x86_64} x ring order
// {0, 4} x queues {1, 4} x indirect {off, on} x persistent {off, on}. Each combination attaches,
// writes random data (unaligned to pages, multi-segment, more than 11 segments, several
// buffers), reads it back, compares with the backing file's bytes, flushes, discards and reads
// zeros, detaches, and checks that every grant, mapping and channel was released.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Blkfront } from '../../lib/blkfront/device.ts';
import type { BlkifAbi } from '../../protocol/blkif.ts';
import { assertSimReleased, fileBytes, randomBytes, serve, simWorld } from '../support/blkfront-sim.ts';

const MiB = 1024 * 1024;

interface Combo {
  abi: BlkifAbi;
  order: number;
  queues: number;
  indirect: number;
  persistent: boolean;
}

const combos: Combo[] = [];
for (const abi of ['x86_32', 'x86_64'] as const) {
  for (const order of [0, 4]) {
    for (const queues of [1, 4]) {
      for (const indirect of [0, 1024]) {
        for (const persistent of [false, true]) combos.push({ abi, order, queues, indirect, persistent });
      }
    }
  }
}

test('blkfront x blkback over every ABI, ring order, queue count, indirect and persistent setting', async (t) => {
  const w = await simWorld(t, 16 * MiB);
  // The backend offers the most blkif.h allows (8 indirect pages of 512 segments), so 1024
  // segments per request means two indirect pages.
  serve(t, w, ['--max-indirect-segments', '4096']);
  let seed = 0;
  for (const c of combos) {
    const name = `${c.abi} order=${c.order} queues=${c.queues} indirect=${c.indirect} persistent=${c.persistent}`;
    await t.test(name, async () => {
      const f = await Blkfront.attach(w.host, 'xvdb', {
        abi: c.abi, maxRingPageOrder: c.order, maxQueues: c.queues, maxIndirectSegments: c.indirect, persistent: c.persistent,
        deviceTimeoutMs: 30_000, connectTimeoutMs: 30_000,
      });
      try {
        const info = await f.getInfo();
        assert.equal(info.sectorSize, 512);
        assert.equal(info.sectors, 16 * MiB / 512);
        assert.equal(info.features.protocol, `${c.abi}-abi`);
        assert.equal(info.features.ringPageOrder, c.order);
        assert.equal(info.features.queues, c.queues);
        assert.equal(info.features.persistentGrants, c.persistent);
        assert.equal(info.features.indirectSegments, c.indirect);

        // Extents: one sector at an odd sector; 3 sectors across a page boundary; 11 pages
        // exactly; 200 KiB from mid-page (more than 11 segments); 2 MiB in three buffers.
        const extents: [number, Buffer[]][] = [
          [1, [randomBytes(512, ++seed)]],
          [6, [randomBytes(3 * 512, ++seed)]],
          [8 * 40, [randomBytes(11 * 4096, ++seed)]],
          [8 * 100 + 3, [randomBytes(200 * 1024, ++seed)]],
          [8 * 1000 + 5, [randomBytes(512 * 1024 + 512, ++seed), randomBytes(1024 * 1024, ++seed), randomBytes(512 * 1024 - 512, ++seed)]],
        ];
        await Promise.all(extents.map(([s, bufs]) => f.write(s, bufs)));
        await f.flush();
        for (const [s, bufs] of extents) {
          const want = Buffer.concat(bufs);
          const got = Buffer.alloc(want.length);
          await f.read(s, got);
          assert.ok(got.equals(want), `read back at sector ${s}`);
          assert.ok(fileBytes(w.image, s * 512, want.length).equals(want), `backing file at sector ${s}`);
        }
        assert.ok(info.features.discard, `the backend offers no discard: the file system of ${w.image} must support fallocate PUNCH_HOLE (ext4, xfs, btrfs, tmpfs)`);
        {
          await f.discard(8 * 1000 + 5, 1024);
          const z = Buffer.alloc(1024 * 512, 0xff);
          await f.read(8 * 1000 + 5, z);
          assert.ok(z.every((b) => b === 0), 'discarded sectors read back as zeros');
          assert.ok(fileBytes(w.image, (8 * 1000 + 5) * 512, 1024 * 512).every((b) => b === 0), 'backing file zero after discard');
        }
        const st = f.stats();
        assert.equal(st.errorResponses, 0);
      } finally {
        await f.disconnect();
      }
      await assertSimReleased(w.host, name);
    });
  }
});

test('4096-byte logical sectors and secure discard against blkback', async (t) => {
  const w = await simWorld(t, 8 * MiB);
  serve(t, w, ['--sector-size', '4096']);
  const f = await Blkfront.attach(w.host, 'xvdb', { deviceTimeoutMs: 30_000, connectTimeoutMs: 30_000, maxIndirectSegments: 64 });
  try {
    const info = await f.getInfo();
    assert.equal(info.sectorSize, 4096);
    assert.equal(info.sectors, 8 * MiB / 4096);
    // Sector numbers count 4096-byte units; a 512-byte buffer is not a whole sector.
    const data = [randomBytes(4096, 1), randomBytes(40 * 4096, 2), randomBytes(2048, 3), randomBytes(2048, 4)];
    await f.write(7, data);
    const want = Buffer.concat(data);
    const got = Buffer.alloc(want.length);
    await f.read(7, got);
    assert.ok(got.equals(want));
    assert.ok(fileBytes(w.image, 7 * 4096, want.length).equals(want), 'backing file at byte 7 * 4096');
    await assert.rejects(f.read(0, Buffer.alloc(512)), /not a multiple of the sector size 4096/);
    assert.ok(info.features.secureDiscard, `no discard-secure: the file system of ${w.image} must support fallocate PUNCH_HOLE`);
    await f.discard(8, 4, { secure: true });
    assert.ok(fileBytes(w.image, 8 * 4096, 4 * 4096).every((b) => b === 0), 'securely discarded sectors are zero');
    assert.ok(fileBytes(w.image, 7 * 4096, 4096).equals(want.subarray(0, 4096)), 'the sector before is untouched');
  } finally {
    await f.disconnect();
  }
  await assertSimReleased(w.host);
});
