// `xenblk xenstored` as a separate process with per-domain sockets, and domains as separate
// processes: a frontend/backend handshake through watches and transactions across processes,
// a peer that breaks framing, a released domain losing its connection, and the xenbus
// character-device transport (a raw pseudo-terminal bridged to the daemon stands in for
// /dev/xen/xenbus, with the same blocking-read behaviour).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connectClient } from '../../xenstore/connect.ts';
import type { XenstoreClient } from '../../xenstore/client.ts';
import { XenstoreError } from '../../xenstore/errors.ts';
import { XsOp, encodeMessage } from '../../protocol/xs-wire.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function waitForSocket(p: string, child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let tries = 0;
    const attempt = (): void => {
      if (child.exitCode !== null) return reject(new Error(`process exited with ${child.exitCode}`));
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

/** Runs `code` (an ES module body with our modules importable by absolute path) as a separate domain process. */
function domainProcess(code: string, env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20000);
  return new Promise((resolve) => child.on('exit', (c) => {
    clearTimeout(timer);
    resolve({ code: c, out });
  }));
}

const CONNECT = `import { connect } from ${JSON.stringify(path.join(ROOT, 'xenstore/connect.ts'))};`;

describe('xenblk xenstored with domains in separate processes', () => {
  let dir: string;
  let daemon: ChildProcess;
  let dom0: XenstoreClient;
  const sock = (n: string): string => path.join(dir, n);

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-xsproc-'));
    daemon = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'cli/main.ts'), 'xenstored', '--socket', sock('dom0'),
      '--domain', `3:${sock('dom3')}`, '--domain', `4:${sock('dom4')}`, '--foreground'], { cwd: ROOT, stdio: 'ignore' });
    await waitForSocket(sock('dom0'), daemon);
    // XENSTORED_PATH is how every tool finds the daemon; connect() honours it.
    const saved = process.env.XENSTORED_PATH;
    process.env.XENSTORED_PATH = sock('dom0');
    try {
      dom0 = (await connectClient()) as XenstoreClient;
    } finally {
      if (saved === undefined) delete process.env.XENSTORED_PATH;
      else process.env.XENSTORED_PATH = saved;
    }
    for (const d of [3, 4]) {
      assert.equal(await dom0.isDomainIntroduced(d), true);
      await dom0.mkdir(`/local/domain/${d}`);
      await dom0.setPermissions(`/local/domain/${d}`, [{ domid: d, perm: 'n' }]);
    }
  });

  after(async () => {
    await dom0?.close();
    daemon?.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a frontend process and the backend handshake through watches and transactions', async () => {
    const be = '/local/domain/0/backend/vbd/3/51712';
    await dom0.transaction(async (tx) => {
      await tx.write(`${be}/state`, '2');
      await tx.write(`${be}/frontend`, '/local/domain/3/device/vbd/51712');
      await tx.setPermissions(be, [{ domid: 0, perm: 'n' }, { domid: 3, perm: 'r' }]);
      await tx.setPermissions(`${be}/state`, [{ domid: 0, perm: 'n' }, { domid: 3, perm: 'r' }]);
      await tx.write('/local/domain/3/device/vbd/51712/state', '1');
      await tx.setPermissions('/local/domain/3/device/vbd/51712', [{ domid: 3, perm: 'n' }, { domid: 0, perm: 'r' }]);
    });
    const fe = domainProcess(`${CONNECT}
      const xs = await connect();
      await xs.transaction(async (tx) => {
        await tx.write('device/vbd/51712/ring-ref', '8');
        await tx.write('device/vbd/51712/state', '3');
      });
      for await (const ev of xs.watch('${be}/state')) {
        if ((await xs.read(ev.path)) === '4') break;
      }
      console.log('connected', await xs.read('${be}/state'));
      await xs.close();`, { XENSTORED_PATH: sock('dom3') });
    const w = dom0.watch('/local/domain/3/device/vbd/51712/state', 'fe');
    for await (const ev of w) {
      if ((await dom0.read(ev.path)) === '3') break;
    }
    await w.close();
    assert.equal(await dom0.read('/local/domain/3/device/vbd/51712/ring-ref'), '8');
    await dom0.write(`${be}/state`, '4');
    const r = await fe;
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /connected 4/);
  });

  it('drops a client that announces an oversize frame, and only that client', async () => {
    const raw = net.connect(sock('dom0'));
    await new Promise((r) => raw.once('connect', r));
    const closed = new Promise((r) => raw.once('close', r));
    const h = encodeMessage({ type: XsOp.WRITE, reqId: 1, txId: 0, payload: new Uint8Array(0) });
    new DataView(h.buffer).setUint32(12, 5000, true);
    raw.write(h);
    await closed;
    assert.equal(await dom0.getDomainPath(3), '/local/domain/3');
  });

  it('releasing a domain ends its process’s connection', async () => {
    const child = domainProcess(`${CONNECT}
      const xs = await connect();
      await xs.write('alive', '1');
      const w = xs.watch('alive');
      try {
        for await (const ev of w) console.log('event', ev.path);
        console.log('ended without error');
      } catch (e) {
        console.log('ended with', e.code);
      }
      await xs.close();`, { XENSTORED_PATH: sock('dom4') });
    for (let i = 0; i < 400 && (await dom0.tryRead('/local/domain/4/alive')) === undefined; i++) await new Promise((r) => setTimeout(r, 25));
    await dom0.releaseDomain(4);
    const r = await child;
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /ended with ECONNRESET/);
    assert.equal(await dom0.isDomainIntroduced(4), false);
    assert.equal(await dom0.tryRead('/local/domain/4/alive'), undefined);
  });

  it('works over a xenbus character device (blocking reads on the threadpool)', { timeout: 30000 }, async (t) => {
    const bridgeExe = path.join(ROOT, `test/.build/xenstore/xenstore-pty-bridge-${process.pid}`);
    fs.mkdirSync(path.dirname(bridgeExe), { recursive: true });
    try {
      execFileSync('gcc', ['-Wall', '-Werror', '-o', bridgeExe, path.join(ROOT, 'test/conformance/c/xenstore-pty-bridge.c'), '-lutil'], { stdio: 'pipe' });
    } catch (e) {
      const err = e as { code?: string; stderr?: Buffer };
      throw new Error(err.code === 'ENOENT' ? 'gcc not found: install it with: apt-get install gcc' : `building the pty bridge failed: ${err.stderr}`);
    }
    const bridge = spawn(bridgeExe, [sock('dom3')], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.after(() => {
      bridge.kill('SIGKILL');
      fs.rmSync(bridgeExe, { force: true });
    });
    const device = await new Promise<string>((resolve, reject) => {
      bridge.stdout!.once('data', (d: Buffer) => resolve(d.toString().trim()));
      bridge.once('exit', (c) => reject(new Error(`pty bridge exited with ${c}`)));
    });
    const xs = await connectClient({ transport: 'xenbus', device });
    assert.match(xs.description, /xenbus device/);
    assert.equal(await xs.getDomainPath(3), '/local/domain/3');
    await xs.write('via-device', 'ok');
    assert.equal(await dom0.read('/local/domain/3/via-device'), 'ok');
    const w = xs.watch('via-device', 'dev');
    const it = w[Symbol.asyncIterator]();
    assert.deepEqual((await it.next()).value, { path: 'via-device', token: 'dev' });
    await dom0.write('/local/domain/3/via-device', 'changed');
    assert.deepEqual((await it.next()).value, { path: 'via-device', token: 'dev' });
    await assert.rejects(xs.read('/tool'), (e: unknown) => e instanceof XenstoreError && e.code === 'EACCES');
    await Promise.all(Array.from({ length: 20 }, (_, i) => xs.write(`burst/${i}`, 'x'.repeat(500))));
    assert.equal((await xs.directory('burst')).length, 20);
    // close() must unblock the pending read so that nothing keeps the process alive.
    await xs.close();
  });
});
