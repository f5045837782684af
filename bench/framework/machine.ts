// The machine a run was measured on, recorded beside the figures (BENCHMARKS.md, --json).
import fs from 'node:fs';
import os from 'node:os';
import { execFileSync } from 'node:child_process';

/** What the figures depend on. */
export interface MachineInfo {
  readonly nproc: number;
  readonly cpuModel: string;
  /** MemAvailable and MemTotal from /proc/meminfo, MiB. */
  readonly memAvailableMiB: number;
  readonly memTotalMiB: number;
  readonly kernel: string;
  readonly node: string;
  /** 1-minute load average when the run started: other work sharing the cores. */
  readonly loadAverage: number;
  readonly gcc: string | null;
}

function meminfo(key: string): number {
  try {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    return m === null ? NaN : Math.round(Number(m[1]) / 1024);
  } catch {
    return NaN;
  }
}

/** `machineInfo()` describes this machine now. */
export function machineInfo(): MachineInfo {
  let gcc: string | null = null;
  try {
    gcc = execFileSync('gcc', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0]!;
  } catch {
    gcc = null;
  }
  return {
    nproc: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memAvailableMiB: meminfo('MemAvailable'),
    memTotalMiB: meminfo('MemTotal'),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    loadAverage: Math.round(os.loadavg()[0]! * 100) / 100,
    gcc,
  };
}

/** `filesystemOf(path)` is the mount (device, mount point, type) holding `path`, from /proc/mounts. */
export function filesystemOf(path: string): { device: string; mountPoint: string; type: string } {
  const real = fs.realpathSync(path);
  let best = { device: '?', mountPoint: '/', type: '?' };
  try {
    for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n')) {
      const [device, mp, type] = line.split(' ');
      if (device === undefined || mp === undefined || type === undefined) continue;
      const m = mp.replace(/\\040/g, ' ');
      if ((real === m || real.startsWith(m.endsWith('/') ? m : `${m}/`)) && m.length >= best.mountPoint.length) best = { device, mountPoint: m, type };
    }
  } catch {
    // no /proc/mounts: unknown
  }
  return best;
}
