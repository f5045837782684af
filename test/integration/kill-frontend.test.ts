// kill -9 of the frontend mid-I/O (issue 8 part 4), every actor a process of its own on the
// simulator: the simulator daemon, the backend (`xenblk serve`) and a guest writing numbered
// versions of fixed slots (test/fuzz/blkfront/ack-writer.ts) whose acknowledgements a verifier
// here records.
//   - A guest process killed while its domain lives on (this test process is attached as the
//     same domain): the backend keeps serving; the next frontend of the domain finds the old
//     connection, the backend lets it go (its mappings and channel released, state Closed) and
//     serves the newcomer, which reads every acknowledged write back; after it disconnects
//     nothing of either frontend stays granted, mapped or bound anywhere.
//   - A guest whose domain dies with it: the simulator removes the domain's devices as a
//     toolstack would, the backend releases everything and exits cleanly, and every
//     acknowledged write is in the backing file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Blkfront } from '../../lib/blkfront/device.ts';
import { assertSimReleased, fileBytes, node, serve, simWorld, xenblk } from '../support/blkfront-sim.ts';
import type { Child } from '../support/blkfront-sim.ts';
import { AckLedger, slotData } from '../fuzz/blkfront/ack-writer.ts';

const WRITER = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fuzz/blkfront/ack-writer.ts');
const SLOTS = 96;
const SLOT_SECTORS = 24;
const SLOT_BYTES = SLOT_SECTORS * 512;
const SEED = 0x6b12;
/** Generous bounds for a loaded machine: they detect a hang, they measure nothing. */
const WAIT_MS = 90_000;

