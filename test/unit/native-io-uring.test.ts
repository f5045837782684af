// native/io-uring.ts against the kernel: io_uring on an O_DIRECT file in this machine's temporary
// directory. Everything queued in one synchronous pass is one io_uring_enter; completions carry
// the byte counts; registered memory goes as fixed I/O, piece by piece when a transfer has several
// pieces, and stops being used the moment its registration ends; what the kernel refuses comes
// back as -errno.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, rmSync, ftruncateSync } from 'node:fs';
import { IoUring } from '../../native/io-uring.ts';
import { Mapping } from '../../native/memory.ts';
import { alignedBuffer, directFileOrSkip } from '../support/direct-file.ts';

function io(ring: IoUring, write: boolean, fd: number, offset: number, bufs: Uint8Array[]): Promise<number> {
  return new Promise((resolve, reject) => {
    if (ring.submit(write, fd, offset, bufs, resolve) < 0) reject(new Error('submit refused'));
  });
}

/** The ring, or undefined with the reason said loudly (a kernel or sandbox without io_uring). */
function ringOrSkip(t: { diagnostic: (m: string) => void; skip: (m: string) => void }, capacity: number): IoUring | undefined {
  try {
    return new IoUring(capacity, 16);
  } catch (e) {
    t.diagnostic(`SKIPPED LOUDLY: io_uring refused on this machine (${(e as Error).message}); raw files use Linux AIO instead`);
    t.skip('no io_uring');
    return undefined;
  }
}

/** An O_DIRECT file of `bytes` and a ring of `capacity` (closed after the test), or undefined having said loudly which is missing. */
function fileAndRing(t: TestContext, bytes: Buffer, capacity: number): { f: { path: string; fd: number }; ring: IoUring } | undefined {
  const f = directFileOrSkip(t, bytes, 'io_uring');
  if (f === undefined) return undefined;
  const ring = ringOrSkip(t, capacity);
  if (ring === undefined) return undefined;
  t.after(() => ring.close());
  return { f, ring };
}

function pattern(bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < b.length; i++) b[i] = (i * 13 + (i >> 12)) & 0xff;
  return b;
}

test('io_uring: a batch of reads and vectored writes through one ring lands byte for byte', async (t) => {
  const init = pattern(1 << 20);
  const set = fileAndRing(t, init, 64);
  if (set === undefined) return;
  const { f, ring } = set;

  const bufs = Array.from({ length: 32 }, () => alignedBuffer(4096));
  const offs = bufs.map((_, i) => ((i * 37) % 256) * 4096);
  assert.deepEqual(await Promise.all(bufs.map((b, i) => io(ring, false, f.fd, offs[i]!, [b]))), bufs.map(() => 4096));
  bufs.forEach((b, i) => assert.deepEqual(b, init.subarray(offs[i]!, offs[i]! + 4096), `read ${i}`));
  assert.equal(ring.submitCalls, 1, 'the 32 reads queued in one pass went in one io_uring_enter');
  assert.equal(ring.submitted, 32);
  assert.equal(ring.fixedSubmitted, 0, 'nothing registered: no fixed I/O');

  const a = alignedBuffer(8192).fill(0xa5);
  const b = alignedBuffer(4096).fill(0x5a);
  const c = alignedBuffer(4096).fill(0x3c);
  assert.deepEqual(await Promise.all([io(ring, true, f.fd, 65536, [a, b]), io(ring, true, f.fd, 1 << 19, [c])]), [12288, 4096]);
  const onDisk = readFileSync(f.path);
  assert.deepEqual(onDisk.subarray(65536, 65536 + 12288), Buffer.concat([a, b]));
  assert.deepEqual(onDisk.subarray(1 << 19, (1 << 19) + 4096), c);
  assert.deepEqual(onDisk.subarray(0, 65536), init.subarray(0, 65536), 'nothing else written');
  assert.equal(await io(ring, false, f.fd, 1 << 20, [alignedBuffer(4096)]), 0, 'past the end a read is short, as pread(2) is');

  // The queues wrap: many more I/Os than they have entries, in waves, all answered once.
  for (let wave = 0; wave < 10; wave++) {
    const xs: Buffer[] = Array.from({ length: 48 }, () => alignedBuffer(4096));
    const got: number[] = await Promise.all(xs.map((x: Buffer, i: number): Promise<number> => io(ring, false, f.fd, ((wave * 48 + i) % 256) * 4096, [x])));
    assert.deepEqual(got, xs.map(() => 4096));
    xs.forEach((x, i) => { const o = ((wave * 48 + i) % 256) * 4096; assert.ok(x.equals(onDisk.subarray(o, o + 4096)), `wave ${wave} read ${i}`); });
  }
  assert.equal(ring.busy, 0);
});

