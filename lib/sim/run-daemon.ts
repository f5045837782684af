// Running the simulator daemon as the main activity of a process (`xenblk sim up --foreground`,
// or the child process startSim spawns) until SIGTERM/SIGINT, or, when asked, until its parent
// goes away (end of stdin), so a crashed test never leaves a daemon behind.
import process from 'node:process';
import { SimDaemon } from './daemon.ts';

/** Options of runDaemon. */
export interface RunDaemonOptions {
  readonly dir: string;
  readonly nrFrames?: number;
  readonly nrGrants?: number;
  /** Each domain's RAM on 2 MiB pages (SimDaemonOptions.superpages). */
  readonly superpages?: boolean;
  /** Log domain and process events to stderr. */
  readonly verbose?: boolean;
  /** Stop when stdin reaches end of file (the parent died or closed it). */
  readonly exitWithStdin?: boolean;
  /** Called once the daemon accepts connections. */
  readonly onReady?: (d: SimDaemon) => void;
}

/** `runDaemon(opts)` serves until told to stop, then cleans up; resolves to an exit code. */
export async function runDaemon(opts: RunDaemonOptions): Promise<number> {
  const d = await SimDaemon.start({
    dir: opts.dir,
    ...(opts.nrFrames !== undefined ? { nrFrames: opts.nrFrames } : {}),
    ...(opts.nrGrants !== undefined ? { nrGrants: opts.nrGrants } : {}),
    ...(opts.superpages === true ? { superpages: true } : {}),
    ...(opts.verbose ? { log: (l: string) => process.stderr.write(`xenblk sim: ${l}\n`) } : {}),
  });
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (why: string): void => {
      if (stopping) return;
      stopping = true;
      if (opts.verbose) process.stderr.write(`xenblk sim: stopping (${why})\n`);
      if (opts.exitWithStdin) process.stdin.destroy();
      d.stop().then(() => resolve(0), (e: unknown) => {
        process.stderr.write(`xenblk sim: stop failed: ${String(e)}\n`);
        resolve(1);
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    if (opts.exitWithStdin) {
      process.stdin.on('data', () => {});
      process.stdin.once('end', () => stop('parent gone'));
      process.stdin.once('close', () => stop('parent gone'));
      process.stdin.resume();
    }
    opts.onReady?.(d);
  });
}