async function until(what: string, cond: () => boolean, child: Child, ms = WAIT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; output tail:\n${child.output().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function writer(dir: string, domid: number): { child: Child; ledger: AckLedger } {
  const ledger = new AckLedger();
  const child = node(WRITER, [
    '--sim', dir, '--domid', String(domid), '--vdev', 'xvdb', '--slots', String(SLOTS), '--slot-sectors', String(SLOT_SECTORS),
    '--writers', '12', '--rounds', '0', '--seed', String(SEED),
  ], { env: { XENBLK_ACK_WRITER: '1' } });
  child.proc.stdout!.on('data', (b: Buffer) => ledger.feed(b.toString('latin1')));
  return { child, ledger };
}

test('kill -9 of a guest process mid-I/O: the backend lets the dead connection go, goes Closed and serves the next frontend', { timeout: 240_000 }, async (t) => {
  const w = await simWorld(t, SLOTS * SLOT_BYTES);
  const back = serve(t, w, ['--quiet']);
  const { child, ledger } = writer(w.dir, 1);
  t.after(() => { if (child.proc.exitCode === null) child.proc.kill('SIGKILL'); });
  await until('100 acknowledged writes', () => ledger.acks >= 100 || child.proc.exitCode !== null, child);
  assert.equal(child.proc.exitCode, null, `the guest ended early:\n${child.output().slice(-2000)}`);
  child.proc.kill('SIGKILL');
  await child.exited;
  const slot = (s: number): Buffer => fileBytes(w.image, s * SLOT_BYTES, SLOT_BYTES);
  assert.deepEqual(ledger.check(slot, SEED, SLOT_BYTES, SLOTS), [], `acknowledged writes in the file (${ledger.acks} acknowledged, ${ledger.inFlight.size} in flight at the kill)`);
  t.diagnostic(`killed the guest with ${ledger.acks} writes acknowledged, ${ledger.inFlight.size} in flight`);

  // The backend still serves the dead guest's rings (nothing told it yet, as on Xen).
  const held = w.host.status().domains.find((d) => d.domid === 0)!.processes.reduce((n, p) => n + p.mappedPages, 0);
  assert.ok(held > 0, 'the backend still maps the dead guest\'s pages before anyone takes over');
  assert.equal(back.proc.exitCode, null, `the backend died with the guest:\n${back.output()}`);

  // The next frontend of the domain takes the disk over.
  const f = await Blkfront.attach(w.host, 'xvdb', { deviceTimeoutMs: 30_000, connectTimeoutMs: 60_000, closeTimeoutMs: 5_000 });
  const seen = f.transitions.map((s) => `${s.side}:${s.name}`);
  assert.equal(seen[0], 'frontend:Connected', `found the dead guest's state: ${seen.join(' ')}`);
  assert.ok(seen.includes('backend:Closed'), `the backend went Closed for the dead connection: ${seen.join(' ')}`);
  assert.deepEqual(seen.filter((x) => x.startsWith('frontend:')).slice(-2), ['frontend:Initialised', 'frontend:Connected'], seen.join(' '));
  for (let s = 0; s < SLOTS; s++) {
    const got = Buffer.alloc(SLOT_BYTES);
    await f.read(s * SLOT_SECTORS, got);
    assert.ok(got.equals(slot(s)), `slot ${s}: the new frontend reads what the file holds`);
  }
  const fresh = slotData(SEED, 0, 1000, SLOT_BYTES);
  await f.write(0, fresh);
  const back0 = Buffer.alloc(SLOT_BYTES);
  await f.read(0, back0);
  assert.ok(back0.equals(fresh));
  assert.ok(slot(0).equals(fresh));
  await f.disconnect();
  // Nothing of the dead guest nor of the new frontend stays granted, mapped or bound.
  await assertSimReleased(w.host, 'after the new frontend disconnected');
  assert.equal(back.proc.exitCode, null, 'the backend is still serving');
});

test('kill -9 of a guest whose domain dies with it: the devices go, the backend releases everything and exits cleanly', { timeout: 240_000 }, async (t) => {
  const w = await simWorld(t, SLOTS * SLOT_BYTES);
  // Domain 2 exists only as long as its one process.
  const back = xenblk(['serve', w.image, '--domid', '2', '--vdev', 'xvdb', '--sim', w.dir, '--quiet']);
  t.after(async () => { if (back.proc.exitCode === null) { back.proc.kill('SIGKILL'); await back.exited; } });
  const { child, ledger } = writer(w.dir, 2);
  t.after(() => { if (child.proc.exitCode === null) child.proc.kill('SIGKILL'); });
  await until('60 acknowledged writes', () => ledger.acks >= 60 || child.proc.exitCode !== null, child);
  assert.equal(child.proc.exitCode, null, `the guest ended early:\n${child.output().slice(-2000)}`);
  child.proc.kill('SIGKILL');
  await child.exited;
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([back.exited, new Promise<string>((r) => { timer = setTimeout(() => r('still running'), WAIT_MS); })]);
  clearTimeout(timer);
  assert.equal(code, 0, `the backend after its frontend's domain died: ${code}\n${back.output()}`);
  const slot = (s: number): Buffer => fileBytes(w.image, s * SLOT_BYTES, SLOT_BYTES);
  assert.deepEqual(ledger.check(slot, SEED, SLOT_BYTES, SLOTS), [], `acknowledged writes in the file (${ledger.acks} acknowledged)`);
  // Domain 2 is gone entirely: no pages of it kept alive by a mapping, no port anywhere.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const st = w.host.status();
    const d2 = st.domains.find((d) => d.domid === 2);
    const mapped = st.domains.flatMap((d) => d.processes).reduce((n, p) => n + p.mappedPages, 0);
    const ports = st.domains.reduce((n, d) => n + d.ports.length, 0);
    if (d2 === undefined && mapped === 0 && ports === 0) break;
    if (Date.now() > deadline) assert.fail(`still held after domain 2 died: ${JSON.stringify({ d2, mapped, ports })}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(await w.host.xenstore.tryRead('/local/domain/0/backend/vbd/2').catch(() => undefined), undefined, 'the backend directories are gone');
});
