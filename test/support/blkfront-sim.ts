// Integration set-up for blkfront on the simulator: every actor a process of its own. The
// simulator daemon (startSim), the backend (`xenblk serve`, exactly as a user runs it), and the
// guest: the test process itself attached as domain 1, or a child running the CLI or an example.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { startSim } from '../../lib/sim/start.ts';
import type { SimHandle } from '../../lib/sim/start.ts';
import { attachSim } from '../../lib/sim/attach.ts';
import type { SimHost } from '../../lib/sim/attach.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(ROOT, 'cli/main.ts');
export const GUEST = 1;

/** A simulator in a fresh directory, and the test process attached to it as domain 1. */
export interface SimWorld {
  readonly dir: string;
  readonly sim: SimHandle;
  readonly host: SimHost;
  readonly image: string;
}

/** `simWorld(t, imageBytes)` starts a simulator, attaches as the guest and creates a sparse image. */
export async function simWorld(t: TestContext, imageBytes: number): Promise<SimWorld> {
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, 'xenblk-bf-'));
  const sim = await startSim({ dir });
  let host: SimHost;
  try {
    host = await attachSim({ dir, domid: GUEST });
  } catch (e) {
    await sim.stop();
    throw e;
  }
  // The image lives outside tmpfs when possible, so the backend can use O_DIRECT and punch holes.
  const imgDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-bf-img-'));
  const image = path.join(imgDir, 'disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, imageBytes);
  t.after(async () => {
    await host.close().catch(() => {});
    await sim.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(imgDir, { recursive: true, force: true });
  });
  return { dir, sim, host, image };
}

/** A child `xenblk` process with its output collected. */
export interface Child {
  readonly proc: ChildProcess;
  readonly output: () => string;
  /** Resolves with the exit code (128 + n for a signal). */
  readonly exited: Promise<number>;
}

/** `xenblk(args, env)` runs the CLI from the sources, as `node --import tsx cli/main.ts ...`. */
export function xenblk(args: string[], opts: { stdin?: Buffer; env?: NodeJS.ProcessEnv } = {}): Child {
  return run(process.execPath, ['--import', 'tsx', CLI, ...args], opts);
}

/** `node(script, args)` runs a TypeScript file from the sources through tsx. */
export function node(script: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Child {
  return run(process.execPath, ['--import', 'tsx', script, ...args], opts);
}

function run(cmd: string, args: string[], opts: { stdin?: Buffer; env?: NodeJS.ProcessEnv }): Child {
  const proc = spawn(cmd, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => { out += b.toString('latin1'); });
  proc.stderr!.on('data', (b: Buffer) => { out += b.toString('latin1'); });
  if (opts.stdin !== undefined) proc.stdin!.end(opts.stdin);
  else proc.stdin!.end();
  const exited = new Promise<number>((r) => proc.once('exit', (code, sig) => r(code ?? (sig ? 128 : 1))));
  return { proc, output: () => out, exited };
}

/** `serve(w, extra)` starts `xenblk serve IMAGE --domid 1 --vdev xvdb --sim DIR` and stops it at the end of the test. */
export function serve(t: TestContext, w: SimWorld, extra: string[] = [], image = w.image): Child {
  const c = xenblk(['serve', image, '--domid', String(GUEST), '--vdev', 'xvdb', '--sim', w.dir, ...extra]);
  t.after(async () => {
    if (c.proc.exitCode === null && c.proc.signalCode === null) {
      c.proc.kill('SIGTERM');
      const timer = setTimeout(() => c.proc.kill('SIGKILL'), 15_000);
      await c.exited;
      clearTimeout(timer);
    }
  });
  return c;
}

/** `stopServe(c)` stops a backend as an operator does (SIGTERM: it unplugs the disk) and checks it exited cleanly. */
export async function stopServe(c: Child): Promise<void> {
  c.proc.kill('SIGTERM');
  const code = await c.exited;
  assert.equal(code, 0, `xenblk serve exited with ${code}:\n${c.output()}`);
}

/**
 * `assertSimReleased(host)` waits (briefly: the backend acknowledges Closed just after it
 * unmapped) until the guest domain grants nothing and binds no port, and no process of any
 * domain maps a page of it.
 */
export async function assertSimReleased(host: SimHost, what = 'after disconnect'): Promise<void> {
  const deadline = Date.now() + 5000;
  let last = '';
  for (;;) {
    const st = host.status();
    const g = st.domains.find((d) => d.domid === GUEST);
    const mapped = st.domains.flatMap((d) => d.processes).reduce((n, p) => n + p.mappedPages, 0);
    const ports = st.domains.reduce((n, d) => n + d.ports.length, 0);
    last = JSON.stringify({ guestGranted: g?.granted, guestGrantsMapped: g?.grantsMapped, mappedPages: mapped, ports });
    if ((g === undefined || (g.granted === 0 && g.grantsMapped === 0)) && mapped === 0 && ports === 0) return;
    if (Date.now() > deadline) assert.fail(`resources still held ${what}: ${last}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** `randomBytes(n, seed)` is deterministic pseudo-random data. */
export function randomBytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = (Math.imul(seed + 1, 2654435761) >>> 0) || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b[i] = x;
  }
  return b;
}

/** `fileBytes(file, offset, length)` reads part of a backing file. */
export function fileBytes(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(length);
    fs.readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}
