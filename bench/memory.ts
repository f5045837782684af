// Benchmark 2, memory: resident memory of a backend process (lib/blkback on the simulated
// host, bench/stack-back.ts) with no disk, then serving 1, then 16 connected idle disks (each a
// sparse raw file, the frontend connected with its defaults: 16-page rings, persistent grants,
// queues = min(4, CPUs)). Every repetition uses fresh processes and a fresh frontend domain.
// RSS is VmRSS after two full GCs; it counts the mapped ring pages (RssShmem) as well as the
// heap. Goal: <= 2 MiB per extra disk ((RSS16 - RSS1) / 15).
import fs from 'node:fs';
import path from 'node:path';
import { attachSim, type SimHost } from '../lib/sim/attach.ts';
import { startSim } from '../lib/sim/start.ts';
import { createVbd } from '../lib/toolstack/vbd.ts';
import type { Bench, BenchContext } from './framework/bench.ts';
import { figure } from './framework/figure.ts';
import { Worker } from './framework/worker.ts';
import type { RssReport } from './stack-back.ts';

const DISKS = 16;
const DISK_BYTES = 64 << 20;
const VDEVS = 'bcdefghijklmnopq'.split('').map((c) => `xvd${c}`);
const MiB = 1024;

interface Sample {
  readonly none: RssReport;
  readonly one: RssReport;
  readonly all: RssReport;
}

async function sampleOnce(ctx: BenchContext, dir: string, toolstack: SimHost, files: string[], domid: number): Promise<Sample> {
  const here = path.dirname(new URL(import.meta.url).pathname);
  const front = Worker.start('mem-front', path.join(here, 'stack-front.ts'));
  const back = Worker.start('mem-back', path.join(here, 'stack-back.ts'), [], { nodeArgs: ['--expose-gc'] });
  try {
    await front.call('host', { dir, domid });
    await back.call('start', { dir, frontendDomid: domid });
    const none = await back.call<RssReport>('rss');
    const add = async (i: number): Promise<void> => {
      await createVbd(toolstack.xenstore, { frontendDomid: domid, vdev: VDEVS[i]!, params: files[i]! });
      await front.call('attach', { vdev: VDEVS[i]! });
    };
    await add(0);
    const one = await back.call<RssReport>('rss');
    for (let i = 1; i < DISKS; i++) await add(i);
    const all = await back.call<RssReport>('rss');
    ctx.log(`rss KiB: none ${none.rssKiB} (heap ${none.heapUsedKiB}), 1 disk ${one.rssKiB} (heap ${one.heapUsedKiB}, shmem ${one.shmemKiB}), ${DISKS} disks ${all.rssKiB} (heap ${all.heapUsedKiB}, shmem ${all.shmemKiB})`);
    return { none, one, all };
  } finally {
    await front.stop();
    await back.stop();
  }
}

export const memoryBench: Bench = {
  name: 'memory',
  title: `Memory: RSS of a blkback process serving 1 and ${DISKS} idle disks on the simulator`,
  async run(ctx: BenchContext) {
    if (!['memory.rss-1-disk', `memory.rss-${DISKS}-disks`, 'memory.per-extra-disk'].some((n) => ctx.wants(n))) return;
    const diskDir = path.join(ctx.outDir, 'memory-disks');
    fs.mkdirSync(diskDir, { recursive: true });
    const files = VDEVS.map((v) => path.join(diskDir, `${v}.img`));
    for (const f of files) {
      const fd = fs.openSync(f, 'a');
      fs.ftruncateSync(fd, DISK_BYTES); // sparse: idle disks are never read
      fs.closeSync(fd);
    }
    const sim = await startSim({ dir: `/dev/shm/xenblk-bench-mem-${process.pid}` });
    const toolstack = await attachSim({ dir: sim.dir, domid: 0 });
    const samples: Sample[] = [];
    try {
      for (let r = 0; r < ctx.reps; r++) samples.push(await sampleOnce(ctx, sim.dir, toolstack, files, 10 + r));
    } finally {
      await toolstack.close();
      await sim.stop();
    }
    const mib = (k: number): number => k / MiB;
    const none = samples.map((s) => mib(s.none.rssKiB));
    const common = 'a fresh backend process per repetition; VmRSS after 2 full GCs (node --expose-gc)';
    ctx.record(figure(
      { name: 'memory.rss-1-disk', unit: 'MiB', limit: 'same process, no disk', better: 'lower', note: `${common}; limit: the same process before its first disk` },
      samples.map((s) => mib(s.one.rssKiB)), none,
    ));
    ctx.record(figure(
      { name: `memory.rss-${DISKS}-disks`, unit: 'MiB', limit: 'same process, no disk', better: 'lower', note: `${DISKS} connected idle disks (sparse ${DISK_BYTES >> 20} MiB raw files); rings mapped, no I/O` },
      samples.map((s) => mib(s.all.rssKiB)), none,
    ));
    const perDisk = samples.map((s) => mib(s.all.rssKiB - s.one.rssKiB) / (DISKS - 1));
    ctx.record(figure(
      { name: 'memory.per-extra-disk', unit: 'MiB/disk', limit: 'budget 2 MiB/disk', goal: { cmp: '<=', ratio: 1 }, better: 'lower', note: `(RSS with ${DISKS} disks - RSS with 1) / ${DISKS - 1}; shmem (mapped rings) per extra disk ${(samples.map((s) => mib(s.all.shmemKiB - s.one.shmemKiB) / (DISKS - 1)).sort((a, b) => a - b)[samples.length >> 1]!).toFixed(2)} MiB` },
      perDisk, [2],
    ));
  },
};
