// Benchmark 4, real Xen: fio in a Linux PV domU (Linux xen-blkfront) against (a) Linux's kernel
// xen-blkback on a loop device and (b) xenblk's blkback (`xenblk serve FILE --xen`) on the same
// file; figure = b, limit = a, goal b/a >= 0.9. The run is the real-Xen harness's
// (test/xen/bench.ts): one boot of Xen + dom0 under QEMU for the whole benchmark, the domU taking
// every job on a then b, repetition after repetition, so each figure is the median of
// interleaved samples from one boot (boots differ too much to compare across them).
//
// Both backends bypass dom0's page cache (loop in direct I/O mode; xenblk opens the file
// O_DIRECT), so both read and write dom0's virtual disk. Under QEMU's TCG everything is slow
// and noisy: only the ratio means something, and only a large gap is a finding.
//
// It only runs when selected (`--only xen`, or XENBLK_BENCH_XEN=1), because it boots Xen under
// QEMU (~5-10 minutes), and needs root on an x86-64 Debian host (test:xen's requirements);
// otherwise it records a note saying why, and no figure. XENBLK_XEN_CACHE is test:xen's image
// cache (default /var/cache/xenblk-xen; fio is packed there too); XENBLK_BENCH_XEN_KEEP=1 keeps
// the run directory (serial.log, dom0's logs/) even when the run went well. With --profile,
// `perf` profiles all of dom0 (kernel included) and the note says where its CPU went while each
// disk was driven; XENBLK_BENCH_XEN_PROFILE=v8 takes a V8 CPU profile of serve instead.
import type { Bench, BenchContext } from './framework/bench.ts';
import { figure, type Goal } from './framework/figure.ts';
import { spread } from './framework/stats.ts';
import type { XenBackend, XenJob, XenSample } from '../test/xen/bench.ts';

/** The jobs compared on real Xen. */
export const XEN_JOBS: readonly (XenJob & { goal: Goal })[] = [
  { id: '4k-randread-qd32', op: 'read', pattern: 'rand', bs: 4096, qd: 32, goal: { cmp: '>=', ratio: 0.9 } },
  { id: '4k-randwrite-qd32', op: 'write', pattern: 'rand', bs: 4096, qd: 32, goal: { cmp: '>=', ratio: 0.9 } },
  { id: '1m-seqread-qd4', op: 'read', pattern: 'seq', bs: 1 << 20, qd: 4, goal: { cmp: '>=', ratio: 0.9 } },
  { id: '1m-seqwrite-qd4', op: 'write', pattern: 'seq', bs: 1 << 20, qd: 4, goal: { cmp: '>=', ratio: 0.9 } },
];

/** Seconds per sample (TCG: short samples keep the one boot within ~10 minutes). */
const SECONDS = 5;
const QUICK_SECONDS = 2;
/** fio ramp-up before each sample, not measured. */
const RAMP_SECONDS = 1;
/**
 * One unmeasured run per job and backend before its repetitions (the framework's warm-up), long
 * enough for both backends to reach their steady state under TCG. xenblk serve starts cold
 * twice over: V8 compiles its hot path (one background compile per hot function and job shape,
 * ~100x slower than natively here), and the first 1 MiB job maps Linux blkfront's whole pool
 * of persistent grants once, one gntdev map per grant (1056 per ring: 32 slots x (32 segments
 * + 1 indirect page); ~5 ms of dom0 CPU each in the profile, ~5 s in all). With 2 s the first
 * repetition of the first 4 KiB job read 0.40x where the next two read 0.95x and 0.91x.
 */
const WARMUP_SECONDS = 15;
/** Backing file size (as ../shared/XEN-UNDER-QEMU.md measured kernel blkback with). */
const DISK_MIB = 256;

const LIMIT = 'Linux xen-blkback on a loop device';

/** `fmt(x)` is a sample value as printed in notes. */
function fmt(x: number): string {
  return x >= 100 ? x.toFixed(0) : x.toPrecision(3);
}

