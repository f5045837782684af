// Starting and stopping a simulator from another process: startSim() for tests and the demo (a
// child process that also stops when its parent dies), the background daemon of `xenblk sim up`,
// and `sim down` / `sim status` against whatever daemon runs in a directory.
//
// The daemon always runs in a process of its own: attached processes talk to it with blocking
// hypercalls, so it must never share their event loop.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { HypercallClient } from './hypercall-client.ts';
import { SimPaths, defaultSimDir } from './paths.ts';
import type { SimStatus } from './daemon.ts';

/** Options of startSim. */
export interface StartSimOptions {
  /** Directory (default: defaultSimDir()). */
  readonly dir?: string;
  readonly nrFrames?: number;
  readonly nrGrants?: number;
  /** Each domain's RAM on 2 MiB pages, allocated up front (SimDaemonOptions.superpages). */
  readonly superpages?: boolean;
  /** Forward the daemon's log to our stderr. */
  readonly verbose?: boolean;
}

/** A simulator running in a child process. */
export interface SimHandle {
  readonly dir: string;
  readonly pid: number;
  /** `stop()` stops the daemon, which removes what it created. */
  stop(): Promise<void>;
}

/**
 * `daemonCommand(args)` is how to run a daemon with `args`: from the sources, the daemon entry
 * through tsx; from the bundled CLI (dist/xenblk.mjs), the CLI itself (`sim up --foreground`).
 */
function daemonCommand(args: string[]): string[] {
  const self = import.meta.url;
  if (self.endsWith('.ts')) {
    return ['--import', import.meta.resolve('tsx'), fileURLToPath(new URL('./daemon-main.ts', self)), ...args];
  }
  return [fileURLToPath(self), 'sim', 'up', '--foreground', ...args];
}

function sizeArgs(o: StartSimOptions): string[] {
  return [
    ...(o.nrFrames !== undefined ? ['--nr-frames', String(o.nrFrames)] : []),
    ...(o.nrGrants !== undefined ? ['--nr-grants', String(o.nrGrants)] : []),
    ...(o.superpages === true ? ['--superpages'] : []),
    ...(o.verbose ? ['--verbose'] : []),
  ];
}

/** Wait for the "ready" line of a daemon child, or fail with what it printed. */
function waitReady(child: ChildProcess, dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const onOut = (b: Buffer): void => {
      out += b.toString();
      if (out.includes('ready\n')) {
        cleanup();
        resolve();
      }
    };
    const onErr = (b: Buffer): void => { err += b.toString(); };
    const onExit = (code: number | null, sig: string | null): void => {
      cleanup();
      reject(new Error(`simulator daemon for ${dir} exited (${sig ?? code}) before it was ready: ${err.trim() || out.trim()}`));
    };
    const cleanup = (): void => {
      child.stdout?.off('data', onOut);
      child.stderr?.off('data', onErr);
      child.off('exit', onExit);
    };
    child.stdout?.on('data', onOut);
    child.stderr?.on('data', onErr);
    child.once('exit', onExit);
  });
}

/** `startSim(opts)` starts a simulator daemon as a child process and resolves once it serves. */
export async function startSim(opts: StartSimOptions = {}): Promise<SimHandle> {
  const dir = opts.dir ?? defaultSimDir();
  const child = spawn(process.execPath, daemonCommand(['--dir', dir, '--exit-with-stdin', ...sizeArgs(opts)]), {
    stdio: ['pipe', 'pipe', opts.verbose ? 'inherit' : 'pipe'],
  });
  await waitReady(child, dir);
  // Let our process exit without stop(): the daemon then sees its stdin close and stops itself.
  child.stderr?.resume();
  child.stdout?.resume();
  child.unref();
  (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  (child.stdout as unknown as { unref?: () => void } | null)?.unref?.();
  (child.stderr as unknown as { unref?: () => void } | null)?.unref?.();
  let stopping: Promise<void> | undefined;
  return {
    dir,
    pid: child.pid!,
    stop: () => {
      stopping ??= new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) {
          resolve();
          return;
        }
        child.ref();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      });
      return stopping;
    },
  };
}

/** `daemonPid(dir)` is the pid of the daemon serving `dir`, if one is alive. */
export function daemonPid(dir: string): number | undefined {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(new SimPaths(dir).pid, 'utf8').trim());
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

/**
 * `spawnBackgroundDaemon(dir, opts, entry)` starts a detached daemon (`xenblk sim up`) running
 * `entry` (the CLI script) with `sim up --foreground`, and resolves with its pid once it serves.
 */
export async function spawnBackgroundDaemon(dir: string, opts: StartSimOptions, execArgv: string[], entry: string): Promise<number> {
  const child = spawn(process.execPath, [...execArgv, entry, 'sim', 'up', '--foreground', '--dir', dir, ...sizeArgs(opts)], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await waitReady(child, dir);
  child.stdout?.destroy();
  child.stderr?.destroy();
  child.unref();
  return child.pid!;
}

/** `stopDaemon(dir)` stops the daemon serving `dir`: SIGTERM, then SIGKILL after `graceMs`. Whether one was running. */
export async function stopDaemon(dir: string, graceMs = 10_000): Promise<boolean> {
  const pid = daemonPid(dir);
  if (pid === undefined) return false;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
  }
  try { process.kill(pid, 'SIGKILL'); } catch { /* it just went */ }
  return true;
}

/** `readStatus(dir)` is the status of the daemon serving `dir`. */
export function readStatus(dir: string): SimStatus {
  const hc = new HypercallClient(new SimPaths(dir).ctl);
  try {
    return hc.status() as SimStatus;
  } finally {
    hc.close();
  }
}
