// I/O buffers (lib/blkfront/io-buffers.ts): memory granted to the backend once, so reads and
// writes through it go to the backend without blkfront's copy. Against the scripted backend,
// which performs a request when it takes it and can hold the response: data that is in the
// caller's buffer while the response is still held was put there by the backend itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isBlkfrontError } from '../../lib/blkfront/errors.ts';
import { waitFor } from '../support/blkfront-fixture.ts';
import { FRONT, attach, assertReleased, pattern, world } from './blkfront-harness.ts';

const KIB = 1024;

test('a read into an I/O buffer lands in place (before the response), a write goes out from it; no pool page is used', async (t) => {
  const w = await world(t);
  w.disk.set(pattern(w.disk.length, 7));
  const f = await attach(w, { maxQueues: 1 });
  const before = w.platform.usage(FRONT).grants;
  const buf = f.allocBuffer(44 * KIB + 1); // rounded up to 12 pages
  assert.equal(buf.length, 48 * KIB);
  assert.ok(buf.every((b) => b === 0), 'zeroed');
  assert.equal(w.platform.usage(FRONT).grants, before + 12, 'granted once, at allocation');

  // 11 pages from disk page 2: one direct request (no indirect page, so no pool page either).
  w.backend.hold = true;
  const read = f.read(16, buf.subarray(0, 44 * KIB));
  await waitFor(() => w.backend.heldCount === 1, 2000, 'the read performed, its response held');
  assert.deepEqual(buf.subarray(0, 44 * KIB), w.disk.subarray(8 * KIB, 52 * KIB), 'the backend wrote straight into the caller buffer');
  w.backend.hold = false;
  w.backend.release();
  await read;
  const readGrefs = w.backend.seen.at(-1)!.grefs;
  assert.equal(new Set(readGrefs).size, 11);
  assert.equal(f.stats().inPlace, 1);

  // Written back elsewhere from the same pages: the same grants carry it.
  buf[0] = 0xee;
  await f.write(800, buf.subarray(0, 44 * KIB));
  assert.deepEqual(w.backend.seen.at(-1)!.grefs, readGrefs, 'the write used the buffer pages the read did');
  assert.equal(w.disk[400 * KIB], 0xee);
  assert.deepEqual(w.disk.subarray(400 * KIB + 1, 444 * KIB), buf.subarray(1, 44 * KIB));
  assert.equal(f.stats().inPlace, 2);
  assert.equal(w.platform.usage(FRONT).grants, before + 12, 'no pool page was granted for either');

  // A plain buffer still goes through the pool and its copy.
  const plain = Buffer.alloc(4 * KIB);
  await f.read(16, plain);
  assert.deepEqual(plain, w.disk.subarray(8 * KIB, 12 * KIB));
  assert.equal(f.stats().inPlace, 2);
  assert.ok(w.platform.usage(FRONT).grants > before + 12, 'the copy path grew the pool');

  // The backend keeps persistent grants mapped until it disconnects: freeing defers the revocation.
  f.freeBuffer(buf);
  assert.equal(f.stats().pendingRevocations, 1);
  await f.disconnect();
  assertReleased(w);
});

