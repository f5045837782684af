// The limit of the full-stack benchmark: the same backing file read and written directly, in a
// process of its own like the frontend, by the same Node I/O calls the raw-file backend makes
// (FileHandle.readv / writev at a position, on libuv's threadpool), at the same queue depth,
// with O_DIRECT when the backend uses it. Run as a worker (framework/worker.ts):
//   open {path, direct} -> {}
//   run {workload} -> WorkloadResult
import { constants as fsc, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { runWorkload, type IoTarget, type Workload } from './framework/workload.ts';
import { serveWorker } from './framework/worker.ts';

let fh: FileHandle | undefined;
let target: IoTarget | undefined;

serveWorker(
  {
    open: async (a: { path: string; direct: boolean }) => {
      const h = await fsp.open(a.path, fsc.O_RDWR | (a.direct ? fsc.O_DIRECT : 0));
      fh = h;
      target = {
        read: (off, buf) => h.readv([buf], off),
        write: (off, buf) => h.writev([buf], off),
      };
      return {};
    },
    run: (a: { workload: Workload }) => {
      if (target === undefined) throw new Error('run before open');
      return runWorkload(target, a.workload);
    },
  },
  async () => {
    await fh?.close();
  },
);
