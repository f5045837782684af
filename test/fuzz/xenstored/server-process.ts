// Runs server-child.ts as a separate process and watches it: whether it is still alive, what
// it wrote to stderr (internal errors are findings), and its memory and store size on request.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServerStats } from './server-child.ts';

export type { ServerStats } from './server-child.ts';

const CHILD = fileURLToPath(new URL('./server-child.ts', import.meta.url));
const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const STDERR_KEEP = 64 * 1024;

/** `ServerProcess` is a spawned xenstored under fuzz. */
export class ServerProcess {
  private stderrTail = '';
  private pendingStats: ((s: ServerStats) => void)[] = [];
  /** Lines of stderr that report a handler bug ("internal error: ..."). */
  readonly internalErrors: string[] = [];
  /** How many clients the server reported dropping (framing errors, unread output...). */
  dropped = 0;
  /** Set once the process has exited: its code or signal. */
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private stopping = false;

  private constructor(private readonly child: ChildProcess, readonly dir: string) {
    child.stderr!.setEncoding('utf8');
    let partial = '';
    child.stderr!.on('data', (s: string) => {
      this.stderrTail = (this.stderrTail + s).slice(-STDERR_KEEP);
      const lines = (partial + s).split('\n');
      partial = lines.pop()!;
      for (const l of lines) {
        if (l.includes('internal error')) this.internalErrors.push(l);
        if (/xenstored: dropping /.test(l)) this.dropped++;
      }
    });
    child.on('message', (m: { stats?: ServerStats }) => {
      if (m.stats) this.pendingStats.shift()?.(m.stats);
    });
    child.on('exit', (code, signal) => {
      this.exit = { code, signal };
    });
  }

  /** `start(dir, domids)` spawns the server listening on `<dir>/d<domid>.sock` for each domid. */
  static async start(dir: string, domids: readonly number[]): Promise<ServerProcess> {
    const child = spawn(process.execPath, ['--import', 'tsx', '--expose-gc', CHILD, dir, domids.join(',')], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    const sp = new ServerProcess(child, dir);
    await new Promise<void>((resolve, reject) => {
      const onExit = (code: number | null, signal: string | null): void =>
        reject(new Error(`xenstored child exited before ready (code ${code}, signal ${signal}):\n${sp.stderrTail}`));
      child.once('exit', onExit);
      child.once('error', reject);
      child.on('message', (m: { ready?: boolean }) => {
        if (m.ready) {
          child.off('exit', onExit);
          resolve();
        }
      });
    });
    return sp;
  }

  /** `socket(domid)` is the path of the socket acting as `domid`. */
  socket(domid: number): string {
    return join(this.dir, `d${domid}.sock`);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** `alive` is whether the process is still running (and was not stopped by us). */
  get alive(): boolean {
    return this.exit === undefined;
  }

  /** `stderr` is the last 64 KiB the server wrote to stderr. */
  get stderr(): string {
    return this.stderrTail;
  }

  /** `stats(timeoutMs)` is the server's memory (after a full GC) and store size, or undefined if it does not answer. */
  stats(timeoutMs = 20_000): Promise<ServerStats | undefined> {
    if (!this.alive || !this.child.connected) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const i = this.pendingStats.indexOf(done);
        if (i >= 0) this.pendingStats.splice(i, 1);
        resolve(undefined);
      }, timeoutMs);
      const done = (s: ServerStats): void => {
        clearTimeout(timer);
        resolve(s);
      };
      this.pendingStats.push(done);
      this.child.send({ cmd: 'stats' });
    });
  }

  /** `stop()` asks the server to close and exit, and kills it if it does not within a few seconds. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.exit !== undefined) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    if (this.child.connected) this.child.send({ cmd: 'stop' });
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
}
