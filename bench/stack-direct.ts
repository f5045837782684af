// The limit of the full-stack benchmark: the same backing file read and written directly, in a
// process of its own like the frontend, through the very I/O engine blkback serves it with
// (lib/backends/raw-file.ts: O_DIRECT when the filesystem allows it, Linux AIO on it, libuv's
// threadpool otherwise), at the same queue depth. So the ratio is what the ring, the grants,
// the event channels and the two extra processes cost, not a difference of I/O engines.
// Run as a worker (framework/worker.ts):
//   open {path, direct} -> {aio}
//   run {workload} -> WorkloadResult
//   memory {} -> {hugeKiB}                       anonymous memory on 2 MiB pages (the lanes' buffers)
import { openRawFile, type RawFileDisk } from '../lib/backends/raw-file.ts';
import { hugeAnonKiB, runWorkload, type IoTarget, type Workload } from './framework/workload.ts';
import { serveWorker } from './framework/worker.ts';

let disk: RawFileDisk | undefined;
let target: IoTarget | undefined;

serveWorker(
  {
    open: async (a: { path: string; direct: boolean }) => {
      const d = await openRawFile(a.path, { direct: a.direct ? 'on' : 'off' });
      disk = d;
      target = {
        read: (off, buf) => d.read(off, [buf]),
        write: (off, buf) => d.write(off, [buf]),
      };
      return { aio: d.aio };
    },
    run: (a: { workload: Workload }) => {
      if (target === undefined) throw new Error('run before open');
      return runWorkload(target, a.workload);
    },
    memory: () => ({ hugeKiB: hugeAnonKiB() }),
  },
  async () => {
    await disk?.close();
  },
);
