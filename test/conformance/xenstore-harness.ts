// Shared by the xenstore conformance tests: locating Xen's C xenstored and tools, building
// our LD_PRELOAD shim and ring proxy (test/conformance/c/xenstore-*.c) with gcc, and running
// either server with a dom0 socket plus sockets that act as unprivileged domains. For the C
// daemon a domain socket is a ring proxy on the domain's (shared-file) ring page, so the
// daemon really sees a domain connection; for ours it is a socket bound to the domid.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createXenstored, type Xenstored, type XenstoredOptions, type XenstoredQuotas } from '../../xenstore/server/xenstored.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const BUILD = path.join(ROOT, 'test/.build/xenstore');

const INSTALL_C = `Xen's C xenstored is needed (Debian xen-utils-4.17). .ci/run fetches it; by hand:
  mkdir -p .cache/xen-debs && cd .cache/xen-debs && apt-get download xen-utils-4.17 && dpkg-deb -x xen-utils-4.17_*.deb .
(its libraries come with libxen-dev: apt-get install libxen-dev; gcc is needed for the shim: apt-get install gcc)`;

/** `cXenstoredPath()` is the C xenstored binary to test against; throws with install instructions when absent. */
export function cXenstoredPath(): string {
  const candidates = [
    process.env.XENBLK_C_XENSTORED,
    path.join(ROOT, '.cache/xen-debs/usr/lib/xen-4.17/bin/xenstored'),
    '/usr/lib/xen-4.17/bin/xenstored',
  ].filter((p): p is string => !!p);
  for (const c of candidates) if (fs.existsSync(c)) return c;
  throw new Error(`C xenstored not found (looked in ${candidates.join(', ')}).\n${INSTALL_C}`);
}

/** `xenstoreTool(name)` is the path of a Debian xenstore-utils tool; throws with install instructions when absent. */
export function xenstoreTool(name: string): string {
  for (const dir of ['/usr/bin', '/usr/sbin', '/bin']) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`${name} not found: install Xen's xenstore tools with: apt-get install xenstore-utils`);
}

let built: { shim: string; proxy: string } | undefined;

/** `buildHelpers()` compiles the shim and ring proxy (once per process) into test/.build. */
export function buildHelpers(): { shim: string; proxy: string } {
  if (built) return built;
  if (!fs.existsSync('/usr/include/xenctrl.h') || !fs.existsSync('/usr/include/xen/io/xs_wire.h')) {
    throw new Error('Xen headers not found: install them with: apt-get install libxen-dev');
  }
  fs.mkdirSync(BUILD, { recursive: true });
  const shim = path.join(BUILD, `xenstore-shim-${process.pid}.so`);
  const proxy = path.join(BUILD, `xenstore-ring-proxy-${process.pid}`);
  try {
    execFileSync('gcc', ['-O1', '-Wall', '-Werror', '-shared', '-fPIC', '-o', shim, path.join(ROOT, 'test/conformance/c/xenstore-shim.c'), '-ldl'], { stdio: 'pipe' });
    execFileSync('gcc', ['-O1', '-Wall', '-Werror', '-o', proxy, path.join(ROOT, 'test/conformance/c/xenstore-ring-proxy.c')], { stdio: 'pipe' });
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    if (err.code === 'ENOENT') throw new Error('gcc not found: install it with: apt-get install gcc');
    throw new Error(`building the xenstore shim failed:\n${err.stderr?.toString() ?? String(e)}`);
  }
  process.once('exit', () => {
    for (const f of [shim, proxy]) fs.rmSync(f, { force: true });
  });
  built = { shim, proxy };
  return built;
}

/** A running xenstored under test: a dom0 socket and a way to get sockets acting as domains. */
export interface ServerUnderTest {
  readonly name: 'ours' | 'xen';
  /** The privileged (dom0) socket. */
  readonly socketPath: string;
  /**
   * `domainSocket(domid)` is a socket that acts as domain `domid`. For the C daemon the domain
   * must have been introduced (XS_INTRODUCE) first and each socket serves one client.
   */
  domainSocket(domid: number): Promise<string>;
  /** What the server wrote to stderr so far (the C daemon's assertion messages, for example). */
  readonly stderr: string;
  stop(): Promise<void>;
}

function waitForSocket(p: string, child: ChildProcess | undefined, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let tries = 0;
    const attempt = (): void => {
      if (child && (child.exitCode !== null || child.signalCode !== null)) {
        reject(new Error(`${what} exited with status ${child.exitCode} before listening`));
        return;
      }
      const s = net.connect(p);
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (++tries > 200) reject(new Error(`${what}: nothing listens on ${p}`));
        else setTimeout(attempt, 25);
      });
    };
    attempt();
  });
}

