// Benchmark peers run in processes of their own (a frontend is a guest, a backend is dom0): a
// TypeScript worker is forked with an IPC channel and answers named commands; a C peer speaks
// lines on stdin/stdout. Nothing crosses the IPC channel while a sample is being measured.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import inspector from 'node:inspector';
import readline from 'node:readline';

/** Options of a forked worker. */
export interface WorkerOptions {
  readonly env?: NodeJS.ProcessEnv;
  /** Extra node options, e.g. `--expose-gc`. */
  readonly nodeArgs?: readonly string[];
}

interface Pending {
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: Error) => void;
}

interface Reply {
  readonly id: number;
  readonly ok: boolean;
  readonly value?: unknown;
  readonly error?: string;
}

/** A forked TypeScript worker (parent side). */
export class Worker {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private exited: Promise<void>;
  private stderr = '';

  private constructor(readonly name: string, private readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, sig) => {
        const why = new Error(`worker ${name} exited (${sig ?? code})${this.stderr ? `: ${this.stderr.trim().slice(-2000)}` : ''}`);
        for (const p of this.pending.values()) p.reject(why);
        this.pending.clear();
        resolve();
      });
    });
    child.on('message', (m: Reply) => {
      const p = this.pending.get(m.id);
      if (p === undefined) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.value);
      else p.reject(new Error(`worker ${name}: ${m.error ?? 'failed'}`));
    });
    // A worker's output never reaches our stdout (--json owns it): kept for error messages,
    // echoed on stderr with XENBLK_BENCH_VERBOSE=1.
    const keep = (b: Buffer): void => {
      this.stderr = (this.stderr + b.toString()).slice(-8000);
      if (process.env.XENBLK_BENCH_VERBOSE) process.stderr.write(`[${name}] ${b.toString()}`);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
  }

  /** `Worker.start(name, script, args, opts)` forks `script` (a .ts file run through tsx). */
  static start(name: string, script: string, args: string[] = [], opts: WorkerOptions = {}): Worker {
    const execArgv = ['--import', import.meta.resolve('tsx'), ...(opts.nodeArgs ?? [])];
    const child = fork(script, args, { execArgv, stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env: opts.env ?? process.env });
    return new Worker(name, child);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** `w.call(cmd, arg)` runs command `cmd` in the worker and is its result. */
  call<T>(cmd: string, arg?: unknown): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      if (!this.child.connected) {
        this.pending.delete(id);
        reject(new Error(`worker ${this.name} is gone${this.stderr ? `: ${this.stderr.trim().slice(-2000)}` : ''}`));
        return;
      }
      this.child.send({ id, cmd, arg });
    });
  }

  /** `w.profileStart()` starts the V8 CPU profiler in the worker (what node --cpu-prof records, without the start-up). */
  async profileStart(): Promise<void> {
    await this.call('profile-start');
  }

  /** `w.profileStop(file)` stops the profiler and writes the profile (.cpuprofile, Chrome DevTools format) to `file`. */
  async profileStop(file: string): Promise<void> {
    await this.call('profile-stop', { file });
  }

  /** `w.stop()` asks the worker to clean up and exit; kills it if it has not after `graceMs`. */
  async stop(graceMs = 15_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      if (this.child.connected) await this.call('exit').catch(() => undefined);
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** A command handler of a worker (child side). */
export type Handler = (arg: never) => unknown;

let session: inspector.Session | undefined;

function post(method: string, params?: object): Promise<unknown> {
  return new Promise((resolve, reject) => {
    session!.post(method, params, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** The built-in commands: the CPU profiler around the measured part of a run, and the CPU time used so far. */
const builtins: Record<string, Handler> = {
  /** CPU time (user + system, all threads) this process has used, in microseconds. */
  'cpu-us': () => {
    const u = process.cpuUsage();
    return u.user + u.system;
  },
  'profile-start': async () => {
    session ??= new inspector.Session();
    session.connect();
    await post('Profiler.enable');
    await post('Profiler.setSamplingInterval', { interval: 200 });
    await post('Profiler.start');
    return {};
  },
  'profile-stop': async (a: { file: string }) => {
    if (session === undefined) throw new Error('profile-stop without profile-start');
    const { profile } = (await post('Profiler.stop')) as { profile: unknown };
    session.disconnect();
    fs.writeFileSync(a.file, JSON.stringify(profile));
    return {};
  },
};

/**
 * `serveWorker(handlers, cleanup)` answers the parent's commands (child side). `exit` runs
 * `cleanup` then exits; losing the parent does the same.
 */
export function serveWorker(own: Record<string, Handler>, cleanup: () => Promise<void> = async () => {}): void {
  const handlers = { ...builtins, ...own };
  let leaving = false;
  const leave = async (code: number): Promise<void> => {
    if (leaving) return;
    leaving = true;
    try {
      await cleanup();
    } catch (e) {
      process.stderr.write(`cleanup: ${e instanceof Error ? e.stack : String(e)}\n`);
      code = 1;
    }
    process.exit(code);
  };
  process.on('message', (m: { id: number; cmd: string; arg: unknown }) => {
    if (m.cmd === 'exit') {
      process.send?.({ id: m.id, ok: true });
      void leave(0);
      return;
    }
    const h = handlers[m.cmd];
    if (h === undefined) {
      process.send?.({ id: m.id, ok: false, error: `unknown command ${m.cmd}` });
      return;
    }
    Promise.resolve()
      .then(() => (h as (a: unknown) => unknown)(m.arg))
      .then(
        (value) => process.send?.({ id: m.id, ok: true, value }),
        (e: unknown) => process.send?.({ id: m.id, ok: false, error: e instanceof Error ? (e.stack ?? e.message) : String(e) }),
      );
  });
  process.on('disconnect', () => void leave(1));
}

/** A C peer that speaks lines on stdin/stdout. */
export class LineProcess {
  private readonly queue: string[] = [];
  private readonly waiters: ((line: string | null) => void)[] = [];
  private ended = false;
  private stderr = '';
  private readonly exited: Promise<void>;

  private constructor(readonly name: string, private readonly child: ChildProcess) {
    const rl = readline.createInterface({ input: child.stdout! });
    rl.on('line', (l) => {
      const w = this.waiters.shift();
      if (w !== undefined) w(l);
      else this.queue.push(l);
    });
    child.stderr?.on('data', (b: Buffer) => { this.stderr = (this.stderr + b.toString()).slice(-4000); });
    this.exited = new Promise((resolve) => {
      child.once('exit', () => {
        this.ended = true;
        for (const w of this.waiters.splice(0)) w(null);
        resolve();
      });
    });
  }

  /** `LineProcess.spawn(name, path, args)` starts the program. */
  static spawn(name: string, path: string, args: string[]): LineProcess {
    return new LineProcess(name, spawn(path, args, { stdio: ['pipe', 'pipe', 'pipe'] }));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** `p.line()` is the next line printed; rejects if the program exits first. */
  async line(): Promise<string> {
    const l = this.queue.shift() ?? (this.ended ? null : await new Promise<string | null>((r) => this.waiters.push(r)));
    if (l === null) throw new Error(`${this.name} exited: ${this.stderr.trim() || `code ${this.child.exitCode}`}`);
    return l;
  }

  /** `p.send(line)` writes one line to its stdin. */
  send(line: string): void {
    this.child.stdin!.write(`${line}\n`);
  }

  /** `p.stop()` closes its stdin (and sends `quit`), killing it if it has not exited after `graceMs`. */
  async stop(graceMs = 5_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      this.child.stdin!.end('quit\n');
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}
