// Where dom0's CPU goes while each backend of the real-Xen benchmark is driven, from a `perf
// record -a -g` of dom0 (test/xen/bench/bench.sh, bench --profile) split by the CPU trace's
// windows (cpu-trace.ts). Two `perf script` outputs come from dom0, where its kallsyms resolve:
//   - every sample's `comm pid time:` line (no call chain): who ran;
//   - serve's samples with call chains (`time:` then `\t<ip> <symbol>` frames, leaf first): in
//     which system call, or fault, or in user space it was.
// Sampling is by cpu-clock: a PV guest has no PMU. A sample taken while interrupts were off is
// delivered when they come back on, so it lands in the call chain of the code that turned them
// off: shares per system call are right, the leaf symbol of such a sample is not.

/** A span of epoch seconds. */
export type Window = readonly [number, number];

/** Samples of one window set (one backend driven), by who ran. */
export interface PhaseSamples {
  readonly total: number;
  /** `xenblk serve`, all its threads (the process with the most samples named node). */
  readonly serve: number;
  /** Linux's per-ring blkback thread (comm `<domid>.xvd...`). */
  readonly blkbackThread: number;
  /** Kernel workers (the loop device's direct I/O, block completions, flushes). */
  readonly kworkers: number;
  /** The idle task. */
  readonly idle: number;
  /** Everything else (the harness's shell, xl, perf itself...). */
  readonly other: number;
}

/** Where serve's samples were while xenblk was driven. */
export interface ServeSamples {
  readonly total: number;
  readonly user: number;
  /** Inside io_submit. */
  readonly ioSubmit: number;
  /** Inside io_submit, pinning the user pages of the I/O (bio_iov_iter_get_pages: get_user_pages). */
  readonly pinning: number;
  readonly pageFaults: number;
  /** Inside any other system call. */
  readonly otherSyscalls: number;
  /** In the kernel outside any system call or fault (interrupts, softirqs). */
  readonly otherKernel: number;
}

export interface Dom0Profile {
  readonly xenblk: PhaseSamples;
  readonly linux: PhaseSamples;
  readonly serve: ServeSamples;
}

const HEADER = /^\s*(\S.*?)\s+(\d+)\s+(\d+\.\d+):\s*$/;
const SERVE_HEADER = /^\s*(\d+\.\d+):\s*$/;
const FRAME = /^\s+([0-9a-f]+)\s+(\S+)/;
/** x86-64 kernel addresses are the upper half of the address space. */
const KERNEL_IP = 0xffff800000000000n;

function within(t: number, windows: readonly Window[]): boolean {
  for (const [a, b] of windows) if (t >= a && t < b) return true;
  return false;
}

function noPhase(): { -readonly [K in keyof PhaseSamples]: number } {
  return { total: 0, serve: 0, blkbackThread: 0, kworkers: 0, idle: 0, other: 0 };
}

/** `groupOf(comm, pid, servePid)` is who a sample's task is, for PhaseSamples. */
function groupOf(comm: string, pid: number, servePid: number): Exclude<keyof PhaseSamples, 'total'> {
  if (pid === servePid) return 'serve';
  if (/^(blkback\.)?\d+\.xvd/.test(comm)) return 'blkbackThread';
  if (comm.startsWith('kworker/')) return 'kworkers';
  if (comm === 'swapper' || comm.startsWith('swapper/')) return 'idle';
  return 'other';
}

/** `classifyChain(frames)` is where one serve sample was; `frames` are [ip, symbol], leaf first. */
export function classifyChain(frames: readonly (readonly [string, string])[]): Exclude<keyof ServeSamples, 'total'> {
  const leaf = frames[0];
  if (leaf === undefined || BigInt(`0x${leaf[0]}`) < KERNEL_IP) return 'user';
  for (const [, sym] of frames) {
    const m = /^__(?:x64|ia32)_sys_(\w+)$/.exec(sym);
    if (m !== null) {
      if (m[1] !== 'io_submit') return 'otherSyscalls';
      return frames.some(([, s]) => s === 'bio_iov_iter_get_pages') ? 'pinning' : 'ioSubmit';
    }
    if (sym === 'asm_exc_page_fault' || sym === 'exc_page_fault') return 'pageFaults';
  }
  return 'otherKernel';
}

