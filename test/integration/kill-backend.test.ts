// kill -9 of the backend mid-write (issue 8 part 4), every actor a process of its own on the
// simulator: the simulator daemon, the backend (`xenblk serve`, as a user runs it) and a guest
// writing numbered versions of fixed slots (test/fuzz/blkfront/ack-writer.ts), whose stdout a
// verifier here records. The backend is killed twice while writes are in flight and started
// again each time. Oracles: right after each kill, every write the guest had acknowledged is in
// the backing file (a slot holds its last acknowledged version, or the one in flight); the guest
// reconnects by itself and every write it submitted is eventually acknowledged (the ones in
// flight were re-issued, none failed); at the end every slot holds its last version, and once
// the backend is stopped nothing stays granted, mapped or bound.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { assertSimReleased, fileBytes, node, serve, simWorld } from '../support/blkfront-sim.ts';
import type { Child } from '../support/blkfront-sim.ts';
import { AckLedger } from '../fuzz/blkfront/ack-writer.ts';

const WRITER = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fuzz/blkfront/ack-writer.ts');
const SLOTS = 96;
const SLOT_SECTORS = 24;
const SLOT_BYTES = SLOT_SECTORS * 512;
const SEED = 0x6b11;
/** Generous bounds for a loaded machine: they detect a hang, they measure nothing. */
const WAIT_MS = 90_000;

async function until(what: string, cond: () => boolean, child: Child, ms = WAIT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; guest output tail:\n${child.output().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('kill -9 of the backend mid-write, twice: acknowledged writes survive, the guest reconnects and re-issues, nothing is lost', { timeout: 240_000 }, async (t) => {
  const w = await simWorld(t, SLOTS * SLOT_BYTES);
  let back = serve(t, w, ['--quiet']);
  const ledger = new AckLedger();
  const guest = node(WRITER, [
    '--sim', w.dir, '--domid', '1', '--vdev', 'xvdb', '--slots', String(SLOTS), '--slot-sectors', String(SLOT_SECTORS),
    '--writers', '12', '--rounds', '6', '--seed', String(SEED),
  ], { env: { XENBLK_ACK_WRITER: '1' } });
  t.after(() => { if (guest.proc.exitCode === null) guest.proc.kill('SIGKILL'); });
  guest.proc.stdout!.on('data', (b: Buffer) => ledger.feed(b.toString('latin1')));
  const slot = (s: number): Buffer => fileBytes(w.image, s * SLOT_BYTES, SLOT_BYTES);

  for (const [kill, after] of [[1, 60], [2, 200]] as const) {
    await until(`${after} acknowledged writes before kill ${kill}`, () => ledger.acks >= after || guest.proc.exitCode !== null, guest);
    assert.equal(guest.proc.exitCode, null, `the guest ended before kill ${kill}:\n${guest.output().slice(-2000)}`);
    back.proc.kill('SIGKILL');
    await back.exited;
    // The backend is gone: what it acknowledged must already be in the file.
    const inFlight = ledger.inFlight.size;
    assert.deepEqual(ledger.check(slot, SEED, SLOT_BYTES, SLOTS), [], `after kill ${kill} (${ledger.acks} acknowledged, ${inFlight} in flight)`);
    t.diagnostic(`kill ${kill}: ${ledger.acks} writes acknowledged, ${inFlight} in flight`);
    back = serve(t, w, ['--quiet']);
  }

  const code = await guest.exited;
  assert.equal(code, 0, `guest exit ${code}:\n${guest.output().slice(-3000)}`);
  assert.deepEqual(ledger.errors, []);
  assert.equal(ledger.acks, ledger.submits, 'every submitted write was acknowledged');
  assert.equal(ledger.acks, SLOTS * 6);
  assert.equal(ledger.inFlight.size, 0);
  const st = ledger.stats!;
  t.diagnostic(`guest: ${JSON.stringify(st)}`);
  assert.equal(st.opsFailed, 0, 'no write failed');
  assert.ok(st.reconnects! >= 2, `the guest reconnected after each kill (${st.reconnects})`);
  // Every slot now holds exactly its last version.
  assert.deepEqual(ledger.check(slot, SEED, SLOT_BYTES, SLOTS), []);
  for (let s = 0; s < SLOTS; s++) assert.equal(ledger.acked.get(s), 6, `slot ${s} reached version 6`);

  back.proc.kill('SIGTERM');
  assert.equal(await back.exited, 0, back.output());
  await assertSimReleased(w.host, 'after the guest and the backend stopped');
});
