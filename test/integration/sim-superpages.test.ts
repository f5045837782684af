// Guest RAM on 2 MiB pages (lib/sim/superpages.ts, `startSim({ superpages: true })`): the file's
// contents survive the collapse, each 2 MiB of it is one physically contiguous run (read from
// /proc/self/pagemap, which gives frame numbers to root only), and the simulator reports it per
// domain. A kernel that refuses (no MADV_COLLAPSE before Linux 6.1, huge pages denied) makes
// these tests say so and skip: the option then leaves RAM on ordinary pages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SUPERPAGE, backWithSuperpages } from '../../lib/sim/superpages.ts';
import { readStatus, startSim } from '../../lib/sim/start.ts';
import { Mapping } from '../../native/memory.ts';
import { bufferAddress } from '../../native/libc.ts';

const shmDir = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

/** Physical frame numbers of `pages` pages from `address`, or undefined when pagemap hides them (not root). */
function frames(address: number, pages: number): bigint[] | undefined {
  const b = Buffer.alloc(8 * pages);
  const fd = fs.openSync('/proc/self/pagemap', 'r');
  try {
    fs.readSync(fd, b, 0, b.length, (address / 4096) * 8);
  } finally {
    fs.closeSync(fd);
  }
  const out: bigint[] = [];
  for (let i = 0; i < pages; i++) out.push(b.readBigUInt64LE(8 * i) & ((1n << 55n) - 1n));
  return out.every((f) => f === 0n) ? undefined : out;
}

test('a RAM file backed with superpages keeps its contents and is physically contiguous per 2 MiB', (t) => {
  const file = path.join(shmDir, `xenblk-superpages-${process.pid}`);
  const bytes = 2 * SUPERPAGE;
  const fd = fs.openSync(file, 'w+');
  t.after(() => {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
  });
  fs.ftruncateSync(fd, bytes);
  // Some pages written before (the rest are holes): all must read back the same afterwards.
  const pattern = Buffer.alloc(4096);
  for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + 1) & 0xff;
  for (const page of [0, 1, 300, 511, 700]) fs.writeSync(fd, pattern, 0, pattern.length, page * 4096);
  const r = backWithSuperpages(fd, bytes);
  if (!r.ok) {
    t.diagnostic(`SKIPPED: this kernel refuses 2 MiB pages for tmpfs: ${r.why}`);
    t.skip(`superpages refused: ${r.why}`);
    return;
  }
  const m = Mapping.file(fd, 0, bytes, false);
  t.after(() => m.unmap());
  const v = m.view();
  for (let page = 0; page < bytes / 4096; page++) {
    const want = [0, 1, 300, 511, 700].includes(page) ? pattern : Buffer.alloc(4096);
    assert.ok(v.subarray(page * 4096, page * 4096 + 4096).equals(want), `page ${page} kept its contents`);
  }
  const f = frames(bufferAddress(v), bytes / 4096);
  if (f === undefined) {
    t.diagnostic('contiguity NOT CHECKED: /proc/self/pagemap hides frame numbers from non-root users');
    return;
  }
  for (let s = 0; s < bytes / SUPERPAGE; s++) {
    const first: bigint = f[s * 512]!;
    for (let i = 1; i < 512; i++) assert.equal(f[s * 512 + i], first + BigInt(i), `2 MiB range ${s}: page ${i} follows page ${i - 1} physically`);
  }
});

test('startSim({ superpages: true }) puts each domain\'s RAM on 2 MiB pages and says so; the default leaves it sparse', async (t) => {
  for (const superpages of [true, false]) {
    const dir = fs.mkdtempSync(path.join(shmDir, 'xenblk-sim-'));
    const sim = await startSim({ dir, nrFrames: 1024, superpages });
    try {
      const d0 = readStatus(dir).domains.find((d) => d.domid === 0);
      assert.ok(d0 !== undefined, 'domain 0 exists');
      if (!superpages) {
        assert.equal(d0.superpages, 'off');
        // Sparse: no page of the RAM file is allocated yet.
        const st = fs.statSync(path.join(dir, fs.readdirSync(dir).find((n) => n.startsWith('mem-0.'))!));
        assert.equal(st.blocks, 0, 'RAM file of d0 is all holes');
        continue;
      }
      if (d0.superpages.startsWith('refused')) {
        t.diagnostic(`SKIPPED: ${d0.superpages}`);
        t.skip(d0.superpages);
        continue;
      }
      assert.equal(d0.superpages, 'on');
      const st = fs.statSync(path.join(dir, fs.readdirSync(dir).find((n) => n.startsWith('mem-0.'))!));
      assert.equal(st.blocks * 512, 1024 * 4096, 'RAM file of d0 fully allocated');
    } finally {
      await sim.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});
