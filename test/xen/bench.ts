// The real-Xen benchmark run (bench/xen.ts turns its samples into figures): one boot of Xen +
// dom0 under QEMU, as `npm run test:xen` does, whose one dom0 script (test/xen/bench/bench.sh)
// serves one backing file to a Linux PV domU twice, through Linux's xen-blkback on a loop
// device and through xenblk's blkback, and whose domU (test/xen/domu/bench.sh, with Debian's fio
// packed in: test/xen/fio.ts) runs every job on both disks in turn, repetition after
// repetition. One boot for everything: boots differ by 6-12% and the same backend measured in
// two boots by up to 1.3x (../shared/XEN-UNDER-QEMU.md), so only samples from one boot,
// interleaved, compare.
import { copyFileSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuTraceNote, summarizeCpuTrace, traceWindows } from './cpu-trace.ts';
import { dom0ProfileNote, summarizeDom0Profile } from './dom0-profile.ts';
import { HarnessError, run } from './exec.ts';
import { ensureFio } from './fio.ts';
import { cannotRun, ensureHostTools } from './host-tools.ts';
import { ensureImages } from './images.ts';
import { buildInitramfs } from './initramfs.ts';
import { BOOT_ALLOWANCE_S, boot } from './qemu.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '../..');

/** The name boot.sh knows the benchmark by (markers, logs). */
const NAME = 'xen-bench';


/** The two backends compared; the order is the order within each repetition. */
export const XEN_BACKENDS = ['linux-blkback', 'xenblk'] as const;
export type XenBackend = (typeof XEN_BACKENDS)[number];

/** One fio job run in the domU. */
export interface XenJob {
  /** Figure suffix, e.g. `4k-randread-qd32` (no ':' or ','). */
  readonly id: string;
  readonly op: 'read' | 'write';
  readonly pattern: 'rand' | 'seq';
  readonly bs: number;
  readonly qd: number;
}

/** One fio run. */
export interface XenSample {
  readonly iops: number;
  /** MiB/s (fio's KiB/s / 1024). */
  readonly mibs: number;
}

export interface XenBenchOptions {
  readonly jobs: readonly XenJob[];
  readonly reps: number;
  /** Seconds measured per sample. */
  readonly seconds: number;
  /** Seconds of fio ramp-up before each sample (not measured). */
  readonly rampSeconds: number;
  /** Seconds of one unmeasured run per job and backend before its repetitions (0: none). */
  readonly warmupSeconds: number;
  /** Size of the backing file. */
  readonly diskMiB: number;
  readonly log: (line: string) => void;
  /** Where to put the profile of the run (bench --profile), or undefined for none. */
  readonly profileDir?: string | undefined;
  /**
   * What profiles the run: `perf`, all of dom0 (kernel and user; dom0-profile.ts), or `v8`, a
   * V8 CPU profile of `xenblk serve`'s JavaScript. Not both at once: under TCG V8's sampler costs
   * serve ~0.4 of a CPU even while it is idle, which would be in perf's figures, and serve's
   * main thread then never looks idle, so the CPU trace finds no second of the kernel's disk alone.
   */
  readonly profiler?: 'perf' | 'v8';
  /** Extra options for `xenblk serve` (e.g. `--grant-copy`); words without spaces or quotes. */
  readonly serveArgs?: readonly string[];
}

export interface XenBenchResult {
  /** e.g. `fio-3.33 (Debian fio 3.33-3)`. */
  readonly engine: string;
  /** samples.get(job id)[backend][rep], repetitions in run order (pairs by index). */
  readonly samples: ReadonlyMap<string, Readonly<Record<XenBackend, readonly XenSample[]>>>;
  /** What dom0 reported: the backing file, what each frontend negotiated, timings. */
  readonly notes: readonly string[];
  /** Why the run did not finish, or undefined; the samples then hold what came before. */
  readonly broke: string | undefined;
  readonly bootSeconds: number | undefined;
  readonly seconds: number;
}

/** `xenBenchCannotRun()` is why this machine cannot run the benchmark at all (not root, not x86-64 Debian...), or undefined. */
export function xenBenchCannotRun(): string | undefined {
  return cannotRun();
}

/** `fioRw(j)` is fio's --rw for job `j`. */
function fioRw(j: XenJob): string {
  return j.pattern === 'rand' ? `rand${j.op}` : j.op;
}

/** `domuLimitSeconds(o)` is a generous bound on the domU's whole workload (fio starts slowly under TCG). */
function domuLimitSeconds(o: XenBenchOptions): number {
  const perRun = 15;
  const runs = o.jobs.length * XEN_BACKENDS.length;
  return 180 + runs * ((o.warmupSeconds > 0 ? o.warmupSeconds + perRun : 0) + o.reps * (o.seconds + o.rampSeconds + perRun));
}

