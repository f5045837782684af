// The backend process of the memory and full-stack benchmarks: a dom0 process of the
// simulated host running lib/blkback (the product's backend, default backing opener: raw files
// with O_DIRECT where the filesystem allows it). Run as a worker (framework/worker.ts):
//   start {dir, frontendDomid, limits?} -> {}     attach as dom0, serve that domain's disks
//   disks -> [{path, backing, state, rings, ringPageOrder, persistent}]
//   rss -> {rssKiB, anonKiB, fileKiB, shmemKiB, heapUsedKiB}   after a full GC (needs --expose-gc)
import fs from 'node:fs';
import { attachSim, type SimHost } from '../lib/sim/attach.ts';
import { Blkback } from '../lib/blkback/backend.ts';
import type { BlkbackLimits } from '../lib/blkback/handshake.ts';
import { serveWorker } from './framework/worker.ts';

let host: SimHost | undefined;
let backend: Blkback | undefined;

/** Resident memory of this process from /proc/self/status, in KiB. */
export interface RssReport {
  readonly rssKiB: number;
  readonly anonKiB: number;
  readonly fileKiB: number;
  readonly shmemKiB: number;
  readonly heapUsedKiB: number;
}

function status(key: string, text: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
  return m === null ? NaN : Number(m[1]);
}

async function rss(): Promise<RssReport> {
  const gc = (globalThis as { gc?: () => void }).gc;
  // Settle: let pending callbacks run, then collect twice (weak callbacks and finalizers).
  for (let i = 0; i < 2; i++) {
    await new Promise((r) => setTimeout(r, 50));
    gc?.();
  }
  const text = fs.readFileSync('/proc/self/status', 'utf8');
  return {
    rssKiB: status('VmRSS', text),
    anonKiB: status('RssAnon', text),
    fileKiB: status('RssFile', text),
    shmemKiB: status('RssShmem', text),
    heapUsedKiB: Math.round(process.memoryUsage().heapUsed / 1024),
  };
}

serveWorker(
  {
    start: async (a: { dir: string; frontendDomid: number; limits?: Partial<BlkbackLimits> }) => {
      host = await attachSim({ dir: a.dir, domid: 0 });
      backend = await Blkback.start({ host, frontendDomid: a.frontendDomid, ...(a.limits !== undefined ? { limits: a.limits } : {}) });
      return {};
    },
    disks: () => (backend?.disks() ?? []).map((d) => ({
      devid: d.devid, path: d.path, backing: d.backing, state: d.state, rings: d.rings, ringPageOrder: d.ringPageOrder, persistent: d.persistent,
      stats: {
        rd_req: d.stats.rd_req, wr_req: d.stats.wr_req, merged_req: d.stats.merged_req, io_vectors: d.stats.io_vectors, persistent_grants: d.stats.persistent_grants, pgrant_evictions: d.stats.pgrant_evictions,
        p50_us: d.stats.p50_us, p99_us: d.stats.p99_us, events: d.stats.events, notifies: d.stats.notifies,
      },
    })),
    rss,
  },
  async () => {
    await backend?.stop();
    await host?.close();
  },
);
