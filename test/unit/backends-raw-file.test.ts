import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openRawFile, type IoEngine, type RawFileDisk, type RawFileOptions } from '../../lib/backends/raw-file.ts';
import { BackendError } from '../../lib/backends/block-backend.ts';
import { Mapping } from '../../native/memory.ts';
import { alignedBuffer } from '../support/direct-file.ts';

function tempDir(t: { after: (f: () => void) => void }, base = tmpdir()): string {
  const dir = mkdtempSync(join(base, 'xenblk-raw-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

/** `openOrSkip(t, path, engine, opts)` opens with `engine`, or says loudly why this machine cannot and skips. */
async function openOrSkip(t: TestContext, path: string, engine: IoEngine, opts: RawFileOptions): Promise<RawFileDisk | undefined> {
  try {
    return await openRawFile(path, { ...opts, engine });
  } catch (e) {
    if (!(e instanceof BackendError) || engine === 'threadpool') throw e;
    t.diagnostic(`SKIPPED LOUDLY: ${engine} refused on this machine (${e.message})`);
    t.skip(`no ${engine}`);
    return undefined;
  }
}

for (const engine of ['io_uring', 'aio', 'threadpool'] as const) {
  test(`raw file (${engine}): vectored writes and reads match the file bytes, O_DIRECT on ext4 with aligned memory`, async (t) => {
    const dir = tempDir(t);
    const path = join(dir, 'disk.img');
    const disk = await openOrSkip(t, path, engine, { create: 1 << 20 });
    if (disk === undefined) return;
    t.after(() => disk.close());
    assert.equal(await disk.size(), 1 << 20);
    assert.equal(statSync(path).blocks, 0, 'created sparse');
    if (disk.direct) assert.equal(disk.engine, engine);

    const a = alignedBuffer(8192);
    pattern(8192, 1).copy(a);
    const b = alignedBuffer(4096);
    pattern(4096, 2).copy(b);
    await disk.write(65536, [a, b]);
    if (disk.direct) assert.equal(disk.directFallbacks, 0, 'aligned memory needs no buffered fallback');
    const onDisk = readFileSync(path);
    assert.deepEqual(onDisk.subarray(65536, 65536 + 12288), Buffer.concat([a, b]));

    const r = alignedBuffer(12288);
    await disk.read(65536, [r.subarray(0, 4096), r.subarray(4096)]);
    assert.deepEqual(r, Buffer.concat([a, b]));
    await disk.flush();
  });

  test(`raw file (${engine}): unaligned memory and 512-byte pieces work (O_DIRECT or its buffered fallback)`, async (t) => {
    const dir = tempDir(t);
    const path = join(dir, 'disk.img');
    const disk = await openOrSkip(t, path, engine, { create: 1 << 20 });
    if (disk === undefined) return;
    t.after(() => disk.close());
    const big = Buffer.alloc(512 * 3 + 1);
    const piece = big.subarray(1); // odd address: O_DIRECT refuses it
    pattern(512 * 3, 9).copy(piece);
    await disk.write(512 * 5, [piece.subarray(0, 512), piece.subarray(512)]);
    assert.deepEqual(readFileSync(path).subarray(512 * 5, 512 * 8), piece);
    const back = Buffer.alloc(512 * 3 + 3).subarray(3);
    await disk.read(512 * 5, [back]);
    assert.deepEqual(back, piece);
  });
}

test('raw file: memory registered through registerMemory is read and written as fixed I/O until it is given back', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'disk.img');
  const disk = await openOrSkip(t, path, 'io_uring', { create: 1 << 20 });
  if (disk === undefined) return;
  t.after(() => disk.close());
  if (!disk.direct) {
    t.diagnostic(`SKIPPED LOUDLY: ${dir} refuses O_DIRECT, so no I/O goes through io_uring here`);
    t.skip('no O_DIRECT');
    return;
  }
  const m = Mapping.anonymous(65536);
  t.after(() => m.unmap());
  const mem = m.view();
  const end = disk.registerMemory?.(mem);
  if (end === undefined) {
    t.diagnostic(`SKIPPED LOUDLY: io_uring would not register memory here (${disk.description})`);
    t.skip('no registered buffers');
    return;
  }
  pattern(16384, 3).copy(mem, 4096);
  await disk.write(8192, [mem.subarray(4096, 8192), mem.subarray(8192, 20480)]);
  assert.deepEqual(readFileSync(path).subarray(8192, 8192 + 16384), pattern(16384, 3));
  mem.fill(0);
  await disk.read(8192, [mem.subarray(32768, 32768 + 16384)]);
  assert.deepEqual(mem.subarray(32768, 32768 + 16384), pattern(16384, 3));
  assert.match(disk.description, /io_uring, 1 buffer\(s\) registered, 3 of 3 I\/Os on registered memory/);
  end();
  await disk.read(8192, [mem.subarray(0, 4096)]);
  assert.match(disk.description, /0 buffer\(s\) registered, 3 of 4 I\/Os on registered memory/);
});

test('raw file: discard punches a hole that reads back zeros; secure discard zeroes too', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'disk.img');
  writeFileSync(path, pattern(1 << 20, 3));
  const disk = await openRawFile(path, { direct: 'off' });
  t.after(() => disk.close());
  assert.equal(disk.capabilities.discard, true, 'ext4/tmpfs punch holes');
  assert.ok(disk.capabilities.discardGranularity >= 512);
  const before = statSync(path).blocks;
  await disk.discard(131072, 262144, { secure: false });
  const after = statSync(path).blocks;
  assert.ok(after < before, `blocks ${before} -> ${after}: the range was deallocated`);
  const bytes = readFileSync(path);
  assert.equal(bytes.length, 1 << 20, 'KEEP_SIZE');
  assert.equal(bytes.subarray(131072, 131072 + 262144).every((x) => x === 0), true);
  assert.deepEqual(bytes.subarray(0, 131072), pattern(1 << 20, 3).subarray(0, 131072));
  // Not page aligned: the filesystem zeroes the partial blocks.
  await disk.discard(512 * 3, 512 * 5, { secure: true });
  const bytes2 = readFileSync(path);
  assert.equal(bytes2.subarray(512 * 3, 512 * 8).every((x) => x === 0), true);
  assert.deepEqual(bytes2.subarray(0, 512 * 3), pattern(1 << 20, 3).subarray(0, 512 * 3));
  assert.deepEqual(bytes2.subarray(512 * 8, 131072), pattern(1 << 20, 3).subarray(512 * 8, 131072));
});

