// Benchmark 3, the full stack on the simulated host: fio-like workloads through
// blkfront -> ring -> blkback -> raw file (three processes: a guest running lib/blkfront,
// bench/stack-front.ts; dom0 running lib/blkback, bench/stack-back.ts; the simulator's
// daemon), against the limit: the same backing file read and written directly through the same
// I/O engine the backend uses (lib/backends/raw-file.ts), at the same queue depth, in a process
// of its own (bench/stack-direct.ts). Both sides run the same workload engine
// (framework/workload.ts).
//
// Page cache: the backend opens the file O_DIRECT when the filesystem allows it (ext4, xfs:
// yes; tmpfs: no) and the direct side then does too, so neither is served from dom0's page
// cache (we cannot drop caches portably); a hypervisor or host cache below this machine's disk
// is beyond our reach and serves both alike. When O_DIRECT is refused both sides are buffered
// and the page cache serves both (the file is then smaller than free memory: say so).
//
// Then the value of each feature: the same workload on a second disk (same file) whose
// frontend turns one feature off or changes one setting, interleaved with the default disk.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { attachSim } from '../lib/sim/attach.ts';
import { readStatus, startSim } from '../lib/sim/start.ts';
import { createVbd } from '../lib/toolstack/vbd.ts';
import { canonicalName } from '../protocol/device-number.ts';
import type { BlkfrontOptions } from '../lib/blkfront/device.ts';
import type { Bench, BenchContext } from './framework/bench.ts';
import type { Goal } from './framework/figure.ts';
import { filesystemOf } from './framework/machine.ts';
import type { Workload, WorkloadResult } from './framework/workload.ts';
import { Worker } from './framework/worker.ts';

const FRONT_DOMID = 1;
const FILE_BYTES = 1 << 30;
const KiB = 1024;
const MiB = 1024 * 1024;

/** A workload of the comparison. */
interface Job {
  readonly id: string;
  readonly op: 'read' | 'write';
  readonly pattern: 'rand' | 'seq';
  readonly bs: number;
  readonly qd: number;
  readonly goal?: Goal;
}

/** The fio-like jobs, in order: 4 KiB random at QD1 and QD32, 64 KiB and 1 MiB sequential at QD4. */
export const JOBS: readonly Job[] = [
  { id: '4k-randread-qd1', op: 'read', pattern: 'rand', bs: 4 * KiB, qd: 1 },
  { id: '4k-randread-qd32', op: 'read', pattern: 'rand', bs: 4 * KiB, qd: 32, goal: { cmp: '>=', ratio: 0.8 } },
  { id: '4k-randwrite-qd1', op: 'write', pattern: 'rand', bs: 4 * KiB, qd: 1 },
  { id: '4k-randwrite-qd32', op: 'write', pattern: 'rand', bs: 4 * KiB, qd: 32 },
  { id: '64k-seqread-qd4', op: 'read', pattern: 'seq', bs: 64 * KiB, qd: 4 },
  { id: '64k-seqwrite-qd4', op: 'write', pattern: 'seq', bs: 64 * KiB, qd: 4 },
  { id: '1m-seqread-qd4', op: 'read', pattern: 'seq', bs: MiB, qd: 4, goal: { cmp: '>=', ratio: 0.95 } },
  { id: '1m-seqwrite-qd4', op: 'write', pattern: 'seq', bs: MiB, qd: 4, goal: { cmp: '>=', ratio: 0.95 } },
];

/** A frontend configuration compared with a baseline on one job. */
interface Variant {
  /** Figure suffix. */
  readonly id: string;
  readonly vdev: string;
  readonly opts: BlkfrontOptions;
  /** The workload's buffers are plain memory, copied by blkfront, instead of the device's I/O buffers. */
  readonly plainBuffers?: boolean;
  /** The disk it is compared with, and how that one is described. */
  readonly baseVdev: string;
  readonly baseLabel: string;
  readonly jobs: readonly string[];
  readonly what: string;
}

const DEFAULT_VDEV = 'xvdb';
const QUEUES4_VDEV = 'xvdf';

