// Run in dom0 by test/xen/tests/bad-frontend-xenblk-blkback.sh: a hostile frontend against
// xenblk's blkback (`xenblk serve --xen`, the built dist/xenblk.mjs) on real Xen. dom0 is the
// frontend domain: it shares its pages through /dev/xen/gntalloc and signals through
// /dev/xen/evtchn, so every grant check is Xen's own. The frontend is the blkback fuzzer's
// (test/fuzz/blkback/remote-frontend.ts): each batch mixes well-formed requests with flawed ones
// (bad operations, segment counts and sector ranges, refs never granted, revoked, granted to
// another domain or read-only, garbage indirect pages, rings full of noise, req_prod jumping
// past the ring). Oracles: every request gets exactly one answer with the status blkif.h
// prescribes, OKAY reads hold the disk's data, refused reads and read-only grants are not
// written, the backing file equals the model, the backend process stays alive, unmaps
// everything of ours once we close, and then serves a well-formed frontend (lib/blkfront) and
// stops cleanly. Prints "ok ..." per check and a summary; exits 1 on the first failure.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { openHost } from '../../../lib/host/open.ts';
import type { Host } from '../../../lib/host/host.ts';
import { Blkfront } from '../../../lib/blkfront/device.ts';
import { Rng, deriveSeed } from '../../fuzz/fuzzer.ts';
import { GrantPools } from '../../fuzz/blkback/grant-pools.ts';
import { RemoteFrontend } from '../../fuzz/blkback/remote-frontend.ts';
import type { RemoteBatchMode } from '../../fuzz/blkback/remote-frontend.ts';

const WORK = process.env.XENBLK_WORK ?? '/var/tmp/xenblk/bad-frontend';
const CLI = path.resolve('dist/xenblk.mjs');
const SEED = Number(process.env.XENBLK_BAD_SEED ?? 20261122);
/** Seconds of batches per session (a budget, not a measurement: TCG makes each batch slow). */
const SESSION_SECONDS = Number(process.env.XENBLK_BAD_SECONDS ?? 25);
/** A domain that does not exist: grants to it must never be mappable by the backend. */
const OTHER = 9;
const DISK_BYTES = 4 << 20;
const MODES: readonly (readonly [number, RemoteBatchMode])[] = [[50, 'clean'], [10, 'storm'], [30, 'chaos'], [10, 'jump']];
const FE = '/local/domain/0/device/vbd/51728';
const BE = '/local/domain/0/backend/vbd/0/51728';

interface Session {
  readonly serve: readonly string[];
  readonly abi: 'x86_64' | 'x86_32';
  readonly order: number;
}

/** Backend options and ring shapes: each session stresses different decoding paths. */
const SESSIONS: readonly Session[] = [
  { serve: [], abi: 'x86_64', order: 2 },
  { serve: ['--no-persistent', '--max-indirect-segments', '256'], abi: 'x86_32', order: 0 },
  { serve: ['--max-ring-page-order', '4', '--sector-size', '4096'], abi: 'x86_64', order: 4 },
  // Grant copy: every segment goes through GNTTABOP_copy, so Xen itself refuses the revoked,
  // foreign and read-only grants the batches carry.
  { serve: ['--grant-copy'], abi: 'x86_64', order: 1 },
];

function fail(msg: string): never {
  process.stdout.write(`FAIL: ${msg}\n`);
  process.exit(1);
}

const ok = (msg: string): void => { process.stdout.write(`ok ${msg}\n`); };