/**
 * `summarizeDom0Profile(comms, serve, windows)` counts the samples of `comms` (every sample's
 * `comm pid time:` line) in each backend's windows, and classifies `serve` (serve's samples with
 * call chains) in xenblk's windows.
 */
export function summarizeDom0Profile(comms: string, serve: string, windows: { readonly xenblk: readonly Window[]; readonly linux: readonly Window[] }): Dom0Profile {
  const x = noPhase();
  const l = noPhase();
  const tasks = comms.split('\n').flatMap((line) => {
    const m = HEADER.exec(line);
    return m === null ? [] : [{ comm: m[1]!, pid: Number(m[2]), t: Number(m[3]) }];
  });
  // serve is the process whose threads are named node (its V8 threads have names of their own)
  // with the most samples: `xenblk stats` and the like are node too, but brief.
  const nodeSamples = new Map<number, number>();
  for (const k of tasks) if (k.comm === 'node') nodeSamples.set(k.pid, (nodeSamples.get(k.pid) ?? 0) + 1);
  let servePid = -1;
  for (const [pid, n] of nodeSamples) if (n > (nodeSamples.get(servePid) ?? 0)) servePid = pid;
  for (const k of tasks) {
    const p = within(k.t, windows.xenblk) ? x : within(k.t, windows.linux) ? l : undefined;
    if (p === undefined) continue;
    p.total++;
    p[groupOf(k.comm, k.pid, servePid)]++;
  }
  const s = { total: 0, user: 0, ioSubmit: 0, pinning: 0, pageFaults: 0, otherSyscalls: 0, otherKernel: 0 };
  let t: number | undefined;
  let frames: [string, string][] = [];
  const flush = (): void => {
    if (t !== undefined && within(t, windows.xenblk)) {
      s.total++;
      const c = classifyChain(frames);
      s[c]++;
      // Pinning is part of io_submit: counted in both.
      if (c === 'pinning') s.ioSubmit++;
    }
    t = undefined;
    frames = [];
  };
  for (const line of serve.split('\n')) {
    const h = SERVE_HEADER.exec(line);
    if (h !== null) {
      flush();
      t = Number(h[1]);
      continue;
    }
    const f = FRAME.exec(line);
    if (f !== null && t !== undefined) frames.push([f[1]!, f[2]!]);
  }
  flush();
  return { xenblk: x, linux: l, serve: s };
}

/** `dom0ProfileNote(p)` says the profile in one line for the benchmark's notes. */
export function dom0ProfileNote(p: Dom0Profile): string {
  const pct = (n: number, of: number): string => (of === 0 ? '-' : `${Math.round((100 * n) / of)}%`);
  const phase = (name: string, q: PhaseSamples): string =>
    `while ${name} served (${q.total} samples): serve ${pct(q.serve, q.total)}, Linux blkback thread ${pct(q.blkbackThread, q.total)}, ` +
    `kernel workers ${pct(q.kworkers, q.total)}, idle ${pct(q.idle, q.total)}, other tasks ${pct(q.other, q.total)}`;
  const s = p.serve;
  return `dom0 profile (perf, cpu-clock, all CPUs): ${phase('xenblk', p.xenblk)}; ${phase('Linux blkback', p.linux)}; ` +
    `serve's own samples while it served (${s.total}): user space ${pct(s.user, s.total)}, io_submit ${pct(s.ioSubmit, s.total)} ` +
    `(of which pinning the mapped grant pages, bio_iov_iter_get_pages: ${pct(s.pinning, s.total)}), page faults ${pct(s.pageFaults, s.total)}, ` +
    `other system calls ${pct(s.otherSyscalls, s.total)}, other kernel work ${pct(s.otherKernel, s.total)}`;
}
