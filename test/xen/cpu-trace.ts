// dom0's CPU, second by second, while the real-Xen benchmark drives one disk or the other
// (test/xen/bench/bench.sh cpu_trace writes it): which side of the machine was saturated. Each
// line is `<epoch seconds> <serve main thread ticks> <serve ticks> <blkback thread ticks>
// cpuN:<user>,<nice>,<system>,<idle>,<iowait>,<irq>,<softirq>,<steal>,...` with cumulative clock
// ticks (proc(5): /proc/PID/stat utime + stime, /proc/stat cpuN). A second belongs to xenblk when
// serve's main thread ran and the kernel thread did not, to Linux blkback the other way round;
// seconds with both or neither (a switch of disks, fio starting) are left out.

/** USER_HZ: the unit of /proc's tick counts on every Linux architecture (proc(5)). */
const TICKS_PER_SECOND = 100;

/** A thread counts as driving its disk above this share of a CPU, as idle below IDLE_SHARE. */
const BUSY_SHARE = 0.05;
const IDLE_SHARE = 0.03;

interface Sample {
  readonly t: number;
  readonly main: number;
  readonly serve: number;
  readonly kthread: number;
  /** Per dom0 CPU: busy (user, nice, system, irq, softirq), idle (idle, iowait), steal. */
  readonly cpus: readonly (readonly [number, number, number])[];
}

/** Averages over the seconds one backend was driven, in CPUs (1 = one CPU all the time). */
export interface PhaseCpu {
  readonly seconds: number;
  readonly serveMain: number;
  readonly serveAll: number;
  readonly kthread: number;
  readonly dom0Busy: number;
  readonly dom0Idle: number;
  readonly dom0Steal: number;
}

export interface CpuTraceSummary {
  /** dom0's CPUs in the trace. */
  readonly cpus: number;
  readonly xenblk?: PhaseCpu;
  readonly linux?: PhaseCpu;
}

function parseLine(line: string): Sample | undefined {
  const f = line.trim().split(/\s+/);
  if (f.length < 5) return undefined;
  const [t, main, serve, kthread] = f.slice(0, 4).map(Number) as [number, number, number, number];
  if (![t, main, serve, kthread].every(Number.isFinite)) return undefined;
  const cpus: [number, number, number][] = [];
  for (const c of f.slice(4)) {
    const m = /^cpu\d+:([\d,]+)$/.exec(c);
    if (m === null) return undefined;
    const v = m[1]!.split(',').map(Number);
    if (v.length < 8) return undefined;
    const [user, nice, system, idle, iowait, irq, softirq, steal] = v as [number, number, number, number, number, number, number, number];
    cpus.push([user + nice + system + irq + softirq, idle + iowait, steal]);
  }
  return { t, main, serve, kthread, cpus };
}

type PhaseSums = { -readonly [K in keyof PhaseCpu]: number };

function noSums(): PhaseSums {
  return { seconds: 0, serveMain: 0, serveAll: 0, kthread: 0, dom0Busy: 0, dom0Idle: 0, dom0Steal: 0 };
}

const cpuSeconds = (now: number, before: number): number => (now - before) / TICKS_PER_SECOND;

/** Which backend alone was driven between samples `a` and `b`, if one was. */
function phaseOf(a: Sample, b: Sample): 'xenblk' | 'linux' | undefined {
  const dt = b.t - a.t;
  if (!(dt > 0) || a.cpus.length !== b.cpus.length) return undefined;
  const main = cpuSeconds(b.main, a.main);
  const kthread = cpuSeconds(b.kthread, a.kthread);
  if (main > BUSY_SHARE * dt && kthread < IDLE_SHARE * dt) return 'xenblk';
  if (kthread > BUSY_SHARE * dt && main < IDLE_SHARE * dt) return 'linux';
  return undefined;
}

function parseTrace(text: string): Sample[] {
  return text.split('\n').map(parseLine).filter((s): s is Sample => s !== undefined);
}

/** The intervals [from, to) of epoch seconds in which one backend alone was driven. */
export interface TraceWindows {
  readonly xenblk: readonly (readonly [number, number])[];
  readonly linux: readonly (readonly [number, number])[];
}

/** `traceWindows(text)` is when each backend alone was driven, by the same rule as the summary. */
export function traceWindows(text: string): TraceWindows {
  const samples = parseTrace(text);
  const w = { xenblk: [] as [number, number][], linux: [] as [number, number][] };
  for (let i = 1; i < samples.length; i++) {
    const phase = phaseOf(samples[i - 1]!, samples[i]!);
    if (phase !== undefined) w[phase].push([samples[i - 1]!.t, samples[i]!.t]);
  }
  return w;
}

/** `summarizeCpuTrace(text)` is the trace's averages while each backend was driven (absent when it never was). */
export function summarizeCpuTrace(text: string): CpuTraceSummary {
  const samples = parseTrace(text);
  const sums = { xenblk: noSums(), linux: noSums() };
  // Sums of CPU seconds and of wall seconds per phase; their ratio is the average in CPUs.
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1]!;
    const b = samples[i]!;
    const which = phaseOf(a, b);
    if (which === undefined) continue;
    const phase = sums[which];
    const dt = b.t - a.t;
    const main = cpuSeconds(b.main, a.main);
    const kthread = cpuSeconds(b.kthread, a.kthread);
    phase.seconds += dt;
    phase.serveMain += main;
    phase.serveAll += cpuSeconds(b.serve, a.serve);
    phase.kthread += kthread;
    b.cpus.forEach((c, k) => {
      const p = a.cpus[k]!;
      phase.dom0Busy += cpuSeconds(c[0], p[0]);
      phase.dom0Idle += cpuSeconds(c[1], p[1]);
      phase.dom0Steal += cpuSeconds(c[2], p[2]);
    });
  }
  const average = (v: PhaseSums): PhaseCpu | undefined => v.seconds === 0 ? undefined : {
    seconds: v.seconds,
    serveMain: v.serveMain / v.seconds,
    serveAll: v.serveAll / v.seconds,
    kthread: v.kthread / v.seconds,
    dom0Busy: v.dom0Busy / v.seconds,
    dom0Idle: v.dom0Idle / v.seconds,
    dom0Steal: v.dom0Steal / v.seconds,
  };
  const x = average(sums.xenblk);
  const l = average(sums.linux);
  return { cpus: samples[0]?.cpus.length ?? 0, ...(x !== undefined ? { xenblk: x } : {}), ...(l !== undefined ? { linux: l } : {}) };
}

/** `cpuTraceNote(s)` says the summary in one line for the benchmark's notes. */
export function cpuTraceNote(s: CpuTraceSummary): string {
  const f = (x: number): string => x.toFixed(2);
  const dom0 = (p: PhaseCpu): string => `dom0 busy ${f(p.dom0Busy)}, idle ${f(p.dom0Idle)}, runnable but not running (steal) ${f(p.dom0Steal)}`;
  const parts: string[] = [];
  if (s.xenblk !== undefined) {
    const p = s.xenblk;
    parts.push(`while xenblk served (${p.seconds.toFixed(0)} s): serve's main thread ${f(p.serveMain)}, all its threads ${f(p.serveAll)}, ${dom0(p)}`);
  }
  if (s.linux !== undefined) {
    const p = s.linux;
    parts.push(`while Linux blkback served (${p.seconds.toFixed(0)} s): its thread ${f(p.kthread)}, ${dom0(p)}`);
  }
  if (parts.length === 0) return 'dom0 CPU trace: no second in which one backend alone was driven';
  return `dom0 CPU, second by second, in CPUs of its ${s.cpus}: ${parts.join('; ')}`;
}
