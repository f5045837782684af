// Running the host commands the harness is built from (apt-get, debootstrap, mkfs.ext4, cpio...).
// Every failure names the command and carries the tail of its output, so a broken image build
// says which step broke and why.
import { spawnSync } from 'node:child_process';

/** `HarnessError` is a failure of the real-Xen harness itself (not of a test), with its cause. */
export class HarnessError extends Error {
  constructor(message: string, readonly detail?: string) {
    super(detail === undefined ? message : `${message}\n${detail}`);
    this.name = 'HarnessError';
  }
}

export interface RunOptions {
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Bytes fed to the command's standard input. */
  readonly input?: string | Uint8Array;
  /** Give up after this many milliseconds (default 20 minutes). */
  readonly timeoutMs?: number;
}

/** `tail(text, n)` is the last `n` lines of `text`. */
function tail(text: string, n: number): string {
  const lines = text.trimEnd().split('\n');
  return lines.slice(-n).join('\n');
}

/** `run(cmd, args)` is the standard output of `cmd args`; HarnessError when it cannot start or exits non-zero. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): string {
  const r = spawnSync(cmd, args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    input: opts.input,
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
    timeout: opts.timeoutMs ?? 20 * 60_000,
  });
  const shown = [cmd, ...args].join(' ');
  if (r.error !== undefined) throw new HarnessError(`cannot run '${shown}': ${r.error.message}`);
  if (r.status !== 0) {
    const why = r.signal !== null ? `killed by ${r.signal}` : `exit ${r.status}`;
    throw new HarnessError(`'${shown}' failed (${why})`, tail(`${r.stdout}\n${r.stderr}`, 25));
  }
  return r.stdout;
}

/** `succeeds(cmd, args)` is whether `cmd args` runs and exits 0 (output discarded). */
export function succeeds(cmd: string, args: readonly string[]): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore', timeout: 60_000 });
  return r.error === undefined && r.status === 0;
}

/** `which(name)` is the absolute path of the command `name` on PATH, or undefined. */
export function which(name: string): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', name], { encoding: 'utf8' });
  const path = r.stdout.trim();
  return r.status === 0 && path.startsWith('/') ? path : undefined;
}