export const xenBench: Bench = {
  name: 'xen',
  title: 'Real Xen: xenblk blkback vs Linux kernel blkback, fio in a Linux PV domU (Xen 4.17 under QEMU TCG)',
  async run(ctx: BenchContext) {
    const selected = process.env.XENBLK_BENCH_XEN === '1' || XEN_JOBS.some((j) => ctx.named(`xen.${j.id}`));
    if (!selected) {
      ctx.note('xen: not run (select it with --only xen or XENBLK_BENCH_XEN=1; it boots Xen under QEMU)');
      return;
    }
    const jobs = XEN_JOBS.filter((j) => ctx.wants(`xen.${j.id}`));
    if (jobs.length === 0) return;
    // The harness is loaded only now: its image and apt code is not needed otherwise.
    const harness = await import('../test/xen/bench.ts');
    const why = harness.xenBenchCannotRun();
    if (why !== undefined) {
      ctx.note(`xen: not run: ${why}`);
      return;
    }
    const seconds = ctx.quick ? QUICK_SECONDS : SECONDS;
    const serveArgs = (process.env.XENBLK_BENCH_XEN_SERVE_ARGS ?? '').split(/\s+/).filter((w) => w !== '');
    if (serveArgs.some((w) => !/^[A-Za-z0-9=._-]+$/.test(w))) throw new Error(`XENBLK_BENCH_XEN_SERVE_ARGS: only plain words (options), got ${JSON.stringify(serveArgs)}`);
    if (serveArgs.length > 0) ctx.note(`xen: xenblk serve runs with ${serveArgs.join(' ')} (XENBLK_BENCH_XEN_SERVE_ARGS)`);
    const r = await harness.runXenBench({
      jobs,
      reps: ctx.reps,
      seconds,
      rampSeconds: RAMP_SECONDS,
      warmupSeconds: ctx.quick ? 0 : WARMUP_SECONDS,
      diskMiB: DISK_MIB,
      log: ctx.log,
      profileDir: ctx.profileDir,
      profiler: process.env.XENBLK_BENCH_XEN_PROFILE === 'v8' ? 'v8' : 'perf',
      serveArgs,
    });
    for (const j of jobs) {
      const per = r.samples.get(j.id);
      if (per === undefined) continue;
      const n = Math.min(per.xenblk.length, per['linux-blkback'].length);
      if (n === 0) continue;
      const rand = j.pattern === 'rand';
      const main = (s: XenSample): number => (rand ? s.iops : s.mibs);
      const other = (b: XenBackend): string => {
        const m = spread(per[b].slice(0, n).map((s) => (rand ? s.mibs : s.iops))).median;
        return `${fmt(m)} ${rand ? 'MiB/s' : 'IOPS'}`;
      };
      ctx.record(figure(
        {
          name: `xen.${j.id}`,
          unit: rand ? 'IOPS' : 'MiB/s',
          limit: LIMIT,
          goal: j.goal,
          better: 'higher',
          note: `${r.engine} in a Linux PV domU (1 vCPU) under Xen 4.17 in QEMU TCG; ${j.pattern} ${j.op}s of ${j.bs >> 10} KiB, ` +
            `${j.qd} in flight, libaio direct, ${seconds} s per sample after ${RAMP_SECONDS} s ramp, backends interleaved in one boot; ` +
            `${DISK_MIB} MiB file on dom0's ext4; also xenblk ${other('xenblk')} vs ${other('linux-blkback')}`,
        },
        per.xenblk.slice(0, n).map(main),
        per['linux-blkback'].slice(0, n).map(main),
      ));
    }
    for (const n of r.notes) ctx.note(`xen: ${n}`);
    ctx.note(`xen: one boot, dom0 up after ${r.bootSeconds?.toFixed(0) ?? '?'} s, ${r.seconds.toFixed(0)} s in all`);
    if (r.broke !== undefined) throw new Error(`the real-Xen benchmark run broke: ${r.broke}`);
  },
};
