// `xenblk demo` (what `npm start` runs): the whole stack on one machine, no Xen needed.
//   1. start a simulated Xen host (its own process);
//   2. start a guest, domain 1, as a frontend process;
//   3. create a sparse disk image and serve it to domain 1 from a backend process
//      (`xenblk serve`, which acts as toolstack and blkback);
//   4. in the guest: attach with blkfront, write a pattern, read it back and verify, then a few
//      seconds of random I/O (verified afterwards), with a progress line;
//   5. print IOPS, MB/s, latency percentiles, the features negotiated and the states walked;
//   6. tear everything down and exit 0.
// The frontend part runs in a child process started as `xenblk demo --guest ...`.
import process from 'node:process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fork, type ChildProcess } from 'node:child_process';
import { startSim } from '../../lib/sim/start.ts';
import { attachSim } from '../../lib/sim/attach.ts';
import { Blkfront } from '../../lib/blkfront/device.ts';
import type { BlockInfo } from '../../lib/blkfront/device.ts';

const USAGE = `usage: xenblk demo [--seconds N] [--size MIB] [--queue-depth N]
  --seconds N       random I/O phase length (default 3)
  --size MIB        disk size (default 64)
  --queue-depth N   operations in flight during random I/O (default 32)
`;

interface DemoArgs {
  seconds: number;
  sizeMiB: number;
  depth: number;
}

function parseArgs(argv: string[]): DemoArgs | string {
  const a: DemoArgs = { seconds: 3, sizeMiB: 64, depth: 32 };
  for (let i = 0; i < argv.length; i++) {
    const opt = argv[i]!;
    const num = (min: number, max: number): number => {
      const v = argv[++i];
      if (v === undefined || !/^[0-9]+(\.[0-9]+)?$/.test(v) || Number(v) < min || Number(v) > max) throw new Error(`${opt} takes a number from ${min} to ${max}`);
      return Number(v);
    };
    switch (opt) {
      case '--seconds': a.seconds = num(0, 3600); break;
      case '--size': a.sizeMiB = Math.floor(num(4, 1 << 20)); break;
      case '--queue-depth': a.depth = Math.floor(num(1, 4096)); break;
      case '--help': case '-h': return '';
      default: return `unknown argument ${opt}`;
    }
  }
  return a;
}

/** `run(argv)` runs the demo (or, with `--guest`, its frontend half); 0 when everything verified. */
export async function run(argv: string[]): Promise<number> {
  if (argv[0] === '--guest') return guest(argv.slice(1));
  let a: DemoArgs | string;
  try {
    a = parseArgs(argv);
  } catch (e) {
    a = (e as Error).message;
  }
  if (typeof a === 'string') {
    process.stderr.write(a === '' ? USAGE : `xenblk demo: ${a}\n${USAGE}`);
    return a === '' ? 0 : 2;
  }
  return host(a);
}

// ---------------------------------------------------------------------------------------------
// The host side: simulator, guest process, backend process.

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Start `xenblk <args>` as a child with this process's runtime (sources through tsx, or the bundle). */
function xenblk(args: string[], stdio: 'inherit' | 'pipe'): ChildProcess {
  return fork(process.argv[1]!, args, { stdio: stdio === 'inherit' ? ['ignore', 'inherit', 'inherit', 'ipc'] : ['ignore', 'pipe', 'pipe', 'ipc'] });
}

function exited(child: ChildProcess): Promise<number> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  if (child.signalCode !== null) return Promise.resolve(128);
  return new Promise((r) => child.once('exit', (code, sig) => r(code ?? (sig ? 128 : 1))));
}

