// Fuzzer: the malicious frontend of the blkback fuzzer against `xenblk serve` in a process of
// its own on the simulator (issue 8 part 1, separate-process variant). Sessions of a few hundred
// rings, each against a backend started with random options (persistent grants or not, indirect
// limit, ring order, 512/4096-byte sectors, read-only), over real shared memory, event channels
// and XenStore. Oracles (remote-frontend.ts): answers as in process, data against the image file,
// nothing written into read-only grants, the backend process alive after every batch and
// exiting cleanly at the end, its resident memory bounded, and once both ends closed the guest domain's pages mapped by
// nobody and no port left bound. One iteration is one published ring.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startSim } from '../../../lib/sim/start.ts';
import { attachSim } from '../../../lib/sim/attach.ts';
import { xenblk } from '../../support/blkfront-sim.ts';
import type { Child } from '../../support/blkfront-sim.ts';
import { Rng, budgetLeft, deriveSeed, type Finding, type FuzzOptions, type FuzzResult, type Fuzzer } from '../fuzzer.ts';
import { GrantPools } from './grant-pools.ts';
import { RemoteFrontend } from './remote-frontend.ts';
import type { RemoteBatchMode } from './remote-frontend.ts';

const NAME = 'blkback-sim';
const GUEST = 3;
const OTHER = 9;
const DISK_BYTES = 4 << 20;
const MODES: readonly (readonly [number, RemoteBatchMode])[] = [[60, 'clean'], [12, 'storm'], [20, 'chaos'], [8, 'jump']];
const MAX_FINDINGS = 10;
/** Bound on the backend process's resident memory (it serves a 4 MiB disk). */
const MAX_BACKEND_RSS_BYTES = 1 << 30;

/** `rssOf(pid)` is a process's resident set in bytes (Linux /proc), undefined if it is gone. */
function rssOf(pid: number | undefined): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m === null ? undefined : Number(m[1]) * 1024;
  } catch {
    return undefined;
  }
}

async function stopChild(c: Child): Promise<number> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return c.exited;
  c.proc.kill('SIGTERM');
  const timer = setTimeout(() => c.proc.kill('SIGKILL'), 20_000);
  const code = await c.exited;
  clearTimeout(timer);
  return code;
}