/** `gntdevMappings(pid)` is how many of `pid`'s mappings are grant mappings (/dev/xen/gntdev). */
function gntdevMappings(pid: number): number {
  return fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.endsWith('/dev/xen/gntdev')).length;
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) fail(`${what}: not within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function startServe(image: string, flags: readonly string[], log: string): { proc: ChildProcess; exited: Promise<number> } {
  const out = fs.openSync(log, 'a');
  const proc = spawn(process.execPath, [CLI, 'serve', image, '--xen', '--domid', '0', '--vdev', 'xvdb', ...flags], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const exited = new Promise<number>((r) => proc.once('exit', (code, sig) => r(code ?? (sig !== null ? 128 : 1))));
  return { proc, exited };
}

async function session(host: Host, i: number, s: Session, totals: Record<string, number>): Promise<void> {
  const seed = deriveSeed(SEED, i);
  const rng = new Rng(seed);
  const noise = Buffer.from(rng.bytes(64 * 1024));
  const image = path.join(WORK, `bad-${i}.img`);
  const img = Buffer.alloc(DISK_BYTES);
  for (let o = 0; o < DISK_BYTES; o += noise.length) noise.copy(img, o);
  fs.writeFileSync(image, img);
  const log = path.join(WORK, `serve-${i}.log`);
  const label = `session ${i} (seed ${seed}, serve ${s.serve.join(' ') || 'defaults'}, ${s.abi}, frontend ring order <= ${s.order})`;
  const back = startServe(image, s.serve, log);
  const alive = (): boolean => back.proc.exitCode === null && back.proc.signalCode === null;
  const backendLog = (): string => fs.readFileSync(log, 'utf8').slice(-3000);
  await waitFor(`${label}: serve creating the vbd`, async () => {
    if (!alive()) fail(`${label}: serve exited before creating the vbd:\n${backendLog()}`);
    return (await host.xenstore.tryRead(`${FE}/backend`).catch(() => undefined)) !== undefined;
  });
  const pools = new GrantPools(host.sharer, 0, OTHER, { rw: 64, src: 16, ro: 16, ind: 16, decoy: 4 });
  const front = new RemoteFrontend(host, pools, FE, BE, image, s.abi, s.order, noise, s.serve.includes('--grant-copy'));
  try {
    await front.connect();
    ok(`${label}: connected, ${JSON.stringify(front.cfg)}`);
    const started = Date.now();
    const modes: Record<string, number> = {};
    let batches = 0;
    while ((Date.now() - started) / 1000 < SESSION_SECONDS || batches < 8) {
      const brng = new Rng(deriveSeed(seed, batches + 1));
      const mode = brng.weighted(MODES);
      const problems = await front.batch(brng, mode).catch((e: unknown) => [`batch failed: ${e instanceof Error ? e.message : String(e)}`]);
      batches++;
      modes[mode] = (modes[mode] ?? 0) + 1;
      if (!alive()) problems.push(`the backend process exited (${back.proc.exitCode ?? back.proc.signalCode}):\n${backendLog()}`);
      if (problems.length > 0) fail(`${label}: ${mode} batch ${batches}: ${problems.join('\n  ')}\n--- serve log ---\n${backendLog()}`);
    }
    const disk = front.checkDisk();
    if (disk !== undefined) fail(`${label}: ${disk}`);
    ok(`${label}: ${batches} batches (${Object.entries(modes).map(([m, n]) => `${m} ${n}`).join(', ')}), answers OKAY ${front.statuses.okay}, ERROR ${front.statuses.error}, ` +
      `EOPNOTSUPP ${front.statuses.eopnotsupp}, ${front.reconnects} reconnects after req_prod jumps; backing file equals the model; backend alive`);
    for (const [k, v] of Object.entries({ batches, okay: front.statuses.okay, error: front.statuses.error, eopnotsupp: front.statuses.eopnotsupp, reconnects: front.reconnects })) totals[k] = (totals[k] ?? 0) + v;
    if (gntdevMappings(back.proc.pid!) === 0) fail(`${label}: the connected backend maps no grant at all (/proc/${back.proc.pid}/maps)`);
  } finally {
    await front.close();
  }
  // Closed: the backend must have let go of every page of ours.
  await waitFor(`${label}: backend unmapping our grants after Closed`, () => gntdevMappings(back.proc.pid!) === 0, 30_000);
  pools.close();
  ok(`${label}: after the frontend closed, the backend holds no grant mapping`);

  // The same backend then serves a well-formed frontend: our blkfront library.
  const f = await Blkfront.attach(host, 'xvdb', { deviceTimeoutMs: 60_000, connectTimeoutMs: 60_000 });
  const info = await f.getInfo();
  const sectors = (256 * 1024) / info.sectorSize;
  const data = randomBytes(256 * 1024);
  await f.write(sectors, data);
  await f.flush();
  const back2 = Buffer.alloc(data.length);
  await f.read(sectors, back2);
  await f.disconnect();
  if (!back2.equals(data)) fail(`${label}: a well-formed frontend read back different data after the hostile session`);
  const inFile = Buffer.alloc(data.length);
  const fd = fs.openSync(image, 'r');
  fs.readSync(fd, inFile, 0, inFile.length, 256 * 1024);
  fs.closeSync(fd);
  if (!inFile.equals(data)) fail(`${label}: the well-formed frontend's write is not in the backing file`);
  ok(`${label}: then a well-formed blkfront wrote, flushed and read back 256 KiB (${info.features.persistentGrants ? 'persistent grants' : 'no persistent grants'}, ring order ${info.features.ringPageOrder})`);

  back.proc.kill('SIGTERM');
  const code = await Promise.race([back.exited, new Promise<number>((r) => setTimeout(() => r(-1), 60_000))]);
  if (code !== 0) fail(`${label}: serve exited ${code} on SIGTERM (-1: still running after 60 s):\n${backendLog()}`);
  for (const p of [FE, BE]) if ((await host.xenstore.tryRead(`${p}/state`).catch(() => undefined)) !== undefined) fail(`${label}: ${p} left behind`);
  ok(`${label}: serve stopped cleanly (exit 0), vbd directories removed`);
  fs.rmSync(image, { force: true });
}

async function main(): Promise<void> {
  if (!fs.existsSync(CLI)) fail(`${CLI} is missing: the harness builds it (npm run build)`);
  fs.mkdirSync(WORK, { recursive: true });
  const host = await openHost({ xen: true });
  if (host.domid !== 0) fail(`this runs in dom0, not domain ${host.domid}`);
  const totals: Record<string, number> = {};
  try {
    for (const [i, s] of SESSIONS.entries()) await session(host, i, s, totals);
  } finally {
    await host.close().catch(() => undefined);
  }
  ok(`hostile frontend summary: ${SESSIONS.length} sessions, ${totals.batches} batches, answers OKAY ${totals.okay}, ERROR ${totals.error}, EOPNOTSUPP ${totals.eopnotsupp}, ${totals.reconnects} ring resets; backend never died, hung or wrote where it must not`);
}

main().then(() => process.exit(0), (e: unknown) => fail(e instanceof Error ? e.stack ?? e.message : String(e)));