/** `cQuotaArgs(q)` is the C xenstored command line for quotas `q` (xenstored_core.c options). */
export function cQuotaArgs(q: Partial<XenstoredQuotas>): string[] {
  const a: string[] = [];
  if (q.nodesPerDomain !== undefined) a.push('-E', String(q.nodesPerDomain));
  if (q.watchesPerDomain !== undefined) a.push('-W', String(q.watchesPerDomain));
  if (q.transactionsPerConnection !== undefined) a.push('-t', String(q.transactionsPerConnection));
  if (q.permsPerNode !== undefined) a.push('-A', String(q.permsPerNode));
  if (q.nodeSize !== undefined) a.push('-S', String(q.nodeSize));
  if (q.pathMax !== undefined) a.push('-M', String(q.pathMax));
  if (q.transactionNodes !== undefined) a.push('-Q', `transaction-nodes=${q.transactionNodes}`);
  return a;
}

/** `startXenXenstored(opts)` runs Xen's C xenstored under the shim in a fresh temporary directory. */
export async function startXenXenstored(opts: { deadFrom?: number; quotas?: Partial<XenstoredQuotas> } = {}): Promise<ServerUnderTest> {
  const bin = cXenstoredPath();
  const { shim, proxy } = buildHelpers();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-cxs-'));
  const run = path.join(dir, 'run');
  fs.mkdirSync(run);
  execFileSync('mkfifo', [path.join(dir, 'evtchn')]);
  fs.writeFileSync(path.join(dir, 'xsd_port'), '1\n');
  fs.writeFileSync(path.join(dir, 'xsd_kva'), Buffer.alloc(4096));
  const env: NodeJS.ProcessEnv = { ...process.env, XENSTORED_RUNDIR: run, XS_SHIM_DIR: dir, LD_PRELOAD: shim };
  delete env.XENSTORED_PATH;
  if (opts.deadFrom !== undefined) env.XS_SHIM_DEAD_FROM = String(opts.deadFrom);
  let stderr = '';
  const child = spawn(bin, ['--no-fork', ...cQuotaArgs(opts.quotas ?? {})], { env, cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const socketPath = path.join(run, 'socket');
  try {
    await waitForSocket(socketPath, child, `C xenstored (${bin})`);
  } catch (e) {
    child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`${(e as Error).message}\n${stderr}`);
  }
  const proxies = new Set<ChildProcess>();
  let n = 0;
  return {
    name: 'xen',
    socketPath,
    async domainSocket(domid) {
      const fifo = path.join(dir, `notify-${domid}`);
      if (!fs.existsSync(fifo)) execFileSync('mkfifo', [fifo]);
      const sock = path.join(dir, `d${domid}-${n++}.sock`);
      const p = spawn(proxy, [path.join(dir, `ring-${domid}`), path.join(dir, 'evtchn'), fifo, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
      proxies.add(p);
      p.once('exit', () => proxies.delete(p));
      await new Promise<void>((resolve, reject) => {
        p.stdout!.once('data', () => resolve());
        p.once('exit', (code) => reject(new Error(`ring proxy for domain ${domid} exited (${code}); was the domain introduced?`)));
      });
      return sock;
    },
    get stderr() {
      return stderr;
    },
    async stop() {
      for (const p of proxies) p.kill('SIGKILL');
      if (child.exitCode === null && child.signalCode === null) {
        await new Promise<void>((resolve) => {
          child.once('exit', () => resolve());
          child.kill('SIGTERM');
        });
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `startOurXenstored(opts)` runs our in-memory xenstored in this process on fresh sockets. */
export async function startOurXenstored(opts: XenstoredOptions = {}): Promise<ServerUnderTest & { readonly daemon: Xenstored }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-xs-'));
  const daemon = createXenstored(opts);
  const socketPath = path.join(dir, 'socket');
  await daemon.listen(socketPath, 0);
  let n = 0;
  return {
    name: 'ours',
    daemon,
    socketPath,
    stderr: '',
    async domainSocket(domid) {
      const sock = path.join(dir, `d${domid}-${n++}.sock`);
      await daemon.listen(sock, domid);
      return sock;
    },
    async stop() {
      await daemon.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `startServer(kind)` starts either server. */
export function startServer(kind: 'ours' | 'xen', opts: { deadFrom?: number; quotas?: Partial<XenstoredQuotas> } = {}): Promise<ServerUnderTest> {
  if (kind === 'xen') return startXenXenstored(opts);
  const deadFrom = opts.deadFrom;
  return startOurXenstored({
    ...(deadFrom === undefined ? {} : { isDomainAlive: (d: number) => d < deadFrom }),
    ...(opts.quotas ? { quotas: opts.quotas } : {}),
    log: (l) => { if (l.startsWith('internal')) process.stderr.write(`our xenstored: ${l}\n`); },
  });
}
