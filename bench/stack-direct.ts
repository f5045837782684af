// The limit of the full-stack benchmark: the same backing file read and written directly, in a
// process of its own like the frontend, through the very I/O engine blkback serves it with
// (lib/backends/raw-file.ts: O_DIRECT when the filesystem allows it, io_uring or Linux AIO on
// it, libuv's threadpool otherwise), at the same queue depth. So the ratio is what the ring, the grants,
// the event channels and the two extra processes cost, not a difference of I/O engines.
// Run as a worker (framework/worker.ts):
//   open {path, direct} -> {engine}
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
      // The lanes' buffers are registered with the engine where it can (io_uring), as fio's
      // fixedbufs does and as blkback registers its persistently mapped grants: each is seen
      // again on every I/O of its lane.
      const seen = new Set<ArrayBufferLike>();
      const register = (buf: Uint8Array): void => {
        if (seen.has(buf.buffer)) return;
        seen.add(buf.buffer);
        d.registerMemory?.(new Uint8Array(buf.buffer));
      };
      target = {
        read: (off, buf) => { register(buf); return d.read(off, [buf]); },
        write: (off, buf) => { register(buf); return d.write(off, [buf]); },
      };
      return { engine: d.engine };
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