test('io_uring: registered memory goes as fixed I/O, in pieces when several, and not after unregistering', async (t) => {
  const init = pattern(1 << 20);
  const set = fileAndRing(t, init, 64);
  if (set === undefined) return;
  const { f, ring } = set;
  if (ring.registerRefused !== undefined) {
    t.diagnostic(`SKIPPED LOUDLY: this kernel has no sparse buffer table for io_uring (${ring.registerRefused}; Linux 5.19)`);
    t.skip('no registered buffers');
    return;
  }
  // Anonymous memory, and a tmpfs file's pages mapped shared (as the simulator maps grants).
  const anon = Mapping.anonymous(65536);
  const shmPath = `/dev/shm/xenblk-uring-test-${process.pid}`;
  const shmFd = openSync(shmPath, 'w+');
  t.after(() => { closeSync(shmFd); rmSync(shmPath, { force: true }); });
  ftruncateSync(shmFd, 65536);
  const shm = Mapping.file(shmFd, 0, 65536, true);
  t.after(() => { anon.unmap(); shm.unmap(); });
  const va = anon.view();
  const vs = shm.view();
  assert.equal(ring.register(va.subarray(4096)), undefined, 'a part of a buffer is not registered (views outside it would pass for registered)');
  const endA = ring.register(va);
  const endS = ring.register(vs);
  assert.ok(endA !== undefined && endS !== undefined, 'both registered');
  assert.equal(ring.registered, 2);
  assert.equal(ring.register(va), undefined, 'the same memory twice is refused');

  // One piece: READ_FIXED.
  assert.equal(await io(ring, false, f.fd, 4096, [va.subarray(8192, 8192 + 16384)]), 16384);
  assert.deepEqual(va.subarray(8192, 8192 + 16384), init.subarray(4096, 4096 + 16384));
  assert.equal(ring.fixedSubmitted, 1);
  // Three pieces in two registrations, out of memory order: three fixed I/Os, one result.
  const parts = [vs.subarray(32768, 40960), va.subarray(0, 4096), vs.subarray(0, 4096)];
  assert.equal(await io(ring, false, f.fd, 1 << 18, parts), 16384);
  assert.deepEqual(Buffer.concat(parts), init.subarray(1 << 18, (1 << 18) + 16384));
  assert.equal(ring.fixedSubmitted, 4);
  // Writes from registered memory.
  vs.fill(0x77, 0, 8192);
  assert.equal(await io(ring, true, f.fd, 8192, [vs.subarray(0, 8192)]), 8192);
  assert.deepEqual(readFileSync(f.path).subarray(8192, 16384), Buffer.alloc(8192, 0x77));
  assert.equal(ring.fixedSubmitted, 5);
  // Pieces across the end of the file: the leading whole pieces count, as a short transfer.
  assert.equal(await io(ring, false, f.fd, (1 << 20) - 4096, [va.subarray(0, 4096), vs.subarray(4096, 8192)]), 4096);
  // A mix of registered and plain memory is one vectored I/O.
  const plain = alignedBuffer(4096);
  assert.equal(await io(ring, false, f.fd, 0, [va.subarray(0, 4096), plain]), 8192);
  assert.equal(ring.fixedSubmitted, 7);

  // After unregistering, the same memory is read through a vector: still correct, not fixed.
  endA();
  endA();
  assert.equal(ring.registered, 1);
  va.fill(0);
  assert.equal(await io(ring, false, f.fd, 65536, [va.subarray(0, 8192)]), 8192);
  assert.deepEqual(va.subarray(0, 8192), init.subarray(65536, 65536 + 8192));
  assert.equal(ring.fixedSubmitted, 7);
  // Its slot is free again, and read-only memory is not taken (the kernel pins for writing).
  const ro = Mapping.file(shmFd, 0, 4096, false);
  t.after(() => ro.unmap());
  assert.equal(ring.register(ro.view()), undefined, 'read-only memory is not registered');
  const again = ring.register(va);
  assert.ok(again !== undefined, 'registered again');
  endS();
  again();
  assert.equal(ring.registered, 0);
});

test('io_uring: memory O_DIRECT cannot use comes back as -EINVAL; a full ring refuses; close waits for what is in flight', async (t) => {
  const f = directFileOrSkip(t, Buffer.alloc(65536, 7), 'io_uring');
  if (f === undefined) return;
  const ring = ringOrSkip(t, 4);
  if (ring === undefined) return;
  const odd = Buffer.alloc(4097).subarray(1);
  const ok = alignedBuffer(4096);
  const r = await Promise.all([io(ring, false, f.fd, 0, [ok]), io(ring, false, f.fd, 4096, [odd]), io(ring, false, f.fd, 8192, [alignedBuffer(4096)])]);
  assert.deepEqual(r, [4096, -22, 4096], 'EINVAL for an unaligned buffer; the others complete');
  assert.deepEqual(ok, Buffer.alloc(4096, 7));

  const four = Array.from({ length: 4 }, () => alignedBuffer(4096));
  const ps = four.map((b, i) => io(ring, false, f.fd, i * 4096, [b]));
  assert.equal(ring.submit(false, f.fd, 0, [alignedBuffer(4096)], () => undefined), -1, 'a fifth I/O does not fit a ring of 4');
  assert.deepEqual(await Promise.all(ps), [4096, 4096, 4096, 4096]);

  // Closing with I/O queued: it is submitted and waited for, and each gets its real result.
  const late = alignedBuffer(4096);
  const results: number[] = [];
  ring.submit(false, f.fd, 12288, [late], (res) => results.push(res));
  ring.close();
  assert.deepEqual(results, [4096]);
  assert.deepEqual(late, Buffer.alloc(4096, 7));
  assert.equal(ring.submit(false, f.fd, 0, [ok], () => undefined), -1, 'a closed ring takes nothing');
  ring.close();
});