/** `parseResults(text, jobs)` is the samples and notes in dom0's bench.results. */
function parseResults(text: string, jobs: readonly XenJob[]): { samples: Map<string, Record<XenBackend, XenSample[]>>; notes: string[] } {
  const samples = new Map<string, Record<XenBackend, XenSample[]>>();
  for (const j of jobs) samples.set(j.id, { 'linux-blkback': [], xenblk: [] });
  const notes: string[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('NOTE ')) {
      notes.push(line.slice(5));
      continue;
    }
    // BENCH <job> <backend> <rep> <IOPS> <KiB/s>
    const m = /^BENCH (\S+) (\S+) (\d+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)$/.exec(line.trim());
    if (m === null) continue;
    const per = samples.get(m[1]!);
    const backend = XEN_BACKENDS.find((b) => b === m[2]);
    if (per === undefined || backend === undefined) continue;
    const rep = Number(m[3]);
    if (rep !== per[backend].length + 1) continue;
    per[backend].push({ iops: Number(m[4]), mibs: Number(m[5]) / 1024 });
  }
  return { samples, notes };
}

/** `prepareRun(o, ...)` is a fresh run directory: boot.sh, env, the one-entry tests.list, bench.env, the domU initramfs with fio. */
function prepareRun(o: XenBenchOptions, kernelRelease: string, modulesDir: string, nodeBin: string, fio: ReturnType<typeof ensureFio>): string {
  const dir = mkdtempSync(join(tmpdir(), 'xenblk-xenbench-'));
  copyFileSync(join(HERE, 'dom0/boot.sh'), join(dir, 'boot.sh'));
  writeFileSync(join(dir, 'env'), `export XENBLK_NODE=/xenblk/node/${basename(nodeBin)}\nexport XENBLK_KERNEL_RELEASE=${kernelRelease}\n`);
  const limit = domuLimitSeconds(o);
  writeFileSync(join(dir, 'tests.list'), `${NAME} ${limit + 240} bash test/xen/bench/bench.sh\n`);
  const jobs = o.jobs.map((j) => `${j.id}:${fioRw(j)}:${j.bs}:${j.qd}`).join(',');
  writeFileSync(
    join(dir, 'bench.env'),
    [
      `XB_MIB=${o.diskMiB}`,
      `XB_JOBS=${jobs}`,
      `XB_REPS=${o.reps}`,
      `XB_SECS=${o.seconds}`,
      `XB_RAMP=${o.rampSeconds}`,
      `XB_WARM=${o.warmupSeconds}`,
      `XB_LIMIT=${limit}`,
      `XB_PROFILE=${o.profileDir === undefined ? 0 : (o.profiler ?? 'perf')}`,
      `XB_SERVE_ARGS='${(o.serveArgs ?? []).join(' ')}'`,
      '',
    ].join('\n'),
  );
  const order = readFileSync(join(modulesDir, 'order'), 'utf8').split('\n').filter((m) => m !== '');
  buildInitramfs(
    {
      init: join(HERE, 'domu/init.sh'),
      modules: order.map((m) => join(modulesDir, m)),
      files: [{ at: 'workload.sh', from: join(HERE, 'domu/bench.sh'), exec: true }, ...fio.files],
    },
    join(dir, 'domu-initramfs'),
    join(dir, 'domU-initrd.gz'),
  );
  rmSync(join(dir, 'domu-initramfs'), { recursive: true, force: true });
  return dir;
}

/**
 * `runXenBench(o)` boots Xen once and is every sample of every job on both backends; a run that
 * breaks half-way returns what it measured with `broke` saying why. HarnessError when it cannot
 * even start (images, build, fio).
 */
