// Benchmark 1, the ring alone: request/response round trips per second between a frontend and
// a backend process over a simulated host, TypeScript (protocol/ring.ts + protocol/blkif.ts,
// bench/ring-peer.ts) against C built on Xen's ring.h macros and blkif.h (bench/c/ring-peer.c).
// Both pairs use the same memory (a page granted from the frontend domain's RAM, mapped by
// the backend through the simulator's grant table) and the same event transport (the
// simulator's event channels: pending bits in the event pages, FIFO doorbells); the C peers
// speak the simulator's protocols themselves. QD1 measures the full notify -> wake -> answer
// -> notify -> wake latency; QD32 how well batching (one notification per batch, ring.h's
// event indices) amortises it. No I/O is done: this is the cost of the ring and the events.
import path from 'node:path';
import { compileC } from '../test/support/cc.ts';
import { startSim, type SimHandle } from '../lib/sim/start.ts';
import type { Bench, BenchContext } from './framework/bench.ts';
import { LineProcess, Worker } from './framework/worker.ts';

const TS_FRONT_DOMID = 1;
const C_FRONT_DOMID = 2;
const BACK_DOMID = 0;
const RING_ORDER = 0;

/** The queue depths measured: one request at a time, and a full one-page ring. */
export const RING_QDS = [1, 32] as const;

interface Pair {
  sample(qd: number, ms: number): Promise<number>;
  stop(): Promise<void>;
}

async function tsPair(dir: string, profileDir: string | undefined): Promise<Pair> {
  const script = new URL('./ring-peer.ts', import.meta.url).pathname;
  const front = Worker.start('ring-ts-front', script);
  const back = Worker.start('ring-ts-back', script);
  try {
    const f = await front.call<{ port: number; refs: number[] }>('front', { dir, domid: TS_FRONT_DOMID, backend: BACK_DOMID, order: RING_ORDER });
    await back.call('back', { dir, domid: BACK_DOMID, frontend: TS_FRONT_DOMID, port: f.port, refs: f.refs });
    if (profileDir !== undefined) await Promise.all([front.profileStart(), back.profileStart()]);
  } catch (e) {
    await Promise.all([front.stop(), back.stop()]);
    throw e;
  }
  return {
    async sample(qd, ms) {
      const r = await front.call<{ done: number; ns: number }>('run', { qd, ms });
      return r.done / (r.ns / 1e9);
    },
    async stop() {
      if (profileDir !== undefined) {
        await front.profileStop(path.join(profileDir, 'ring-ts-front.cpuprofile'));
        await back.profileStop(path.join(profileDir, 'ring-ts-back.cpuprofile'));
      }
      await front.stop();
      await back.stop();
    },
  };
}

async function cPair(dir: string): Promise<Pair> {
  const bin = compileC({ name: 'bench-ring-peer', sources: ['bench/c/ring-peer.c'] });
  const front = LineProcess.spawn('ring-c-front', bin, ['front', dir, String(C_FRONT_DOMID), String(BACK_DOMID), String(RING_ORDER)]);
  let back: LineProcess | undefined;
  try {
    const ready = (await front.line()).split(' ');
    if (ready[0] !== 'READY') throw new Error(`C front: ${ready.join(' ')}`);
    back = LineProcess.spawn('ring-c-back', bin, ['back', dir, String(BACK_DOMID), String(C_FRONT_DOMID), ...ready.slice(1)]);
    const ok = await back.line();
    if (ok !== 'READY') throw new Error(`C back: ${ok}`);
  } catch (e) {
    await front.stop();
    await back?.stop();
    throw e;
  }
  const b = back;
  return {
    async sample(qd, ms) {
      front.send(`run ${qd} ${ms}`);
      const r = (await front.line()).split(' ');
      if (r[0] !== 'DONE') throw new Error(`C front: ${r.join(' ')}`);
      return Number(r[1]) / (Number(r[2]) / 1e9);
    },
    async stop() {
      await front.stop();
      await b.stop();
    },
  };
}

export const ringBench: Bench = {
  name: 'ring',
  title: 'Ring only: blkif round trips, TS front+back vs C (ring.h) front+back, same memory and events',
  async run(ctx: BenchContext) {
    const qds = RING_QDS.filter((qd) => ctx.wants(`ring.qd${qd}`));
    if (qds.length === 0) return;
    const ms = ctx.quick ? 200 : 1000;
    const sim: SimHandle = await startSim({ dir: `/dev/shm/xenblk-bench-ring-${process.pid}` });
    let ts: Pair | undefined;
    let c: Pair | undefined;
    try {
      ts = await tsPair(sim.dir, ctx.profileDir);
      c = await cPair(sim.dir);
      for (const qd of qds) {
        const t = ts;
        const cc = c;
        await ctx.measure(
          {
            name: `ring.qd${qd}`,
            unit: 'round trips/s',
            limit: 'C ring.h front+back',
            goal: { cmp: '>=', ratio: 0.5 },
            better: 'higher',
            note: `${ms} ms per sample; ${qd} request(s) kept in flight on a 1-page ring (32 slots); each request a 1-segment READ answered OKAY`,
          },
          () => t.sample(qd, ms),
          () => cc.sample(qd, ms),
        );
      }
    } finally {
      await ts?.stop();
      await c?.stop();
      await sim.stop();
    }
  },
};