/** Variants: each turns one feature off (or changes one setting) against the default disk. */
export const VARIANTS: readonly Variant[] = [
  { id: 'no-persistent', vdev: 'xvdc', opts: { persistent: false }, baseVdev: DEFAULT_VDEV, baseLabel: 'persistent grants (default)', jobs: ['4k-randread-qd32', '1m-seqread-qd4'], what: 'without persistent grants (grant and map per request)' },
  { id: 'order0', vdev: 'xvdd', opts: { maxRingPageOrder: 0 }, baseVdev: DEFAULT_VDEV, baseLabel: 'ring order 4 (default)', jobs: ['4k-randread-qd32', '1m-seqread-qd4'], what: 'one-page rings (32 slots) instead of 16 pages (512)' },
  { id: 'queues1', vdev: 'xvde', opts: { maxQueues: 1 }, baseVdev: QUEUES4_VDEV, baseLabel: '4 queues', jobs: ['4k-randread-qd32'], what: 'one queue against four (multi-queue-num-queues)' },
  { id: 'copy', vdev: 'xvdh', opts: {}, plainBuffers: true, baseVdev: DEFAULT_VDEV, baseLabel: 'I/O buffers granted in place (default)', jobs: ['4k-randread-qd32', '1m-seqread-qd4', '1m-seqwrite-qd4'], what: 'the caller\'s own memory, copied through the persistent grant pool (Linux blkfront\'s way)' },
  { id: 'no-indirect', vdev: 'xvdg', opts: { maxIndirectSegments: 0 }, baseVdev: DEFAULT_VDEV, baseLabel: 'indirect 32 segments (default)', jobs: ['64k-seqread-qd4', '1m-seqread-qd4'], what: 'direct requests only (11 segments) instead of indirect ones' },
];