test('in place only where the bytes sit at their disk page offset, whole requests at a time; else copied, data intact', async (t) => {
  const w = await world(t);
  w.disk.set(pattern(w.disk.length, 3));
  const f = await attach(w, { maxQueues: 1 });
  const buf = f.allocBuffer(64 * KIB);
  const other = f.allocBuffer(4 * KIB);

  // Sector 1 is 512 bytes into its disk page: at byte 0 of the buffer it cannot be granted in place...
  await f.read(1, buf.subarray(0, 3584));
  assert.deepEqual(buf.subarray(0, 3584), w.disk.subarray(512, 4096));
  assert.equal(f.stats().inPlace, 0, 'misplaced bytes are copied');
  // ...512 bytes into a page of it, it can.
  buf.fill(0);
  await f.read(1, buf.subarray(4096 + 512, 8192));
  assert.deepEqual(buf.subarray(4096 + 512, 8192), w.disk.subarray(512, 4096));
  assert.equal(f.stats().inPlace, 1);

  // A request whose pages are partly a plain buffer is copied as a whole, both parts intact.
  const plain = Buffer.alloc(8 * KIB);
  buf.fill(0);
  await f.read(64, [buf.subarray(0, 8 * KIB), plain]);
  assert.deepEqual(buf.subarray(0, 8 * KIB), w.disk.subarray(32 * KIB, 40 * KIB));
  assert.deepEqual(plain, w.disk.subarray(40 * KIB, 48 * KIB));
  assert.equal(f.stats().inPlace, 1);

  // Pages from two allocations in one request: each segment granted in place on its own.
  const two = [f.allocBuffer(4 * KIB), f.allocBuffer(8 * KIB)];
  await f.read(24, two);
  assert.deepEqual(Buffer.concat(two), w.disk.subarray(12 * KIB, 24 * KIB));
  assert.equal(f.stats().inPlace, 2);
  assert.deepEqual(w.backend.seen.at(-1)!.grefs.length, 3);
  for (const b of two) f.freeBuffer(b);

  // A view spanning two allocations (adjacent in the memory platform's RAM) lies in neither.
  assert.ok(other.buffer === buf.buffer && other.byteOffset === buf.byteOffset + buf.byteLength, 'precondition: the platform placed them side by side');
  const span = new Uint8Array(buf.buffer, buf.byteOffset + 60 * KIB, 8 * KIB);
  span.set(pattern(8 * KIB, 11));
  await f.write(200, span);
  assert.deepEqual(w.disk.subarray(100 * KIB, 108 * KIB), pattern(8 * KIB, 11));
  assert.equal(f.stats().inPlace, 2, 'copied, not granted in place');

  // Large I/O: indirect requests, data in place, only the indirect pages pooled.
  const big = f.allocBuffer(1024 * KIB);
  await f.read(0, big);
  assert.deepEqual(big, w.disk.subarray(0, 1024 * KIB));
  assert.ok(f.stats().inPlace >= 2 + 1024 / 128, `1 MiB in 128 KiB indirect requests in place (${f.stats().inPlace})`);
  await f.disconnect();
  assertReleased(w);
});

test('freeBuffer: refused while a request uses the buffer and for foreign memory; returns the grants; disconnect frees the rest', async (t) => {
  const w = await world(t);
  // Without persistent grants the backend unmaps after each request, so revocation is immediate.
  const f = await attach(w, { maxQueues: 1, persistent: false });
  const base = w.platform.usage(FRONT).grants;
  const a = f.allocBuffer(8 * KIB);
  const b = f.allocBuffer(4 * KIB);
  assert.equal(w.platform.usage(FRONT).grants, base + 3);

  w.backend.hold = true;
  const pending = f.write(0, a.subarray(4 * KIB));
  await waitFor(() => w.backend.heldCount === 1, 2000, 'write on the ring');
  assert.throws(() => f.freeBuffer(a), (e) => isBlkfrontError(e, 'EBUSY'));
  assert.throws(() => f.freeBuffer(Buffer.alloc(4096)), (e) => isBlkfrontError(e, 'EINVAL'));
  assert.throws(() => f.allocBuffer(0), (e) => isBlkfrontError(e, 'EINVAL'));
  w.backend.hold = false;
  w.backend.release();
  await pending;

  f.freeBuffer(a.subarray(100, 200)); // any view of it names it
  assert.equal(w.platform.usage(FRONT).grants, base + 1, 'its two pages are no longer granted');
  assert.throws(() => f.freeBuffer(a), (e) => isBlkfrontError(e, 'EINVAL'), 'freed twice');

  // b is never freed: disconnect releases it with everything else.
  await f.read(0, b);
  await f.disconnect();
  assertReleased(w);
  assert.throws(() => f.allocBuffer(4096), (e) => isBlkfrontError(e, 'ENODEV'));
});
