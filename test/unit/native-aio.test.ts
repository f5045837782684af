// native/aio.ts against the kernel: Linux AIO on an O_DIRECT file in this machine's temporary
// directory (ext4 here: O_DIRECT accepted). Everything queued in one synchronous pass is one
// submission; completions carry the byte counts; what the kernel refuses comes back as -errno.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { AioContext } from '../../native/aio.ts';
import { alignedBuffer, directFileOrSkip } from '../support/direct-file.ts';

function io(ctx: AioContext, write: boolean, fd: number, offset: number, bufs: Uint8Array[]): Promise<number> {
  return new Promise((resolve, reject) => {
    if (ctx.submit(write, fd, offset, bufs, resolve) < 0) reject(new Error('submit refused'));
  });
}

test('aio: a batch of reads and vectored writes through one context lands byte for byte', async (t) => {
  const init = Buffer.alloc(1 << 20);
  for (let i = 0; i < init.length; i++) init[i] = (i * 13 + (i >> 12)) & 0xff;
  const f = directFileOrSkip(t, init, 'Linux AIO');
  if (f === undefined) return;
  const ctx = new AioContext(64);
  t.after(() => ctx.close());
  assert.ok(ctx.userReap, 'this kernel\'s completion ring has the fs/aio.c layout: reaped without io_getevents');

  // 32 reads of 4 KiB at scattered offsets, queued in one pass: one submission.
  const bufs = Array.from({ length: 32 }, () => alignedBuffer(4096));
  const offs = bufs.map((_, i) => ((i * 37) % 256) * 4096);
  const res = await Promise.all(bufs.map((b, i) => io(ctx, false, f.fd, offs[i]!, [b])));
  assert.deepEqual(res, bufs.map(() => 4096));
  bufs.forEach((b, i) => assert.deepEqual(b, init.subarray(offs[i]!, offs[i]! + 4096), `read ${i}`));
  assert.equal(ctx.busy, 0);
  assert.equal(ctx.submitCalls, 1, 'the 32 reads queued in one pass went in one io_submit');
  assert.equal(ctx.submitted, 32);

  // A vectored write of three pieces (PWRITEV) and a single one (PWRITE), then read back vectored.
  const a = alignedBuffer(8192).fill(0xa5);
  const b = alignedBuffer(4096).fill(0x5a);
  const c = alignedBuffer(512 * 8).fill(0x3c);
  const d = alignedBuffer(4096).fill(0xee);
  assert.deepEqual(await Promise.all([io(ctx, true, f.fd, 65536, [a, b, c]), io(ctx, true, f.fd, 1 << 19, [d])]), [16384, 4096]);
  const onDisk = readFileSync(f.path);
  assert.deepEqual(onDisk.subarray(65536, 65536 + 16384), Buffer.concat([a, b, c]));
  assert.deepEqual(onDisk.subarray(1 << 19, (1 << 19) + 4096), d);
  assert.deepEqual(onDisk.subarray(0, 65536), init.subarray(0, 65536), 'nothing else written');
  const back = alignedBuffer(16384);
  assert.equal(await io(ctx, false, f.fd, 65536, [back.subarray(0, 512), back.subarray(512, 12288), back.subarray(12288)]), 16384);
  // submit answers the bytes it asked the kernel for (the caller's test for a whole transfer).
  const other = alignedBuffer(16384);
  const asked = await new Promise<[number, number]>((resolve) => {
    const n = ctx.submit(false, f.fd, 4096, [other.subarray(0, 4096), other.subarray(4096, 5120), other.subarray(8192)], (res) => resolve([n, res]));
  });
  assert.deepEqual(asked, [4096 + 1024 + 8192, 4096 + 1024 + 8192]);
  assert.deepEqual(back, Buffer.concat([a, b, c]));

  // Past the end of the file a read is short (0 bytes here), as pread(2) is.
  assert.equal(await io(ctx, false, f.fd, 1 << 20, [alignedBuffer(4096)]), 0);

  // The ring wraps: many more I/Os than it has entries, in waves, all answered once.
  for (let wave = 0; wave < 10; wave++) {
    const bufs48: Buffer[] = Array.from({ length: 48 }, () => alignedBuffer(4096));
    const got: number[] = await Promise.all(bufs48.map((x: Buffer, i: number): Promise<number> => io(ctx, false, f.fd, ((wave * 48 + i) % 256) * 4096, [x])));
    assert.deepEqual(got, bufs48.map(() => 4096));
    bufs48.forEach((x: Buffer, i: number) => { const o = ((wave * 48 + i) % 256) * 4096; assert.ok(x.equals(onDisk.subarray(o, o + 4096)), `wave ${wave} read ${i}`); });
  }
  assert.equal(ctx.busy, 0);
});

test('aio: memory O_DIRECT cannot use comes back as -EINVAL; a full context refuses; close is clean', async (t) => {
  const f = directFileOrSkip(t, Buffer.alloc(65536, 7), 'Linux AIO');
  if (f === undefined) return;
  const ctx = new AioContext(4);
  const odd = Buffer.alloc(4097).subarray(1);
  const ok = alignedBuffer(4096);
  // Queued together: the refused one ends with -EINVAL, the others still complete.
  const r = await Promise.all([io(ctx, false, f.fd, 0, [ok]), io(ctx, false, f.fd, 4096, [odd]), io(ctx, false, f.fd, 8192, [alignedBuffer(4096)])]);
  assert.equal(r[0], 4096);
  assert.equal(r[1], -22, 'EINVAL for an unaligned buffer');
  assert.equal(r[2], 4096);
  assert.deepEqual(ok, Buffer.alloc(4096, 7));
  assert.equal(ctx.busy, 0);

  const four = Array.from({ length: 4 }, () => alignedBuffer(4096));
  const ps = four.map((b, i) => io(ctx, false, f.fd, i * 4096, [b]));
  assert.equal(ctx.submit(false, f.fd, 0, [alignedBuffer(4096)], () => undefined), -1, 'a fifth I/O does not fit a context of 4');
  assert.deepEqual(await Promise.all(ps), [4096, 4096, 4096, 4096]);
  ctx.close();
  assert.equal(ctx.submit(false, f.fd, 0, [ok], () => undefined), -1, 'a closed context takes nothing');
  ctx.close();
});