/** `blkbackSimFuzzer` fuzzes `xenblk serve` on the simulator; one iteration is one published ring. */
export const blkbackSimFuzzer: Fuzzer = {
  name: NAME,
  description: 'the malicious frontend against `xenblk serve` in its own process on the simulator',
  async run(opts: FuzzOptions): Promise<FuzzResult> {
    const started = Date.now();
    const findings: Finding[] = [];
    const counters: Record<string, number> = { sessions: 0, 'grant-copy-sessions': 0, rings: 0, reconnects: 0, 'disk-checks': 0, 'max-backend-rss-mb': 0 };
    for (const [, m] of MODES) counters[`mode-${m}`] = 0;
    const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
    const dir = fs.mkdtempSync(path.join(base, 'xenblk-fuzz-bb-'));
    const imgDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-fuzz-bb-img-'));
    const sim = await startSim({ dir });
    let ringsBefore = 0;
    const find = (seed: number, summary: string, detail: string): void => {
      findings.push({ fuzzer: NAME, seed, summary, reproduce: `npm run fuzz -- --only ${NAME} --seed ${opts.seed} --iterations ${ringsBefore + 1}`, detail });
      opts.log(`${NAME}: FINDING (ring ${ringsBefore}): ${summary}`);
    };
    const host = await attachSim({ dir, domid: GUEST });
    try {
      for (let si = 0; budgetLeft(opts, started, counters.rings!) && findings.length < MAX_FINDINGS; si++) {
        const seed = deriveSeed(opts.seed, si);
        const rng = new Rng(seed);
        const flags = [
          ...(rng.chance(0.5) ? ['--no-persistent'] : []),
          '--max-indirect-segments', String(rng.pick([0, 32, 256])),
          '--max-ring-page-order', String(rng.pick([0, 0, 1, 2, 4])),
          ...(rng.chance(0.15) ? ['--sector-size', '4096'] : []),
          ...(rng.chance(0.1) ? ['--readonly'] : []),
          // Every other session moves data by grant copy: a short run has only a few sessions.
          ...(si % 2 === 1 ? ['--grant-copy'] : []),
        ];
        const noise = Buffer.from(rng.bytes(64 * 1024));
        const image = path.join(imgDir, `disk-${si}.img`);
        const img = Buffer.alloc(DISK_BYTES);
        for (let o = 0; o < DISK_BYTES; o += noise.length) noise.copy(img, o);
        fs.writeFileSync(image, img);
        const back = xenblk(['serve', image, '--domid', String(GUEST), '--vdev', 'xvdb', '--sim', dir, ...(process.env.XENBLK_FUZZ_DEBUG ? [] : ['--quiet']), ...flags]);
        const log = [`session ${si} (seed ${seed}): serve ${flags.join(' ')}`];
        const pools = new GrantPools(host.sharer, 0, OTHER, { rw: 64, src: 16, ro: 16, ind: 16, decoy: 4 });
        const fe = `/local/domain/${GUEST}/device/vbd/51728`;
        const be = `/local/domain/0/backend/vbd/${GUEST}/51728`;
        const front = new RemoteFrontend(host, pools, fe, be, image, rng.chance(0.25) ? 'x86_32' : 'x86_64', rng.pick([0, 1, 2]), noise, flags.includes('--grant-copy'));
        let bad = false;
        try {
          const deadline = Date.now() + 60_000;
          while ((await host.xenstore.tryRead(`${fe}/backend`).catch(() => undefined)) === undefined) {
            if (back.proc.exitCode !== null || Date.now() > deadline) throw new Error(`serve did not create the disk:\n${back.output()}`);
            await new Promise((r) => setTimeout(r, 10));
          }
          await front.connect();
          counters.sessions!++;
          if (flags.includes('--grant-copy')) counters['grant-copy-sessions']!++;
          const length = 40 + rng.int(200);
          for (let bi = 0; bi < length && budgetLeft(opts, started, counters.rings!); bi++) {
            const brng = new Rng(deriveSeed(seed, bi + 1));
            const mode = brng.weighted(MODES);
            counters[`mode-${mode}`]!++;
            ringsBefore = counters.rings!;
            const problems = await front.batch(brng, mode).catch((e: unknown) => [`batch failed: ${e instanceof Error ? e.message : String(e)}`]);
            counters.rings!++;
            log.push(`ring ${ringsBefore} ${mode}`);
            if (log.length > 30) log.splice(1, 1);
            if (back.proc.exitCode !== null) problems.push(`the backend process exited (${back.proc.exitCode}):\n${back.output().slice(-2000)}`);
            if (bi % 16 === 0) {
              const rss = rssOf(back.proc.pid);
              if (rss !== undefined) {
                counters['max-backend-rss-mb'] = Math.max(counters['max-backend-rss-mb']!, Math.round(rss / 2 ** 20));
                if (rss > MAX_BACKEND_RSS_BYTES) problems.push(`the backend process holds ${rss} bytes resident, over the bound ${MAX_BACKEND_RSS_BYTES}`);
              }
            }
            if (bi % 32 === 31 && problems.length === 0) {
              counters['disk-checks']!++;
              const d = front.checkDisk();
              if (d !== undefined) problems.push(d);
            }
            if (problems.length > 0) {
              find(seed, `${mode} ring: ${problems[0]!.slice(0, 400)}${problems.length > 1 ? ` (+${problems.length - 1} more)` : ''}`,
                [`config: ${JSON.stringify(front.cfg)}`, ...problems, '--- backend ---', back.output().slice(-3000), '--- recent rings ---', ...log].join('\n'));
              bad = true;
              break;
            }
          }
          if (!bad) {
            counters['disk-checks']!++;
            const d = front.checkDisk();
            if (d !== undefined) find(seed, d, log.join('\n'));
          }
          counters.reconnects! += front.reconnects;
        } catch (e) {
          find(seed, `session failed: ${e instanceof Error ? e.message : String(e)}`, [back.output().slice(-3000), ...log].join('\n'));
        } finally {
          await front.close();
          pools.close();
          const code = await stopChild(back);
          if (code !== 0 && !bad) find(seed, `xenblk serve exited ${code} when stopped`, back.output().slice(-3000));
        }
        // Both ends gone: nothing of the guest mapped, no port bound.
        const deadline = Date.now() + 10_000;
        for (;;) {
          const st = host.status();
          const g = st.domains.find((d) => d.domid === GUEST);
          const mapped = st.domains.flatMap((d) => d.processes).reduce((n, p) => n + p.mappedPages, 0);
          const ports = st.domains.reduce((n, d) => n + d.ports.length, 0);
          if ((g?.grantsMapped ?? 0) === 0 && mapped === 0 && ports === 0) break;
          if (Date.now() > deadline) {
            find(seed, `after the session ${mapped} pages are still mapped and ${ports} ports bound`, JSON.stringify(st));
            break;
          }
          await new Promise((r) => setTimeout(r, 20));
        }
        fs.rmSync(image, { force: true });
      }
    } finally {
      await host.close().catch(() => {});
      await sim.stop();
      fs.rmSync(dir, { recursive: true, force: true });
      fs.rmSync(imgDir, { recursive: true, force: true });
    }
    return { iterations: counters.rings!, unit: 'rings', findings, counters };
  },
};