test('raw file: read-only refuses writes and discards and advertises no discard', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'disk.img');
  writeFileSync(path, Buffer.alloc(65536, 1));
  const disk = await openRawFile(path, { readonly: true });
  t.after(() => disk.close());
  assert.equal(disk.readonly, true);
  assert.equal(disk.capabilities.discard, false);
  await assert.rejects(disk.write(0, [Buffer.alloc(512)]), (e: unknown) => e instanceof BackendError && e.code === 'EROFS');
  await assert.rejects(disk.discard(0, 512, { secure: false }), (e: unknown) => e instanceof BackendError && e.code === 'EROFS');
  const r = Buffer.alloc(512);
  await disk.read(0, [r]);
  assert.equal(r.every((x) => x === 1), true);
});

test('raw file: size follows the file and rounds down to the sector size; reads past a shrink are zeros', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'disk.img');
  writeFileSync(path, Buffer.alloc(3 * 4096 + 100, 5));
  const disk = await openRawFile(path, { sectorSize: 4096, direct: 'off' });
  t.after(() => disk.close());
  assert.equal(await disk.size(), 3 * 4096);
  truncateSync(path, 5 * 4096);
  assert.equal(await disk.size(), 5 * 4096);
  truncateSync(path, 4096 + 512);
  const r = Buffer.alloc(2048, 0xff);
  await disk.read(4096, [r]);
  assert.equal(r.subarray(0, 512).every((x) => x === 5), true);
  assert.equal(r.subarray(512).every((x) => x === 0), true);
});

test('raw file: tmpfs works with direct "auto"; missing files and non-files are BackendErrors', async (t) => {
  assert.ok(existsSync('/dev/shm'), 'this test needs /dev/shm (tmpfs), present on every Linux');
  const dir = tempDir(t, '/dev/shm');
  const path = join(dir, 'disk.img');
  writeFileSync(path, Buffer.alloc(8192));
  const disk = await openRawFile(path);
  t.after(() => disk.close());
  await disk.write(512, [Buffer.alloc(512, 9)]);
  assert.equal(readFileSync(path)[512], 9);
  await assert.rejects(openRawFile(join(dir, 'missing.img')), (e: unknown) => e instanceof BackendError && e.op === 'open' && e.code === 'ENOENT');
  await assert.rejects(openRawFile('/dev/null', { readonly: true }), (e: unknown) => e instanceof BackendError && e.op === 'open' && e.code === 'EINVAL');
});
