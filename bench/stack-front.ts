// The frontend process of the memory and full-stack benchmarks: a guest (domain N) of the
// simulated host using lib/blkfront, the product's frontend, through its Block API. Run as a
// worker (framework/worker.ts):
//   host {dir, domid} -> {}                      attach as the guest domain
//   attach {vdev, opts, plainBuffers} -> BlockInfo
//                                                Blkfront.attach(host, vdev, opts); the workload's
//                                                buffers are the device's I/O buffers (granted in
//                                                place), or with plainBuffers anonymous memory that
//                                                blkfront copies through its grant pool
//   run {vdev, workload} -> WorkloadResult       framework/workload.ts on that disk
//   detach {vdev} -> {}
import { attachSim, type SimHost } from '../lib/sim/attach.ts';
import { Blkfront, type BlkfrontOptions } from '../lib/blkfront/device.ts';
import { runWorkload, type IoTarget, type Workload } from './framework/workload.ts';
import { serveWorker } from './framework/worker.ts';

let host: SimHost | undefined;
const disks = new Map<string, { dev: Blkfront; target: IoTarget }>();

function disk(vdev: string): { dev: Blkfront; target: IoTarget } {
  const d = disks.get(vdev);
  if (d === undefined) throw new Error(`${vdev} is not attached`);
  return d;
}

serveWorker(
  {
    host: async (a: { dir: string; domid: number }) => {
      host = await attachSim({ dir: a.dir, domid: a.domid });
      return {};
    },
    attach: async (a: { vdev: string; opts?: BlkfrontOptions; plainBuffers?: boolean }) => {
      if (host === undefined) throw new Error('attach before host');
      const dev = await Blkfront.attach(host, a.vdev, a.opts ?? {});
      const info = await dev.getInfo();
      const per = info.sectorSize;
      // Byte offsets to sectors; buffers are whole sectors.
      const target: IoTarget = {
        read: (off, buf) => dev.read(off / per, buf),
        write: (off, buf) => dev.write(off / per, buf),
        ...(a.plainBuffers === true ? {} : { alloc: (bytes: number) => dev.allocBuffer(bytes) }),
      };
      disks.set(a.vdev, { dev, target });
      return info;
    },
    run: (a: { vdev: string; workload: Workload }) => runWorkload(disk(a.vdev).target, a.workload),
    stats: (a: { vdev: string }) => disk(a.vdev).dev.stats(),
    detach: async (a: { vdev: string }) => {
      await disk(a.vdev).dev.disconnect();
      disks.delete(a.vdev);
      return {};
    },
  },
  async () => {
    for (const d of disks.values()) await d.dev.disconnect().catch(() => undefined);
    await host?.close();
  },
);
