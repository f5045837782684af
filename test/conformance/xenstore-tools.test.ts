// Proof 1: Xen's own command-line tools (Debian xenstore-utils: xenstore-write, -read, -ls,
// -list, -exists, -rm, -chmod, -watch), pointed at our daemon with XENSTORED_PATH, behave
// exactly as they do against Xen's C xenstored: the same script runs against
// `xenblk xenstored --socket PATH --foreground` (a separate process) and against the C
// daemon, and every command's exit status, stdout and stderr must be identical.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startXenXenstored, xenstoreTool } from './xenstore-harness.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

interface Result {
  cmd: string;
  code: number | null;
  stdout: string;
  stderr: string;
}

function tool(socket: string, args: string[]): Promise<Result> {
  const [name, ...rest] = args;
  return new Promise((resolve) => {
    execFile(xenstoreTool(name!), rest, { env: { ...process.env, XENSTORED_PATH: socket }, timeout: 10000 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number }).code ?? null) : 0;
      resolve({ cmd: args.join(' '), code: typeof code === 'number' ? code : null, stdout, stderr: stderr.replaceAll(socket, '<socket>') });
    });
  });
}

/** Runs xenstore-watch in the background until it has seen `n` events. */
function watcher(socket: string, args: string[]): { done: Promise<Result>; started: Promise<void> } {
  const child = spawn(xenstoreTool('xenstore-watch'), args, { env: { ...process.env, XENSTORED_PATH: socket } });
  let stdout = '';
  let stderr = '';
  let started!: () => void;
  const startedP = new Promise<void>((r) => (started = r));
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    started();
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
  const done = new Promise<Result>((resolve) => child.on('exit', (code) => {
    clearTimeout(timer);
    started();
    resolve({ cmd: `xenstore-watch ${args.join(' ')}`, code, stdout, stderr });
  }));
  return { done, started: startedP };
}

/** The script: what a toolstack and an administrator do with the tools. */
async function script(socket: string): Promise<Result[]> {
  const out: Result[] = [];
  const t = async (...args: string[]): Promise<void> => {
    out.push(await tool(socket, args));
  };
  await t('xenstore-write', '/vm/1/name', 'guest1', '/vm/1/uuid', '00000000-0000-0000-0000-000000000001');
  await t('xenstore-read', '/vm/1/name', '/vm/1/uuid');
  await t('xenstore-read', '/vm/1/missing');
  await t('xenstore-exists', '/vm/1');
  await t('xenstore-exists', '/vm/2');
  await t('xenstore-write', '/local/domain/3/device/vbd/51712/state', '1', '/local/domain/0/backend/vbd/3/51712/state', '2');
  await t('xenstore-list', '/local/domain/3/device/vbd');
  await t('xenstore-ls', '/local');
  await t('xenstore-ls', '-f', '/vm');
  await t('xenstore-chmod', '/local/domain/3', 'n3', 'r0');
  await t('xenstore-chmod', '-r', '/local/domain/0/backend', 'n0', 'r3');
  await t('xenstore-ls', '-p', '/');
  await t('xenstore-ls', '-p', '/local/domain/3');
  await t('xenstore-chmod', '/vm/1', 'x9');
  const w = watcher(socket, ['-n', '3', '/vm']);
  await w.started; // the initial event is printed: the watch is registered
  await t('xenstore-write', '/vm/1/name', 'renamed');
  await t('xenstore-rm', '/vm/1/uuid');
  out.push(await w.done);
  await t('xenstore-rm', '/vm/1/uuid');
  await t('xenstore-rm', '/vm/nope/deeper');
  await t('xenstore-rm', '-t', '/local/domain/3/device/vbd/51712/state');
  await t('xenstore-ls', '/local/domain/3');
  await t('xenstore-write', '/vm/1//bad', 'x');
  await t('xenstore-rm', '/vm');
  await t('xenstore-ls', '/');
  return out;
}

function waitForSocket(p: string, child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let tries = 0;
    const attempt = (): void => {
      if (child.exitCode !== null) return reject(new Error(`xenblk xenstored exited with ${child.exitCode}`));
      const s = net.connect(p);
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (++tries > 400) reject(new Error(`nothing listens on ${p}`));
        else setTimeout(attempt, 25);
      });
    };
    attempt();
  });
}

function xenblk(args: string[]): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'cli/main.ts'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
}

describe("Xen's xenstore-utils against xenblk xenstored", () => {
  it('give the same results as against the C xenstored', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-tools-'));
    const sock = path.join(dir, 'socket');
    const daemon = xenblk(['xenstored', '--socket', sock, '--foreground']);
    let daemonErr = '';
    daemon.stderr!.on('data', (d: Buffer) => (daemonErr += d.toString()));
    t.after(() => {
      daemon.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    });
    await waitForSocket(sock, daemon);
    const ours = await script(sock);

    const xen = await startXenXenstored();
    let reference: Result[];
    try {
      reference = await script(xen.socketPath);
    } finally {
      await xen.stop();
    }

    assert.equal(ours.length, reference.length);
    for (let i = 0; i < ours.length; i++) assert.deepEqual(ours[i], reference[i], `command ${i}: ${reference[i]!.cmd}`);
    // The script did exercise something: reads returned values, errors were reported.
    assert.equal(ours[1]!.stdout, 'guest1\n00000000-0000-0000-0000-000000000001\n');
    assert.notEqual(ours[2]!.code, 0);
    assert.match(ours.find((r) => r.cmd.startsWith('xenstore-watch'))!.stdout, /^\/vm\n\/vm\/1\/name\n\/vm\/1\/uuid\n$/);

    // Foreground mode: SIGTERM stops it cleanly and removes the pid file.
    assert.ok(fs.existsSync(`${sock}.pid`));
    const exited = new Promise<number | null>((r) => daemon.once('exit', (code) => r(code)));
    daemon.kill('SIGTERM');
    assert.equal(await exited, 0, daemonErr);
    assert.equal(fs.existsSync(`${sock}.pid`), false);
  });

  it('daemonizes without --foreground and leaves a pid file', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-tools-'));
    const sock = path.join(dir, 'socket');
    const pidFile = path.join(dir, 'xenstored.pid');
    let pid: number | undefined;
    t.after(() => {
      if (pid !== undefined) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const cli = xenblk(['xenstored', '--socket', sock, '--pid-file', pidFile]);
    let stdout = '';
    cli.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    const code = await new Promise<number | null>((r) => cli.once('exit', (c) => r(c)));
    assert.equal(code, 0);
    pid = Number(fs.readFileSync(pidFile, 'utf8'));
    assert.equal(Number(stdout.trim()), pid);
    assert.equal((await tool(sock, ['xenstore-write', '/d', 'daemon'])).code, 0);
    assert.equal((await tool(sock, ['xenstore-read', '/d'])).stdout, 'daemon\n');
    process.kill(pid, 'SIGTERM');
    for (let i = 0; i < 200 && fs.existsSync(pidFile); i++) await new Promise((r) => setTimeout(r, 25));
    assert.equal(fs.existsSync(pidFile), false, 'the daemon removes its pid file when stopped');
    pid = undefined;
  });
});
