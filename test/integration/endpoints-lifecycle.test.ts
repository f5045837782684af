// Lifecycle of a disk between our blkfront and our blkback (`xenblk serve`) on the simulator,
// each in its own process: hot-unplug, a frontend process killed while connected and a new
// one taking over, a backend process killed with I/O in flight and restarted (nothing
// acknowledged is lost), a resize while connected, and a read-only disk. After each, every
// grant, mapping and channel is released.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Blkfront } from '../../lib/blkfront/device.ts';
import { isBlkfrontError } from '../../lib/blkfront/errors.ts';
import { XenbusState } from '../../protocol/xenbus-state.ts';
import { assertSimReleased, fileBytes, randomBytes, serve, simWorld, stopServe, xenblk } from '../support/blkfront-sim.ts';

const MiB = 1024 * 1024;
const opts = { deviceTimeoutMs: 30_000, connectTimeoutMs: 30_000, closeTimeoutMs: 5_000 };

test('hot-unplug: the backend process stops, the toolstack unplugs, the frontend closes and fails I/O with ENODEV', async (t) => {
  const w = await simWorld(t, 4 * MiB);
  const back = serve(t, w);
  const f = await Blkfront.attach(w.host, 'xvdb', opts);
  await f.write(0, randomBytes(4096, 1));
  const unplugged = new Promise((r) => f.once('unplugged', r));
  await stopServe(back);
  assert.ok(isBlkfrontError(await unplugged, 'ENODEV'));
  await assert.rejects(f.read(0, Buffer.alloc(512)), (e) => isBlkfrontError(e, 'ENODEV'));
  const walked = f.transitions.map((s) => `${s.side}:${s.name}`);
  assert.ok(walked.includes('backend:Closing') && walked.includes('frontend:Closed'), walked.join(' '));
  await f.disconnect();
  await assertSimReleased(w.host);
});

test('a frontend process killed while connected: a new frontend takes the disk over and sees the data', async (t) => {
  const w = await simWorld(t, 64 * MiB);
  serve(t, w);
  const data = randomBytes(2 * MiB, 2);
  const f0 = await Blkfront.attach(w.host, 'xvdb', opts);
  await f0.write(2048, data);
  await f0.disconnect();
  // Another process of domain 1 attaches and dumps the disk to its stdout, which we stop
  // reading: once the pipe is full the child blocks mid-dump, still Connected, and is killed
  // there (a dump that could finish would race the kill with the child's own Closing).
  const child = xenblk(['attach', '--vdev', 'xvdb', '--sim', w.dir, '--domid', '1', '--dump', '-']);
  child.proc.stdout!.pause();
  const deadline = Date.now() + 30_000;
  while (!/sectors of 512 bytes/.test(child.output())) {
    if (child.proc.exitCode !== null || Date.now() > deadline) assert.fail(`attach child did not connect:\n${child.output()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  child.proc.kill('SIGKILL');
  await child.exited;
  const f = await Blkfront.attach(w.host, 'xvdb', opts);
  const back = Buffer.alloc(data.length);
  await f.read(2048, back);
  assert.ok(back.equals(data));
  const front = f.transitions.filter((s) => s.side === 'frontend').map((s) => s.name);
  assert.equal(front[0], 'Connected', 'found the dead frontend\'s state');
  assert.deepEqual(front.slice(1), ['Closing', 'Closed', 'Initialising', 'Initialised', 'Connected'], 'reset before reconnecting');
  await f.disconnect();
  await assertSimReleased(w.host);
});

test('backend process killed with I/O in flight and restarted: every operation completes, nothing acknowledged is lost', async (t) => {
  const w = await simWorld(t, 32 * MiB);
  let back = serve(t, w);
  const f = await Blkfront.attach(w.host, 'xvdb', { ...opts, maxQueues: 2, maxIndirectSegments: 64 });
  const acked = new Map<number, Buffer>();
  let killed = false;
  const reconnected = new Promise<void>((r) => f.once('reconnected', () => r()));
  // 16 writers, each writing its own 64 KiB slots so the final content is known.
  const writers = Array.from({ length: 16 }, async (_, wi) => {
    for (let k = 0; k < 24; k++) {
      const slot = wi * 24 + k;
      const data = randomBytes(64 * 1024, 1000 + slot);
      await f.write(slot * 128 + 3, data);
      acked.set(slot, data);
      if (!killed && acked.size >= 40) {
        killed = true;
        back.proc.kill('SIGKILL');
        await back.exited;
        back = serve(t, w);
      }
    }
  });
  await Promise.all(writers);
  await reconnected;
  assert.equal(acked.size, 16 * 24);
  for (const [slot, data] of acked) {
    const got = Buffer.alloc(data.length);
    await f.read(slot * 128 + 3, got);
    assert.ok(got.equals(data), `slot ${slot} read back`);
    assert.ok(fileBytes(w.image, (slot * 128 + 3) * 512, data.length).equals(data), `slot ${slot} in the backing file`);
  }
  const st = f.stats();
  assert.equal(st.reconnects, 1);
  assert.equal(st.opsFailed, 0);
  await f.disconnect();
  await assertSimReleased(w.host);
});

test('resize while connected: Connected -> Connected with the new size', async (t) => {
  const w = await simWorld(t, 4 * MiB);
  serve(t, w);
  const f = await Blkfront.attach(w.host, 'xvdb', opts);
  assert.equal((await f.getInfo()).sectors, 8192);
  const resized = new Promise<{ previous: number; sectors: number }>((r) => f.once('resize', r));
  fs.truncateSync(w.image, 8 * MiB);
  assert.deepEqual(await resized, { previous: 8192, sectors: 16384 });
  const tail = randomBytes(512, 9);
  await f.write(16383, tail);
  const back = Buffer.alloc(512);
  await f.read(16383, back);
  assert.ok(back.equals(tail));
  assert.ok(f.transitions.every((s) => s.side !== 'frontend' || s.state !== XenbusState.Closing), 'no reconnect for a resize');
  await f.disconnect();
  await assertSimReleased(w.host);
});

test('a read-only disk is advertised read-only and refuses writes and discards', async (t) => {
  const w = await simWorld(t, 4 * MiB);
  const fd = fs.openSync(w.image, 'r+');
  fs.writeSync(fd, randomBytes(4096, 5), 0, 4096, 0);
  fs.closeSync(fd);
  serve(t, w, ['--readonly']);
  const f = await Blkfront.attach(w.host, 'xvdb', opts);
  const info = await f.getInfo();
  assert.equal(info.readWrite, false);
  await assert.rejects(f.write(0, Buffer.alloc(512)), (e) => isBlkfrontError(e, 'EROFS'));
  await assert.rejects(f.discard(0, 8), (e) => isBlkfrontError(e, 'EROFS'));
  const back = Buffer.alloc(4096);
  await f.read(0, back);
  assert.ok(back.equals(randomBytes(4096, 5)));
  await f.disconnect();
  await assertSimReleased(w.host);
});
