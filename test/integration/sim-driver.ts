// Parent side of sim-child.ts: spawn a simulated domain process and drive it command by command.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startSim, type SimHandle } from '../../lib/sim/start.ts';

/** What a child reports when a command failed. */
export interface ChildError {
  readonly name?: string;
  readonly code?: string;
  readonly message?: string;
  readonly ref?: number;
  readonly domid?: number;
  readonly port?: number;
}

/** `ChildFailure` is a command that failed in the child; `error` is what it threw. */
export class ChildFailure extends Error {
  constructor(readonly error: ChildError) {
    super(`child: ${error.name}: ${error.message}`);
  }
}

const CHILD = fileURLToPath(new URL('./sim-child.ts', import.meta.url));

/** A simulated domain process. */
export class SimChild {
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  private stderr = '';

  private constructor(readonly proc: ChildProcess) {
    const rl = readline.createInterface({ input: proc.stdout! });
    rl.on('line', (line) => {
      const r = JSON.parse(line) as { id: number; ok?: unknown; error?: ChildError };
      const p = this.pending.get(r.id);
      if (p === undefined) return;
      this.pending.delete(r.id);
      if (r.error !== undefined) p.reject(new ChildFailure(r.error));
      else p.resolve(r.ok);
    });
    proc.stderr!.on('data', (b: Buffer) => { this.stderr += b.toString(); });
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        for (const p of this.pending.values()) p.reject(new Error(`child exited (${signal ?? code}): ${this.stderr}`));
        this.pending.clear();
        resolve({ code, signal });
      });
    });
  }

  /** `SimChild.spawn()` starts a child process (not yet attached), with core dumps off (some tests crash it on purpose). */
  static spawn(env?: NodeJS.ProcessEnv): SimChild {
    return new SimChild(spawn('/bin/sh', ['-c', 'ulimit -c 0 && exec "$0" "$@"', process.execPath, '--import', 'tsx', CHILD], {
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(env ? { env } : {}),
    }));
  }

  /** The child's pid. */
  get pid(): number {
    return this.proc.pid!;
  }

  /** `call(op, args)` runs one command in the child; rejects with ChildFailure when it threw. */
  call<T = Record<string, unknown>>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.proc.stdin!.write(`${JSON.stringify({ id, op, ...args })}\n`);
    });
  }

  /** `failure(op, args)` is the error a command is expected to fail with. */
  async failure(op: string, args: Record<string, unknown> = {}): Promise<ChildError> {
    try {
      await this.call(op, args);
    } catch (e) {
      if (e instanceof ChildFailure) return e.error;
      throw e;
    }
    throw new Error(`${op} ${JSON.stringify(args)} succeeded but should have failed`);
  }

  /** `kill(signal)` signals the child and waits for it to exit. */
  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    await this.exited;
  }
}

/** A simulator of the test's own and a factory of domain processes, all stopped when the test ends. */
export interface SimWithChildren {
  readonly dir: string;
  readonly sim: SimHandle;
  child(): SimChild;
}

/** `simWithChildren(t, tag)` starts a simulator in a fresh directory; `child()` spawns a domain process in it. */
export async function simWithChildren(t: { after: (fn: () => Promise<void> | void) => void }, tag: string): Promise<SimWithChildren> {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), `xenblk-${tag}-`));
  const sim = await startSim({ dir });
  const children: SimChild[] = [];
  t.after(async () => {
    for (const c of children) await c.kill('SIGKILL');
    await sim.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, sim, child: () => { const c = SimChild.spawn(); children.push(c); return c; } };
}

/** `pollUntil(f, what)` polls `f` every 10 ms; it fails after ~30 s (a hang bound, not a measurement). */
export async function pollUntil(f: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; ; i++) {
    if (await f()) return;
    if (i > 3000) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
