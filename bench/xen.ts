// Benchmark 4, real Xen (a hook; the harness is test/xen/, owned by the real-Xen harness): in a
// Linux PV domU booted by that harness, the same fio-like jobs (fio, or a busybox dd
// equivalent) against (a) Linux's kernel xen-blkback on a loop device and (b) xenblk's
// blkback on the same file; figure = b, limit = a, goal b/a >= 0.9.
//
// To switch it on, the harness adds `test/xen/bench.ts` exporting
//   export async function openXenBench(log: (m: string) => void): Promise<XenBenchHook>
// (boot once, set both disks up, sample on demand, tear down on close). Until that file
// exists this benchmark records a note saying so, and no figure. It only runs when selected
// (`--only xen`) or with XENBLK_BENCH_XEN=1, because booting Xen under QEMU takes minutes.
import fs from 'node:fs';
import type { Bench, BenchContext } from './framework/bench.ts';
import type { Goal } from './framework/figure.ts';

/** One job run in the domU. */
export interface XenJob {
  readonly id: string;
  readonly op: 'read' | 'write';
  readonly pattern: 'rand' | 'seq';
  readonly bs: number;
  readonly qd: number;
  /** Seconds per sample. */
  readonly seconds: number;
}

/** What the real-Xen harness provides (test/xen/bench.ts). */
export interface XenBenchHook {
  /** Why this machine cannot run it (no KVM, no images...), or undefined when it can. */
  readonly cannotRun: string | undefined;
  /** How the domU generates I/O (`fio 3.33`, `busybox dd`), for the notes. */
  readonly engine: string;
  /** `sample(backend, job)` is one sample: IOPS for random jobs, MiB/s for sequential ones. */
  sample(backend: 'linux-blkback' | 'xenblk', job: XenJob): Promise<number>;
  close(): Promise<void>;
}

/** The jobs compared on real Xen. */
export const XEN_JOBS: readonly (XenJob & { goal: Goal })[] = [
  { id: '4k-randread-qd32', op: 'read', pattern: 'rand', bs: 4096, qd: 32, seconds: 5, goal: { cmp: '>=', ratio: 0.9 } },
  { id: '4k-randwrite-qd32', op: 'write', pattern: 'rand', bs: 4096, qd: 32, seconds: 5, goal: { cmp: '>=', ratio: 0.9 } },
  { id: '1m-seqread-qd4', op: 'read', pattern: 'seq', bs: 1 << 20, qd: 4, seconds: 5, goal: { cmp: '>=', ratio: 0.9 } },
  { id: '1m-seqwrite-qd4', op: 'write', pattern: 'seq', bs: 1 << 20, qd: 4, seconds: 5, goal: { cmp: '>=', ratio: 0.9 } },
];

const HOOK = new URL('../test/xen/bench.ts', import.meta.url);

export const xenBench: Bench = {
  name: 'xen',
  title: 'Real Xen: xenblk blkback vs Linux kernel blkback, Linux PV domU (hook for test/xen/)',
  async run(ctx: BenchContext) {
    const selected = process.env.XENBLK_BENCH_XEN === '1' || XEN_JOBS.some((j) => ctx.named(`xen.${j.id}`));
    if (!selected) {
      ctx.note('xen: not run (select it with --only xen or XENBLK_BENCH_XEN=1; it boots Xen under QEMU)');
      return;
    }
    if (!fs.existsSync(HOOK)) {
      ctx.note('xen: not run: the real-Xen harness has no bench hook yet (test/xen/bench.ts exporting openXenBench, see bench/xen.ts)');
      return;
    }
    const mod = (await import(HOOK.href)) as { openXenBench?: (log: (m: string) => void) => Promise<XenBenchHook> };
    if (mod.openXenBench === undefined) throw new Error('test/xen/bench.ts does not export openXenBench');
    const hook = await mod.openXenBench(ctx.log);
    try {
      if (hook.cannotRun !== undefined) {
        ctx.note(`xen: not run: ${hook.cannotRun}`);
        return;
      }
      for (const j of XEN_JOBS) {
        if (!ctx.wants(`xen.${j.id}`)) continue;
        await ctx.measure(
          {
            name: `xen.${j.id}`,
            unit: j.pattern === 'rand' ? 'IOPS' : 'MiB/s',
            limit: 'Linux xen-blkback on a loop device',
            goal: j.goal,
            better: 'higher',
            note: `${hook.engine} in a Linux PV domU; ${j.pattern} ${j.op}s of ${j.bs >> 10} KiB, ${j.qd} in flight, ${j.seconds} s per sample; xenblk blkback on the same file`,
          },
          () => hook.sample('xenblk', j),
          () => hook.sample('linux-blkback', j),
        );
      }
    } finally {
      await hook.close();
    }
  },
};
