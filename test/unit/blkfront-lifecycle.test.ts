// The XenbusState lifecycle around a connected disk: resize, a backend that crashes and comes
// back with I/O in flight, a backend that closes and reopens (Closed -> InitWait), hot-unplug,
// a new frontend taking over from a dead one, garbage at connect, and timeouts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { XenbusState } from '../../protocol/xenbus-state.ts';
import { Blkfront } from '../../lib/blkfront/device.ts';
import { isBlkfrontError } from '../../lib/blkfront/errors.ts';
import { FakeBlkback, createVbd, memoryXenstore, newCore, waitFor } from '../support/blkfront-fixture.ts';
import { createMemoryPlatform } from '../support/memory-host.ts';
import { FRONT, attach, assertReleased, pattern, world } from './blkfront-harness.ts';

test('Connected -> Connected with new sectors is a capacity change', async (t) => {
  const w = await world(t);
  const f = await attach(w);
  const resized = new Promise<{ previous: number; sectors: number }>((r) => f.once('resize', r));
  await w.backend.resize(2 * 1024 * 1024);
  assert.deepEqual(await resized, { previous: 2048, sectors: 4096 });
  assert.equal((await f.getInfo()).sectors, 4096);
  assert.equal(f.connected, true);
  await f.disconnect();
  assertReleased(w);
});

for (const persistent of [false, true]) {
  test(`backend crash and restart with requests in flight: re-issued, nothing lost (persistent=${persistent})`, async (t) => {
    const w = await world(t, { diskBytes: 4 * 1024 * 1024 });
    const f = await attach(w, { persistent, maxQueues: 2, maxIndirectSegments: 64 });
    await f.write(0, pattern(4096, 0));
    w.backend.hold = true;
    const writes = Array.from({ length: 20 }, (_, i) => f.write(8 + i * 64, pattern(64 * 512, i + 1)));
    const readBuf = Buffer.alloc(4096);
    const read = f.read(0, readBuf);
    await waitFor(() => w.backend.heldCount === 21, 2000, 'requests in flight');
    const events: string[] = [];
    f.on('reconnecting', () => events.push('reconnecting'));
    const back = new Promise<void>((r) => f.once('reconnected', () => { events.push('reconnected'); r(); }));
    w.backend.crash();
    w.backend.hold = false;
    await w.backend.restart();
    await back;
    await Promise.all([...writes, read]);
    assert.deepEqual(readBuf, pattern(4096, 0));
    for (let i = 0; i < 20; i++) assert.deepEqual(w.disk.subarray((8 + i * 64) * 512, (8 + i * 64 + 64) * 512), pattern(64 * 512, i + 1));
    assert.deepEqual(events, ['reconnecting', 'reconnected']);
    assert.ok(f.stats().reissued >= 21);
    assert.equal(f.stats().reconnects, 1);
    await f.disconnect();
    assertReleased(w);
  });
}

test('backend Closing -> Closed while online: frontend Closed, Initialising, reconnects and re-issues (blkif_recover)', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxQueues: 1 });
  w.backend.hold = true;
  const p = f.write(100, pattern(8192, 4));
  await waitFor(() => w.backend.heldCount === 1, 2000, 'write in flight');
  w.backend.hold = false;
  const back = new Promise<void>((r) => f.once('reconnected', r));
  // A backend going away on its own (driver reload): Closing; it unmaps when we answer Closed.
  await w.xs0.write(`${w.paths.backendPath}/state`, String(XenbusState.Closing));
  await back;
  await p;
  assert.deepEqual(w.disk.subarray(100 * 512, 100 * 512 + 8192), pattern(8192, 4));
  const front = f.transitions.filter((s) => s.side === 'frontend').map((s) => s.name);
  assert.deepEqual(front.slice(-4), ['Closed', 'Initialising', 'Initialised', 'Connected']);
  await f.disconnect();
  assertReleased(w);
});

test('hot-unplug (online=0, Closing): frontend answers Closed, I/O fails with ENODEV', async (t) => {
  const w = await world(t);
  const f = await attach(w, { maxQueues: 1 });
  w.backend.hold = true;
  const p = f.read(0, Buffer.alloc(512));
  await waitFor(() => w.backend.heldCount === 1, 2000, 'read in flight');
  const gone = new Promise((r) => f.once('unplugged', r));
  await w.xs0.write(`${w.paths.backendPath}/online`, '0');
  await w.xs0.write(`${w.paths.backendPath}/state`, String(XenbusState.Closing));
  assert.ok(isBlkfrontError(await gone, 'ENODEV'));
  await assert.rejects(p, (e) => isBlkfrontError(e, 'ENODEV'));
  await assert.rejects(f.write(0, Buffer.alloc(512)), (e) => isBlkfrontError(e, 'ENODEV'));
  assert.equal(await w.xs0.read(`${w.paths.frontendPath}/state`), String(XenbusState.Closed));
  await waitFor(async () => (await w.xs0.read(`${w.paths.backendPath}/state`)) === String(XenbusState.Closed), 2000, 'backend Closed');
  await f.disconnect();
  assertReleased(w);
});