export async function runXenBench(o: XenBenchOptions): Promise<XenBenchResult> {
  const t0 = Date.now();
  for (const j of o.jobs) if (!/^[A-Za-z0-9._-]+$/.test(j.id)) throw new HarnessError(`job id ${JSON.stringify(j.id)} must be [A-Za-z0-9._-]+`);
  ensureHostTools(o.log);
  const cacheRoot = process.env.XENBLK_XEN_CACHE ?? '/var/cache/xenblk-xen';
  const { images, built, seconds: imageSeconds } = ensureImages({ cacheRoot, rebuild: false, log: o.log });
  o.log(`images ${built ? 'built' : 'cached'} (${imageSeconds.toFixed(1)} s): xen ${images.manifest.xenVersion}, ${images.manifest.kernelPackage} ${images.manifest.kernelVersion}`);
  const fio = ensureFio(cacheRoot, o.log);
  let s = Date.now();
  run('npm', ['run', '-s', 'build'], { cwd: REPO });
  o.log(`built dist/xenblk.mjs (${((Date.now() - s) / 1000).toFixed(1)} s)`);
  const nodeBin = realpathSync(process.execPath);
  s = Date.now();
  const runDir = prepareRun(o, images.manifest.kernelRelease, join(images.share, 'modules'), nodeBin, fio);
  o.log(`domU initramfs with fio ${fio.version} (${(fio.bytes / 2 ** 20).toFixed(0)} MiB unpacked) packed in ${((Date.now() - s) / 1000).toFixed(1)} s`);

  const resultsFile = join(runDir, 'bench.results');
  let shown = 0;
  const progress = (): void => {
    if (!existsSync(resultsFile)) return;
    const lines = readFileSync(resultsFile, 'utf8').split('\n').filter((l) => l !== '');
    for (const l of lines.slice(shown)) o.log(`  ${l}`);
    shown = Math.max(shown, lines.length);
  };
  const timer = setInterval(progress, 5000);
  const limit = BOOT_ALLOWANCE_S + domuLimitSeconds(o) + 240 + 60;
  o.log(`booting Xen + dom0 (serial log ${join(runDir, 'serial.log')}); ${o.jobs.length} jobs x ${o.reps} reps x 2 backends, ${o.seconds} s per sample`);
  let result: Awaited<ReturnType<typeof boot>>;
  try {
    result = await boot({
      images,
      runDir,
      timeoutMs: limit * 1000,
      onMarker: (m, at) => {
        if (m.kind === 'booted') o.log(`dom0 up after ${at.toFixed(1)} s`);
        if (m.kind === 'boot-fail') o.log(`dom0 setup failed: ${m.reason}`);
        if (m.kind === 'crash') o.log(`crash on the console: ${m.line}`);
        if (m.kind === 'result') o.log(`dom0 benchmark script ${m.pass ? 'finished' : 'FAILED'} after ${m.seconds.toFixed(1)} s`);
      },
    });
  } finally {
    clearInterval(timer);
  }
  progress();
  const prof = join(runDir, 'prof', 'xen-serve.cpuprofile');
  if (o.profileDir !== undefined && existsSync(prof)) copyFileSync(prof, join(o.profileDir, 'xen-serve.cpuprofile'));
  const trace = join(runDir, 'prof', 'cpu-trace.txt');
  if (o.profileDir !== undefined && existsSync(trace)) copyFileSync(trace, join(o.profileDir, 'xen-cpu-trace.txt'));

  const { samples, notes } = parseResults(existsSync(resultsFile) ? readFileSync(resultsFile, 'utf8') : '', o.jobs);
  if (existsSync(trace)) notes.push(cpuTraceNote(summarizeCpuTrace(readFileSync(trace, 'utf8'))));
  const comms = join(runDir, 'prof', 'dom0-comms.txt');
  const serveChains = join(runDir, 'prof', 'dom0-serve.txt');
  if (o.profileDir !== undefined && existsSync(trace) && existsSync(comms) && existsSync(serveChains)) {
    for (const f of [comms, serveChains]) copyFileSync(f, join(o.profileDir, `xen-${basename(f)}`));
    const windows = traceWindows(readFileSync(trace, 'utf8'));
    notes.push(dom0ProfileNote(summarizeDom0Profile(readFileSync(comms, 'utf8'), readFileSync(serveChains, 'utf8'), windows)));
  }
  const res = result.markers.find((m) => m.kind === 'result');
  const bootFail = result.markers.find((m) => m.kind === 'boot-fail');
  const crash = result.markers.find((m) => m.kind === 'crash');
  let broke: string | undefined;
  if (bootFail?.kind === 'boot-fail') broke = `dom0 setup failed: ${bootFail.reason}`;
  else if (crash?.kind === 'crash') broke = `crash: ${crash.line}`;
  else if (result.bootSeconds === undefined) broke = `dom0 did not come up (${result.exit} after ${result.seconds.toFixed(0)} s)`;
  else if (res?.kind === 'result' && !res.pass) broke = 'the dom0 benchmark script failed';
  else if (res === undefined) broke = result.timedOut ? `the run did not end within ${limit} s` : `QEMU ended (${result.exit}) before the benchmark finished`;
  if (broke === undefined) {
    const short = o.jobs.filter((j) => XEN_BACKENDS.some((b) => samples.get(j.id)![b].length !== o.reps));
    if (short.length > 0) broke = `dom0 reported too few samples for ${short.map((j) => j.id).join(', ')}`;
  }
  if (process.env.XENBLK_BENCH_XEN_KEEP === '1' && broke === undefined) o.log(`kept ${runDir} (XENBLK_BENCH_XEN_KEEP=1)`);
  if (broke !== undefined) {
    const log = join(runDir, 'logs', `${NAME}.log`);
    const tail = existsSync(log) ? readFileSync(log, 'utf8').trimEnd().split('\n').slice(-40) : result.lastLines;
    broke = `${broke}; kept ${runDir} (serial.log, logs/); last lines:\n${tail.map((l) => `     | ${l}`).join('\n')}`;
  } else if (process.env.XENBLK_BENCH_XEN_KEEP !== '1') {
    rmSync(runDir, { recursive: true, force: true });
  }
  const engine = notes.find((n) => n.startsWith('engine: '))?.slice(8).split(';')[0] ?? 'fio';
  return {
    engine: `${engine} (Debian fio ${fio.version})`,
    samples,
    notes,
    broke,
    bootSeconds: result.bootSeconds,
    seconds: (Date.now() - t0) / 1000,
  };
}
