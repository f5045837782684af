import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRamDisk } from '../../lib/backends/ram.ts';
import { BackendError } from '../../lib/backends/block-backend.ts';

test('RAM disk: scattered writes land in order and read back', async () => {
  const disk = createRamDisk({ size: 64 * 1024 });
  const a = Buffer.alloc(512, 0xaa);
  const b = Buffer.alloc(1024, 0xbb);
  await disk.write(4096, [a, b]);
  assert.deepEqual(disk.data.subarray(4096, 4096 + 512), a);
  assert.deepEqual(disk.data.subarray(4608, 4608 + 1024), b);
  const r1 = Buffer.alloc(1024);
  const r2 = Buffer.alloc(512);
  await disk.read(4096, [r1, r2]);
  assert.deepEqual(Buffer.concat([r1, r2]), Buffer.concat([a, b]));
  assert.equal(await disk.size(), 64 * 1024);
});

test('RAM disk: discard reads back zeros; read-only refuses writes and discards', async () => {
  const disk = createRamDisk({ size: 8192, contents: Buffer.alloc(8192, 7) });
  await disk.discard(512, 1024, { secure: false });
  assert.equal(disk.data.subarray(512, 1536).every((x) => x === 0), true);
  assert.equal(disk.data[511], 7);
  assert.equal(disk.data[1536], 7);
  const ro = createRamDisk({ size: 4096, readonly: true });
  await assert.rejects(ro.write(0, [Buffer.alloc(512)]), (e: unknown) => e instanceof BackendError && e.code === 'EROFS');
  await assert.rejects(ro.discard(0, 512, { secure: true }), (e: unknown) => e instanceof BackendError && e.code === 'EROFS');
});

test('RAM disk: out-of-range I/O is a BackendError, resize keeps the prefix', async () => {
  const disk = createRamDisk({ size: 4096, sectorSize: 4096 });
  await assert.rejects(disk.read(4096, [Buffer.alloc(512)]), (e: unknown) => e instanceof BackendError && e.code === 'EINVAL');
  await disk.write(0, [Buffer.alloc(4096, 3)]);
  disk.resize(8192);
  assert.equal(await disk.size(), 8192);
  assert.equal(disk.data[4095], 3);
  assert.equal(disk.data[4096], 0);
  assert.throws(() => createRamDisk({ size: 1000 }), BackendError);
});