test('a new frontend takes over from a dead one still marked Connected (reset: Closing, Closed, Initialising)', async (t) => {
  const w = await world(t);
  const core = w.core;
  const xsOld = memoryXenstore(core, FRONT);
  const oldHost = w.platform.host(FRONT, xsOld);
  const old = await Blkfront.attach(oldHost, 'xvdb', { closeTimeoutMs: 500 });
  await old.write(0, pattern(4096, 1));
  // The old frontend dies: its XenStore connection is gone, its state still says Connected.
  await xsOld.close();
  await waitFor(() => !old.connected, 2000, 'old frontend to notice');
  assert.equal(await w.xs0.read(`${w.paths.frontendPath}/state`), String(XenbusState.Connected));
  const f = await attach(w);
  const b = Buffer.alloc(4096);
  await f.read(0, b);
  assert.deepEqual(b, pattern(4096, 1));
  const walked = f.transitions.filter((s) => s.side === 'frontend').map((s) => s.name);
  assert.deepEqual(walked, ['Connected', 'Closing', 'Closed', 'Initialising', 'Initialised', 'Connected']);
  await old.disconnect();
  await f.disconnect();
  assertReleased(w);
});

test('garbage in the backend keys at connect fails attach with EPROTO naming the key; nothing leaks', async (t) => {
  const w = await world(t, { backend: { connectKeys: { 'sector-size': 'big' } } });
  await assert.rejects(attach(w), (e) => isBlkfrontError(e, 'EPROTO') && e.field === `${w.paths.backendPath}/sector-size` && e.value === 'big');
  await waitFor(() => w.platform.usage(FRONT).grants === 0, 2000, 'grants revoked');
  assertReleased(w);
});

test('no backend: attach times out naming the states, or stops when aborted; unknown device: ENODEV', async (t) => {
  const w = await world(t, { startBackend: false });
  await assert.rejects(attach(w, { connectTimeoutMs: 150 }), (e) => isBlkfrontError(e, 'ETIMEDOUT') && /Initialising/.test((e as Error).message));
  await assert.rejects(Blkfront.attach(w.host, 'xvdc'), (e) => isBlkfrontError(e, 'ENODEV') && /xvdc/.test((e as Error).message));
  await assert.rejects(Blkfront.attach(w.host, 'xvd0'), (e) => isBlkfrontError(e, 'EINVAL'));
  const ac = new AbortController();
  setTimeout(() => ac.abort(new Error('user gave up')), 30);
  await assert.rejects(attach(w, { signal: ac.signal }), (e) => isBlkfrontError(e, 'ABORT_ERR') && /user gave up/.test((e as Error).message));
  assertReleased(w);
});

test('a device is found by number, name or dNpM, and by virtual-device when keyed otherwise', async (t) => {
  const w = await world(t);
  for (const name of ['51728', 'd1p0', 'xvdb']) {
    const f = await Blkfront.attach(w.host, name, { connectTimeoutMs: 5000, closeTimeoutMs: 2000 });
    assert.equal(f.location.devid, 51728);
    assert.equal(f.location.name, 'xvdb');
    assert.equal(f.location.virtualDevice, 51728);
    await f.disconnect();
  }
  assertReleased(w);
});

test('attach can wait for a disk that is hotplugged later', async (t) => {
  const platform = createMemoryPlatform({ ramPages: 4096 });
  const core = newCore(FRONT);
  const xs0 = memoryXenstore(core, 0);
  const host = platform.host(FRONT, memoryXenstore(core, FRONT));
  // The domain exists (its directory is its own) before any disk is plugged in.
  await xs0.mkdir(`/local/domain/${FRONT}`);
  await xs0.setPermissions(`/local/domain/${FRONT}`, [{ domid: FRONT, perm: 'n' }]);
  const pending = Blkfront.attach(host, 'xvdb', { deviceTimeoutMs: 5000, connectTimeoutMs: 5000, closeTimeoutMs: 1000 });
  await new Promise((r) => setTimeout(r, 30));
  const paths = await createVbd(xs0, FRONT, 0, 51728);
  const backend = new FakeBlkback(memoryXenstore(core, 0), platform, 0, FRONT, paths, Buffer.alloc(65536));
  await backend.start();
  const f = await pending;
  t.after(async () => { await f.disconnect(); await backend.stop(); await host.close(); await xs0.close(); });
  assert.equal((await f.getInfo()).sectors, 128);
  await assert.rejects(Blkfront.attach(host, 'xvdc', { deviceTimeoutMs: 50 }), (e) => isBlkfrontError(e, 'ENODEV'));
});