async function ensureBackingFile(file: string, log: (m: string) => void): Promise<void> {
  try {
    if (fs.statSync(file).size === FILE_BYTES) return;
  } catch {
    // absent: create it
  }
  log(`writing ${FILE_BYTES / MiB} MiB backing file ${file} (kept for later runs)`);
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = Buffer.alloc(MiB);
    for (let i = 0; i < chunk.length; i += 8) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
    for (let off = 0; off < FILE_BYTES; off += MiB) {
      chunk.writeUInt32LE(off / MiB, 0); // every block distinct
      fs.writeSync(fd, chunk, 0, MiB, off);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** CPU time the processes of a comparison used, over all its samples (warm-up included). */
interface CpuTally {
  stackOps: number;
  frontUs: number;
  backUs: number;
  directOps: number;
  directUs: number;
  /** Requests the backing file's block device completed during each side's samples. */
  stackDiskIos: number;
  directDiskIos: number;
}

function newCpuTally(): CpuTally {
  return { stackOps: 0, frontUs: 0, backUs: 0, directOps: 0, directUs: 0, stackDiskIos: 0, directDiskIos: 0 };
}

/**
 * Reads plus writes the block device `dev` (`/dev/vda`, `/dev/vda1`) has completed, from
 * /proc/diskstats (Documentation/admin-guide/iostats.rst: after major, minor and name, field 1
 * is reads completed, field 5 writes completed; merged bios are not counted again). Undefined
 * when the device is not listed (tmpfs, overlay): the note then leaves the figure out.
 */
function diskIos(dev: string): number | undefined {
  const name = path.basename(dev);
  try {
    for (const line of fs.readFileSync('/proc/diskstats', 'utf8').split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f[2] === name) return Number(f[3]) + Number(f[7]);
    }
  } catch {
    // no /proc/diskstats
  }
  return undefined;
}

/** `cpuNote(t)` says what one operation cost each process, in microseconds of CPU. */
function cpuNote(t: CpuTally): string {
  const per = (us: number, ops: number): string => (ops > 0 ? (us / ops).toFixed(1) : '?');
  const cpu = `CPU per operation: blkfront ${per(t.frontUs, t.stackOps)} us + blkback ${per(t.backUs, t.stackOps)} us ` +
    `(= ${per(t.frontUs + t.backUs, t.stackOps)} us) against ${per(t.directUs, t.directOps)} us reading/writing the file directly`;
  // How the I/O reached the disk: the block layer merges adjacent reads or writes (in the plug
  // of one io_submit, or while they wait in the I/O scheduler) up to the device's max_sectors_kb
  // and max_segments, so fewer than 1 per operation means merging.
  if (t.stackDiskIos === 0 && t.directDiskIos === 0) return cpu;
  const ios = (n: number, ops: number): string => (ops > 0 ? (n / ops).toFixed(2) : '?');
  return `${cpu}; disk requests per operation ${ios(t.stackDiskIos, t.stackOps)} against ${ios(t.directDiskIos, t.directOps)}`;
}

function unitOf(j: Job): string {
  return j.pattern === 'rand' ? 'IOPS' : 'MiB/s';
}

function valueOf(j: Job, r: WorkloadResult): number {
  const s = r.ns / 1e9;
  return j.pattern === 'rand' ? r.ops / s : r.bytes / MiB / s;
}

export const stackBench: Bench = {
  name: 'stack',
  title: 'Full stack on the simulator: blkfront -> ring -> blkback -> raw file, vs the file directly',
  async run(ctx: BenchContext) {
    const jobs = JOBS.filter((j) => ctx.wants(`stack.${j.id}`));
    const variants = VARIANTS.flatMap((v) => v.jobs.filter((id) => ctx.wants(`stack.${id}.${v.id}`)).map((id) => ({ v, job: JOBS.find((j) => j.id === id)! })));
    if (jobs.length === 0 && variants.length === 0) return;
    const ms = ctx.quick ? 250 : 1000;
    const file = path.join(ctx.outDir, 'stack-disk.img');
    await ensureBackingFile(file, ctx.log);
    const fsInfo = filesystemOf(file);

    const here = path.dirname(new URL(import.meta.url).pathname);
    // Guest RAM on 2 MiB pages (as Xen builds guests from superpages), and the direct side's
    // buffers too (framework/workload.ts alignedBuffer): both sides' I/O memory is physically
    // contiguous, so the block layer can merge either side's sequential I/O alike.
    const sim = await startSim({ dir: `/dev/shm/xenblk-bench-stack-${process.pid}`, nrFrames: 65536, nrGrants: 32768, superpages: true });
    const toolstack = await attachSim({ dir: sim.dir, domid: 0 });
    const front = Worker.start('stack-front', path.join(here, 'stack-front.ts'));
    const back = Worker.start('stack-back', path.join(here, 'stack-back.ts'));
    const direct = Worker.start('stack-direct', path.join(here, 'stack-direct.ts'));
    try {
      await front.call('host', { dir: sim.dir, domid: FRONT_DOMID });
      await back.call('start', { dir: sim.dir, frontendDomid: FRONT_DOMID });
      const vdevs = [DEFAULT_VDEV, ...new Set(variants.flatMap(({ v }) => [v.vdev, v.baseVdev]))];
      for (const vdev of new Set(vdevs)) await createVbd(toolstack.xenstore, { frontendDomid: FRONT_DOMID, vdev, params: file });
      const attached = new Set<string>();
      const attach = async (vdev: string, opts: BlkfrontOptions, plainBuffers = false): Promise<void> => {
        if (attached.has(vdev)) return;
        const info = await front.call<{ features: Record<string, unknown> }>('attach', { vdev, opts, plainBuffers });
        attached.add(vdev);
        const f = info.features;
        ctx.log(`${vdev}: ${f.queues} queue(s), ring order ${f.ringPageOrder}, persistent ${f.persistentGrants}, indirect ${f.indirectSegments}`);
      };
      await attach(DEFAULT_VDEV, {});
      const disks = await back.call<{ backing: string }[]>('disks');
      const oDirect = disks.every((d) => d.backing.includes('O_DIRECT'));
      const { engine } = await direct.call<{ engine: string }>('open', { path: file, direct: oDirect });
      const engineIn = (backing: string): string => (backing.includes('io_uring') ? 'io_uring' : backing.includes('Linux AIO') ? 'aio' : 'threadpool');
      const label: Record<string, string> = { io_uring: 'io_uring (registered buffers)', aio: 'Linux AIO', threadpool: 'libuv threadpool' };
      ctx.note(`stack: I/O engine: ${label[engine] ?? engine} on the direct side, ${disks.every((d) => engineIn(d.backing) === engine) ? 'the same' : 'NOT the same'} in blkback`);
      const cache = oDirect
        ? 'both sides O_DIRECT: no dom0 page cache on either (a cache below this VM\'s disk, if any, serves both alike)'
        : `O_DIRECT refused by ${fsInfo.type}: both sides buffered, so the page cache serves both (${FILE_BYTES / MiB} MiB file < free memory)`;
      ctx.note(`stack: backing file ${file} on ${fsInfo.device} (${fsInfo.type}), ${FILE_BYTES / MiB} MiB; ${cache}`);
      ctx.note(`stack: frontend defaults on this machine: ring order 4, queues min(4, CPUs) = ${Math.min(4, os.availableParallelism())}, persistent grants, indirect 32 segments; the workload's buffers are the device's I/O buffers (Blkfront.allocBuffer: granted to the backend once, data in place, no copy; stack.*.copy uses plain memory, copied through the grant pool); backend: lib/blkback defaults`);

      const profileDir = ctx.profileDir;
      if (profileDir !== undefined) await Promise.all([front.profileStart(), back.profileStart()]);
      const wl = (j: Job, seed: number): Workload => ({ op: j.op, pattern: j.pattern, bs: j.bs, qd: j.qd, ms, span: FILE_BYTES, seed });
      let seed = 1;
      // CPU per operation beside each throughput figure: throughput here moves with the host's
      // disk and with what else runs on these 2 cores, while the CPU one operation costs each
      // process is steadier, and it tells which side an improvement has to come from.
      // The feature comparisons (both sides through the stack) are not tallied.
      const viaStack = (vdev: string, j: Job, cpu?: CpuTally) => async (): Promise<number> => {
        if (cpu === undefined) return valueOf(j, await front.call<WorkloadResult>('run', { vdev, workload: wl(j, seed++) }));
        const b0 = await back.call<number>('cpu-us');
        const d0 = diskIos(fsInfo.device);
        const r = await front.call<WorkloadResult>('run', { vdev, workload: wl(j, seed++) });
        const d1 = diskIos(fsInfo.device);
        const b1 = await back.call<number>('cpu-us');
        if (d0 !== undefined && d1 !== undefined) cpu.stackDiskIos += d1 - d0;
        cpu.stackOps += r.ops;
        cpu.frontUs += r.cpuUs;
        cpu.backUs += b1 - b0;
        return valueOf(j, r);
      };
      const viaFile = (j: Job, cpu: CpuTally) => async (): Promise<number> => {
        const d0 = diskIos(fsInfo.device);
        const r = await direct.call<WorkloadResult>('run', { workload: wl(j, seed++) });
        const d1 = diskIos(fsInfo.device);
        if (d0 !== undefined && d1 !== undefined) cpu.directDiskIos += d1 - d0;
        cpu.directOps += r.ops;
        cpu.directUs += r.cpuUs;
        return valueOf(j, r);
      };

      for (const j of jobs) {
        const cpu = newCpuTally();
        await ctx.measure(
          {
            name: `stack.${j.id}`,
            unit: unitOf(j),
            limit: 'same file directly (same raw-file I/O engine)',
            ...(j.goal !== undefined ? { goal: j.goal } : {}),
            better: 'higher',
            note: `${j.pattern === 'rand' ? 'random' : 'sequential'} ${j.op}s of ${j.bs / KiB} KiB, ${j.qd} in flight, ${ms} ms per sample, over the ${FILE_BYTES / MiB} MiB file`,
          },
          viaStack(DEFAULT_VDEV, j, cpu),
          viaFile(j, cpu),
        );
        ctx.note(`stack.${j.id}: ${cpuNote(cpu)}`);
      }
      for (const { v, job } of variants) {
        await attach(v.baseVdev, v.baseVdev === QUEUES4_VDEV ? { maxQueues: 4 } : {});
        await attach(v.vdev, v.opts, v.plainBuffers === true);
        await ctx.measure(
          {
            name: `stack.${job.id}.${v.id}`,
            unit: unitOf(job),
            limit: v.baseLabel,
            better: 'higher',
            note: `${v.what}; ratio < 1: the feature helps this workload`,
          },
          viaStack(v.vdev, job),
          viaStack(v.baseVdev, job),
        );
      }
      // Whether both sides' memory was on 2 MiB pages, as asked (a kernel may refuse).
      const ram = readStatus(sim.dir).domains.map((d) => `d${d.domid} ${d.superpages}`).join(', ');
      const { hugeKiB } = await direct.call<{ hugeKiB?: number }>('memory');
      ctx.note(`stack: memory: guest RAM on 2 MiB pages: ${ram}; the direct side's buffers: ${hugeKiB === undefined ? 'unknown' : `${(hugeKiB / 1024).toFixed(0)} MiB on 2 MiB pages`}`);
      // What blkback saw on each disk over the whole run (all figures that used it).
      type DiskStats = { devid: number; rings: number; ringPageOrder: number; backing: string; stats: Record<string, number> };
      for (const d of await back.call<DiskStats[]>('disks')) {
        const st = d.stats;
        const reqs = (st['rd_req'] ?? 0) + (st['wr_req'] ?? 0);
        const per = (n: number | undefined): string => (n !== undefined && n > 0 ? (reqs / n).toFixed(1) : '-');
        ctx.note(`stack: blkback on ${canonicalName(d.devid)} (${d.rings} ring(s) of order ${d.ringPageOrder}): ${st['rd_req']} reads, ${st['wr_req']} writes, ${st['merged_req']} merged into a neighbour, ${(reqs > 0 ? (st['io_vectors'] ?? 0) / reqs : 0).toFixed(2)} I/O vector entries per read or write, ${st['persistent_grants']} persistent grants mapped at the end (${st['pgrant_evictions']} evicted on the way), latency p50 ${st['p50_us']} us / p99 ${st['p99_us']} us; ${st['events']} events taken (${per(st['events'])} requests each), ${st['notifies']} notifications sent (${per(st['notifies'])} requests each); backing: ${d.backing}`);
      }
      if (profileDir !== undefined) {
        await front.profileStop(path.join(profileDir, 'stack-front.cpuprofile'));
        await back.profileStop(path.join(profileDir, 'stack-back.cpuprofile'));
      }
    } finally {
      await front.stop();
      await back.stop();
      await direct.stop();
      await toolstack.close();
      await sim.stop();
    }
  },
};
