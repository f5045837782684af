// `xenblk attach` and examples/guest-disk.ts as a user runs them: separate processes on the
// simulator against `xenblk serve`, checked against the backing file's bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { assertSimReleased, fileBytes, node, randomBytes, ROOT, serve, simWorld, xenblk } from '../support/blkfront-sim.ts';

const MiB = 1024 * 1024;

test('xenblk attach --write (unaligned tail), --discard, --dump to a file and to stdout, --info', async (t) => {
  const w = await simWorld(t, 2 * MiB);
  serve(t, w);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-attach-'));
  t.after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const input = path.join(tmp, 'in.bin');
  const data = randomBytes(300_000, 3); // not a multiple of 512: the last sector is read, overlaid, written
  fs.writeFileSync(input, data);
  const sim = ['--vdev', 'xvdb', '--sim', w.dir, '--domid', '1'];

  const wr = xenblk(['attach', ...sim, '--write', input, '--offset', '8192']);
  assert.equal(await wr.exited, 0, wr.output());
  assert.match(wr.output(), /wrote 300000 bytes at offset 8192/);
  assert.ok(fileBytes(w.image, 8192, data.length).equals(data), 'backing file holds the input');
  assert.ok(fileBytes(w.image, 8192 + data.length, 512 - (data.length % 512)).every((b) => b === 0), 'rest of the last sector kept');

  // Discard 64 KiB inside the written range: the backend punches a hole, which reads as zeros.
  const disc = xenblk(['attach', ...sim, '--discard', '65536:65536']);
  assert.equal(await disc.exited, 0, disc.output());
  assert.match(disc.output(), /discarded 65536 bytes at offset 65536/);
  assert.ok(fileBytes(w.image, 65536, 65536).every((b) => b === 0), 'discarded range reads as zeros in the backing file');
  assert.ok(fileBytes(w.image, 8192, 65536 - 8192).equals(data.subarray(0, 65536 - 8192)), 'data before the discarded range kept');
  assert.ok(fileBytes(w.image, 131072, 8192).equals(data.subarray(131072 - 8192, 131072)), 'data after the discarded range kept');
  const unaligned = xenblk(['attach', ...sim, '--discard', '100:512']);
  assert.equal(await unaligned.exited, 1);
  assert.match(unaligned.output(), /not in whole sectors/);
  const pastEnd = xenblk(['attach', ...sim, '--discard', `${2 * MiB - 512}:1024`]);
  assert.equal(await pastEnd.exited, 1);
  assert.match(pastEnd.output(), /past the end of the disk/);

  const out = path.join(tmp, 'dump.bin');
  const dump = xenblk(['attach', ...sim, '--dump', out]);
  assert.equal(await dump.exited, 0, dump.output());
  assert.ok(fs.readFileSync(out).equals(fs.readFileSync(w.image)), '--dump equals the backing file');
  // 2 MiB in 256 KiB reads into I/O buffers: 8 operations, each granted in place (>= 8 requests).
  const inPlace = /dumped \d+ bytes to \S+; (\d+) requests granted in place/.exec(dump.output());
  assert.ok(inPlace !== null && Number(inPlace[1]) >= 8, `the dump read in place: ${dump.output()}`);

  const toStdout = xenblk(['attach', ...sim, '--dump', '-']);
  const chunks: Buffer[] = [];
  toStdout.proc.stdout!.on('data', (b: Buffer) => chunks.push(b));
  assert.equal(await toStdout.exited, 0);
  assert.ok(Buffer.concat(chunks).equals(fs.readFileSync(w.image)), '--dump - equals the backing file');

  const info = xenblk(['attach', ...sim, '--info', '--queues', '1', '--abi', 'x86_32', '--no-persistent']);
  const infoOut: Buffer[] = [];
  info.proc.stdout!.on('data', (b: Buffer) => infoOut.push(b));
  assert.equal(await info.exited, 0, info.output());
  const j = JSON.parse(Buffer.concat(infoOut).toString()) as { sectors: number; sectorSize: number; bytes: number; readWrite: boolean; device: { name: string; devid: number }; features: { protocol: string; queues: number; persistentGrants: boolean } };
  assert.equal(j.device.name, 'xvdb');
  assert.equal(j.device.devid, 51728);
  assert.equal(j.sectors, 2 * MiB / 512);
  assert.equal(j.bytes, 2 * MiB);
  assert.equal(j.readWrite, true);
  assert.equal(j.features.protocol, 'x86_32-abi');
  assert.equal(j.features.queues, 1);
  assert.equal(j.features.persistentGrants, false);

  const bad = xenblk(['attach', ...sim]);
  assert.equal(await bad.exited, 2);
  assert.match(bad.output(), /nothing to do/);
  const missing = xenblk(['attach', '--vdev', 'xvdc', '--sim', w.dir, '--info', '--wait', '100']);
  assert.equal(await missing.exited, 1);
  assert.match(missing.output(), /no virtual block device xvdc/);
  await assertSimReleased(w.host);
});

test('examples/guest-disk.ts writes, reads back and flushes a disk as a guest', async (t) => {
  const w = await simWorld(t, MiB);
  serve(t, w);
  const g = node(path.join(ROOT, 'examples/guest-disk.ts'), ['--sim', w.dir, '--domid', '1', '--vdev', 'xvdb']);
  assert.equal(await g.exited, 0, g.output());
  assert.match(g.output(), /xvdb: 2048 sectors of 512 bytes, read-write/);
  assert.match(g.output(), /sector 0: "hello from domain 1 via blkfront"/);
  assert.match(g.output(), /first 64 KiB read into an I\/O buffer in place \([1-9]\d* requests\), same as a copied read/);
  assert.match(g.output(), /^ok$/m);
  assert.equal(fileBytes(w.image, 0, 32).toString('latin1'), 'hello from domain 1 via blkfront');
  assert.equal(fileBytes(w.image, MiB - 512, 16).toString('latin1'), 'last sector 2047');
  await assertSimReleased(w.host);
});
