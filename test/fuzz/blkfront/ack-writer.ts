// A guest process for the kill tests (test/integration/kill-*.test.ts): xenblk's Blkfront on
// the simulator writing numbered versions of fixed slots, printing one line per event so a
// verifier in another process can record what was acknowledged:
//
//   ready <sectors>            connected
//   submit <slot> <gen>        write of version <gen> of <slot> handed to blkfront
//   ack <slot> <gen>           ... and acknowledged (blkfront resolved it)
//   stats <json>               after the last round: blkfront's counters
//   error <message>            an operation failed (the writer then exits 1)
//
// Each writer owns its slots and waits for one write before the next, so a slot has at most one
// unacknowledged version at a time: after a crash of either end the slot holds the last
// acknowledged version or the one in flight. The data of a version is `slotData(...)`.
//
// Run: XENBLK_ACK_WRITER=1 node --import tsx ack-writer.ts --sim DIR --domid N --vdev xvdb --slots S --slot-sectors K
//      --writers W --rounds R [--seed X]   (R = 0: write until killed)
import process from 'node:process';
import { parseArgs } from 'node:util';
import { attachSim } from '../../../lib/sim/attach.ts';
import { Blkfront } from '../../../lib/blkfront/device.ts';

/** `slotData(seed, slot, gen, bytes)` is version `gen` of `slot`: deterministic bytes, different per version. */
export function slotData(seed: number, slot: number, gen: number, bytes: number): Buffer {
  const b = Buffer.allocUnsafe(bytes);
  let x = (Math.imul(seed ^ Math.imul(slot + 1, 0x9e3779b1) ^ Math.imul(gen + 7, 0x85ebca6b), 2654435761) >>> 0) || 1;
  for (let i = 0; i < bytes; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b[i] = x;
  }
  // The header makes a version recognisable in a dump.
  b.writeUInt32LE(slot, 0);
  b.writeUInt32LE(gen, 4);
  return b;
}

/** What a verifier learns from the writer's lines. */
export class AckLedger {
  /** slot -> last acknowledged version. */
  readonly acked = new Map<number, number>();
  /** slot -> version submitted and not acknowledged yet. */
  readonly inFlight = new Map<number, number>();
  submits = 0;
  acks = 0;
  errors: string[] = [];
  stats: Record<string, number> | undefined;
  sectors: number | undefined;
  private partial = '';

  /** `feed(text)` takes more of the writer's stdout. */
  feed(text: string): void {
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop()!;
    for (const line of lines) {
      const [what, a, b] = line.split(' ');
      if (what === 'submit') {
        this.inFlight.set(Number(a), Number(b));
        this.submits++;
      } else if (what === 'ack') {
        const slot = Number(a);
        const gen = Number(b);
        if (this.inFlight.get(slot) !== gen) this.errors.push(`ack ${slot} ${gen} for a version not in flight (${this.inFlight.get(slot)})`);
        this.inFlight.delete(slot);
        this.acked.set(slot, gen);
        this.acks++;
      } else if (what === 'ready') {
        this.sectors = Number(a);
      } else if (what === 'stats') {
        this.stats = JSON.parse(line.slice(6)) as Record<string, number>;
      } else if (what === 'error') {
        this.errors.push(line.slice(6));
      }
    }
  }

  /**
   * `check(read, seed, slotBytes)` is what is wrong with the disk as `read(slot)` shows it: a
   * slot must hold its last acknowledged version, or the version in flight (not yet
   * acknowledged, it may or may not have landed); a slot never acknowledged may still be zero.
   */
  check(read: (slot: number) => Buffer, seed: number, slotBytes: number, slots: number): string[] {
    const bad: string[] = [];
    for (let s = 0; s < slots; s++) {
      const got = read(s);
      const ok: number[] = [];
      const a = this.acked.get(s);
      const f = this.inFlight.get(s);
      if (a !== undefined) ok.push(a);
      if (f !== undefined) ok.push(f);
      if (ok.some((g) => got.equals(slotData(seed, s, g, slotBytes)))) continue;
      if (a === undefined && got.every((x) => x === 0)) continue;
      bad.push(`slot ${s}: holds version ${got.readUInt32LE(0) === s ? got.readUInt32LE(4) : '?'}, want ${a === undefined ? 'nothing or' : `acknowledged ${a}`}${f !== undefined ? ` or in-flight ${f}` : ''}`);
    }
    return bad;
  }
}

async function main(): Promise<number> {
  const { values: a } = parseArgs({
    options: {
      sim: { type: 'string' }, domid: { type: 'string' }, vdev: { type: 'string' }, slots: { type: 'string' },
      'slot-sectors': { type: 'string' }, writers: { type: 'string' }, rounds: { type: 'string' }, seed: { type: 'string' },
    },
  });
  const slots = Number(a.slots ?? 64);
  const k = Number(a['slot-sectors'] ?? 16);
  const writers = Number(a.writers ?? 8);
  const rounds = Number(a.rounds ?? 0);
  const seed = Number(a.seed ?? 1);
  const out = (line: string): void => { process.stdout.write(`${line}\n`); };
  const host = await attachSim({ dir: a.sim!, domid: Number(a.domid ?? 1) });
  let f: Blkfront | undefined;
  try {
    f = await Blkfront.attach(host, a.vdev ?? 'xvdb', {
      deviceTimeoutMs: 60_000, connectTimeoutMs: 60_000, closeTimeoutMs: 5_000, maxQueues: 2, maxIndirectSegments: 64,
    });
    const dev = f;
    out(`ready ${(await dev.getInfo()).sectors}`);
    const gens = new Array<number>(slots).fill(0);
    await Promise.all(Array.from({ length: writers }, async (_, w) => {
      for (let r = 0; rounds === 0 || r < rounds; r++) {
        for (let s = w; s < slots; s += writers) {
          const gen = ++gens[s]!;
          out(`submit ${s} ${gen}`);
          await dev.write(s * k, slotData(seed, s, gen, k * 512));
          out(`ack ${s} ${gen}`);
        }
      }
    }));
    const st = dev.stats();
    out(`stats ${JSON.stringify({ opsOk: st.opsOk, opsFailed: st.opsFailed, requests: st.requests, reissued: st.reissued, reconnects: st.reconnects })}`);
    return 0;
  } catch (e) {
    out(`error ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  } finally {
    await f?.disconnect();
    await host.close();
  }
}

// Only as the child process (the tests import slotData and AckLedger from here).
if (process.env.XENBLK_ACK_WRITER === '1') {
  main().then((code) => { process.exitCode = code; }, (e: unknown) => {
    process.stdout.write(`error ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