async function host(a: DemoArgs): Promise<number> {
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, 'xenblk-demo-'));
  const image = path.join(dir, 'disk.img');
  let sim: Awaited<ReturnType<typeof startSim>> | undefined;
  let guestProc: ChildProcess | undefined;
  let backend: ChildProcess | undefined;
  let backendLog = '';
  const t0 = Date.now();
  try {
    say(`xenblk demo: a simulated Xen host in ${dir}`);
    sim = await startSim({ dir });
    say(`  simulator running (pid ${sim.pid})`);

    // The guest first: the simulator creates domain 1 when its first process attaches, and a
    // toolstack can only give a disk to a domain that exists.
    guestProc = xenblk(['demo', '--guest', '--sim', dir, '--domid', '1', '--vdev', 'xvdb', '--seconds', String(a.seconds), '--queue-depth', String(a.depth)], 'inherit');
    const g = guestProc;
    await new Promise<void>((resolve, reject) => {
      g.once('message', () => resolve());
      g.once('exit', (code) => reject(new Error(`the guest exited (${code}) before its domain existed`)));
    });
    say('  domain 1 (the guest, a frontend process) is up');

    fs.writeFileSync(image, '');
    fs.truncateSync(image, a.sizeMiB * 1024 * 1024);
    say(`  created ${image}: ${a.sizeMiB} MiB, sparse`);
    backend = xenblk(['serve', image, '--domid', '1', '--vdev', 'xvdb', '--sim', dir], 'pipe');
    backend.stdout?.on('data', (b: Buffer) => { backendLog += b.toString(); });
    backend.stderr?.on('data', (b: Buffer) => { backendLog += b.toString(); });
    say(`  backend process (xenblk serve, pid ${backend.pid}) serves it to domain 1 as xvdb`);
    say('');

    // The guest reports its result and waits: as a toolstack does, unplug the disk before the
    // domain goes away (a domain's death would remove its devices under the backend's feet).
    const guestResult = await new Promise<number>((resolve) => {
      g.on('message', (m: unknown) => {
        if (typeof m === 'object' && m !== null && (m as { type?: unknown }).type === 'done') resolve(Number((m as { code: unknown }).code));
      });
      g.once('exit', (code) => resolve(code ?? 1));
    });
    say('');
    say('tearing down: the backend unplugs the disk, the guest exits, the simulator stops');
    backend.kill('SIGTERM');
    const backendStatus = await exited(backend);
    backend = undefined;
    if (backendStatus !== 0) process.stderr.write(`xenblk demo: the backend exited with ${backendStatus}:\n${backendLog}`);
    if (g.connected) g.send('exit');
    const guestStatus = await exited(g);
    guestProc = undefined;
    await sim.stop();
    sim = undefined;
    const ok = guestResult === 0 && guestStatus === 0 && backendStatus === 0;
    say(ok ? `demo complete in ${((Date.now() - t0) / 1000).toFixed(1)} s: every byte verified, everything released` : 'demo FAILED');
    return ok ? 0 : 1;
  } catch (e) {
    process.stderr.write(`xenblk demo: ${e instanceof Error ? e.message : String(e)}\n${backendLog}`);
    return 1;
  } finally {
    guestProc?.kill('SIGKILL');
    if (backend !== undefined) {
      backend.kill('SIGTERM');
      await exited(backend);
    }
    await sim?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// The guest side: blkfront and the workload.

interface GuestArgs {
  sim: string;
  domid: number;
  vdev: string;
  seconds: number;
  depth: number;
}

function parseGuest(argv: string[]): GuestArgs {
  const g: GuestArgs = { sim: '', domid: 1, vdev: 'xvdb', seconds: 3, depth: 32 };
  for (let i = 0; i < argv.length; i += 2) {
    const v = argv[i + 1] ?? '';
    switch (argv[i]) {
      case '--sim': g.sim = v; break;
      case '--domid': g.domid = Number(v); break;
      case '--vdev': g.vdev = v; break;
      case '--seconds': g.seconds = Number(v); break;
      case '--queue-depth': g.depth = Number(v); break;
      default: throw new Error(`demo --guest: unknown argument ${argv[i]}`);
    }
  }
  return g;
}

/** Deterministic content of 512-byte sector `s` as written in generation `gen`. */
function fillSector(buf: Uint8Array, at: number, s: number, gen: number): void {
  let x = (Math.imul(s, 2654435761) ^ Math.imul(gen + 1, 40503)) >>> 0 || 1;
  for (let i = 0; i < 512; i += 4) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    buf[at + i] = x;
    buf[at + i + 1] = x >>> 8;
    buf[at + i + 2] = x >>> 16;
    buf[at + i + 3] = x >>> 24;
  }
}

class Latencies {
  private v = new Float64Array(1 << 16);
  private n = 0;
  add(ms: number): void {
    if (this.n === this.v.length) {
      const w = new Float64Array(this.v.length * 2);
      w.set(this.v);
      this.v = w;
    }
    this.v[this.n++] = ms;
  }
  get count(): number {
    return this.n;
  }
  percentiles(ps: number[]): number[] {
    const s = this.v.slice(0, this.n).sort();
    return ps.map((p) => (this.n === 0 ? 0 : s[Math.min(this.n - 1, Math.floor((p / 100) * this.n))]!));
  }
}

const MB = 1e6;

async function guest(argv: string[]): Promise<number> {
  const g = parseGuest(argv);
  const host = await attachSim({ dir: g.sim, domid: g.domid });
  process.send?.('ready');
  const tty = process.stdout.isTTY === true;
  const out = (line: string): void => { process.stdout.write(`${line}\n`); };
  let disk: Blkfront | undefined;
  let code = 1;
  try {
    const t0 = Date.now();
    disk = await Blkfront.attach(host, g.vdev, { deviceTimeoutMs: 30_000, maxRingPageOrder: 4, maxIndirectSegments: 256 });
    const info = await disk.getInfo();
    out(`guest (domain ${host.domid}): ${g.vdev} connected in ${Date.now() - t0} ms: ${info.sectors} sectors of ${info.sectorSize} bytes`);
    const d = disk;
    const ss512 = info.sectorSize / 512;
    const sectors512 = info.sectors * ss512;
    const gens = new Uint32Array(sectors512);

    // 1. Write a pattern over the whole disk, 1 MiB at a time, 8 in flight; flush.
    const chunk = Math.min(2048, sectors512);
    let t = Date.now();
    await pool(8, Math.ceil(sectors512 / chunk), async (i) => {
      const s = i * chunk;
      const n = Math.min(chunk, sectors512 - s);
      const buf = Buffer.allocUnsafe(n * 512);
      for (let k = 0; k < n; k++) fillSector(buf, k * 512, s + k, 0);
      await d.write(s / ss512, buf);
    });
    await d.flush();
    const wMs = Date.now() - t;
    out(`  pattern   wrote ${(sectors512 * 512 / MB).toFixed(1)} MB in ${wMs} ms (${(sectors512 * 512 / MB / (wMs / 1000)).toFixed(1)} MB/s), flushed`);

    // 2. Read it back and compare.
    t = Date.now();
    await pool(8, Math.ceil(sectors512 / chunk), async (i) => {
      const s = i * chunk;
      const n = Math.min(chunk, sectors512 - s);
      const buf = Buffer.allocUnsafe(n * 512);
      const want = Buffer.allocUnsafe(n * 512);
      await d.read(s / ss512, buf);
      for (let k = 0; k < n; k++) fillSector(want, k * 512, s + k, 0);
      if (!buf.equals(want)) throw new Error(`verify: sectors ${s}..${s + n} differ from the pattern`);
    });
    const rMs = Date.now() - t;
    out(`  verify    read back ${(sectors512 * 512 / MB).toFixed(1)} MB in ${rMs} ms (${(sectors512 * 512 / MB / (rMs / 1000)).toFixed(1)} MB/s): identical`);

    // 3. Random I/O: 70% reads, 30% writes, 4 KiB..64 KiB (some not page-aligned), `depth` in
    //    flight. Writes never overlap one in flight, so the final content is known.
    const lat = new Latencies();
    const busy = new Uint8Array(sectors512);
    let ops = 0;
    let readBytes = 0;
    let writeBytes = 0;
    const unit = Math.max(8, ss512);
    const end = Date.now() + g.seconds * 1000;
    t = Date.now();
    let lastShow = 0;
    const show = (final: boolean): void => {
      const secs = (Date.now() - t) / 1000;
      const [p50, p99] = lat.percentiles([50, 99]);
      const line = `  random    ${secs.toFixed(1)} s  ${Math.round(ops / Math.max(secs, 1e-3)).toLocaleString('en-US')} IOPS  ` +
        `${((readBytes + writeBytes) / MB / Math.max(secs, 1e-3)).toFixed(1)} MB/s  p50 ${p50!.toFixed(2)} ms  p99 ${p99!.toFixed(2)} ms`;
      if (tty) process.stdout.write(`\r${line}${final ? '\n' : ''}`);
      else if (final || Date.now() - lastShow >= 1000) out(line);
      lastShow = Date.now();
    };
    const timer = setInterval(() => show(false), tty ? 200 : 1000);
    await Promise.all(Array.from({ length: g.depth }, async () => {
      while (Date.now() < end) {
        const len = unit * (1 + Math.floor(Math.random() * (128 / unit)));
        let s = Math.floor(Math.random() * ((sectors512 - len) / ss512)) * ss512;
        if (Math.random() < 0.25 && ss512 === 1) s += 1 + Math.floor(Math.random() * 7);
        if (s + len > sectors512) s = sectors512 - len;
        const write = Math.random() < 0.3;
        const buf = Buffer.allocUnsafe(len * 512);
        const started = performance.now();
        if (write) {
          let clash = false;
          for (let k = 0; k < len; k++) if (busy[s + k]) { clash = true; break; }
          if (clash) continue;
          for (let k = 0; k < len; k++) {
            busy[s + k] = 1;
            gens[s + k]!++;
            fillSector(buf, k * 512, s + k, gens[s + k]!);
          }
          await d.write(s / ss512, buf);
          for (let k = 0; k < len; k++) busy[s + k] = 0;
          writeBytes += buf.length;
        } else {
          await d.read(s / ss512, buf);
          readBytes += buf.length;
        }
        lat.add(performance.now() - started);
        ops++;
      }
    }));
    clearInterval(timer);
    show(true);
    const secs = (Date.now() - t) / 1000;

    // Verify the whole disk against every generation written.
    await d.flush();
    await pool(8, Math.ceil(sectors512 / chunk), async (i) => {
      const s = i * chunk;
      const n = Math.min(chunk, sectors512 - s);
      const buf = Buffer.allocUnsafe(n * 512);
      const want = Buffer.allocUnsafe(n * 512);
      await d.read(s / ss512, buf);
      for (let k = 0; k < n; k++) fillSector(want, k * 512, s + k, gens[s + k]!);
      if (!buf.equals(want)) throw new Error(`verify after random I/O: sectors ${s}..${s + n} differ`);
    });
    out('  verify    whole disk matches every write of the random phase');

    const [p50, p90, p99, p999, max] = lat.percentiles([50, 90, 99, 99.9, 100]);
    const stats = disk.stats();
    await disk.disconnect();
    out('');
    out('summary');
    out(`  random I/O     ${Math.round(ops / secs).toLocaleString('en-US')} IOPS, read ${(readBytes / MB / secs).toFixed(1)} MB/s, write ${(writeBytes / MB / secs).toFixed(1)} MB/s (queue depth ${g.depth}, ${secs.toFixed(1)} s)`);
    out(`  latency        p50 ${p50!.toFixed(2)} ms  p90 ${p90!.toFixed(2)} ms  p99 ${p99!.toFixed(2)} ms  p99.9 ${p999!.toFixed(2)} ms  max ${max!.toFixed(2)} ms`);
    out(`  requests       ${stats.requests.toLocaleString('en-US')} blkif requests for ${(stats.opsOk + stats.opsFailed).toLocaleString('en-US')} operations, ${stats.errorResponses} errors`);
    out(`  features       ${describe(info)}`);
    out(`  states walked  ${disk.transitions.map((s) => `${s.side === 'frontend' ? 'front' : 'back'}:${s.name}`).join(' -> ')}`);
    code = 0;
  } catch (e) {
    process.stderr.write(`\nguest: ${e instanceof Error ? e.message : String(e)}\n`);
  } finally {
    await disk?.disconnect();
    // Tell the demo, then stay (keeping the domain alive) until it has unplugged the disk.
    if (process.send !== undefined && process.connected) {
      const go = new Promise<void>((r) => {
        process.once('message', () => r());
        process.once('disconnect', () => r());
      });
      process.send({ type: 'done', code });
      await go;
      process.disconnect();
    }
    await host.close();
  }
  return code;
}

function describe(info: BlockInfo): string {
  const f = info.features;
  return [
    f.protocol,
    `${f.queues} queue(s) x ${2 ** f.ringPageOrder}-page ring`,
    f.indirectSegments > 0 ? `indirect ${f.indirectSegments} segments` : 'direct requests (11 segments)',
    f.persistentGrants ? 'persistent grants' : 'grants per request',
    `flush: ${f.flush}`,
    f.discard ? `discard${f.secureDiscard ? ' (+secure)' : ''}` : 'no discard',
  ].join(', ');
}

/** `pool(width, n, fn)` runs fn(0..n-1) with at most `width` in flight. */
async function pool(width: number, n: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(width, n) }, async () => {
    while (next < n) await fn(next++);
  }));
}
