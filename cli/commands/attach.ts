// `xenblk attach --vdev xvdb [--domid N] [--sim DIR | --xen] [--write IN [--offset BYTES]]
// [--discard OFFSET:LENGTH] [--dump OUT] [--info]`: act as a guest's blkfront for one disk.
// Connects, does the actions in that order (write, then discard, then dump, then info), flushes
// what it wrote, and disconnects (Closing, Closed) so the disk can be attached again.
import process from 'node:process';
import fs from 'node:fs';
import { once } from 'node:events';
import { XEN_EVTCHN_DEVICE, openHost } from '../../lib/host/open.ts';
import { Blkfront } from '../../lib/blkfront/device.ts';
import type { BlkfrontOptions, BlockInfo } from '../../lib/blkfront/device.ts';
import type { BlkifAbi } from '../../protocol/blkif.ts';
import { parseArgs } from '../args.ts';

const USAGE = `usage: xenblk attach --vdev NAME [options] ACTION...
  --vdev NAME                  virtual device: xvdb, d1p0, 51728, ...
  --domid N                    the domain to act as (simulator default 1; on Xen, the one we run in)
  --sim DIR | --xen            host: the simulator in DIR (default: real Xen if /dev/xen exists, else the simulator)
actions (done in this order):
  --write IN                   write file IN ('-' = stdin) to the disk, then flush
  --offset BYTES               where --write starts (default 0; a multiple of the sector size)
  --discard OFFSET:LENGTH      discard LENGTH bytes from OFFSET (sector multiples; the
                               backend must offer feature-discard), then flush
  --dump OUT                   read the whole disk into OUT ('-' = stdout)
  --info                       print size, sector sizes and negotiated features as JSON
frontend options:
  --abi x86_64|x86_32          ring ABI written as protocol (default x86_64)
  --queues N                   most queues (default min(4, CPUs))
  --max-ring-page-order N      0..4 (default 4)
  --max-indirect-segments N    0 disables indirect requests (default 32)
  --no-persistent              do not offer persistent grants
  --wait MS                    wait for the device to appear (default 10000)
  --timeout MS                 wait for the backend to connect (default 30000)
`;

interface Args {
  vdev: string;
  domid: number | undefined;
  sim: string | undefined;
  xen: boolean;
  write: string | undefined;
  offset: number;
  discard: { offset: number; length: number } | undefined;
  dump: string | undefined;
  info: boolean;
  front: { -readonly [K in keyof BlkfrontOptions]?: BlkfrontOptions[K] };
}

function int(name: string, v: string, min: number, max: number): number {
  if (!/^[0-9]+$/.test(v) || Number(v) < min || Number(v) > max) throw new Error(`${name} takes an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return Number(v);
}

function parse(argv: string[]): Args | string {
  let vdev: string | undefined;
  const a: Omit<Args, 'vdev'> = { domid: undefined, sim: undefined, xen: false, write: undefined, offset: 0, discard: undefined, dump: undefined, info: false, front: { deviceTimeoutMs: 10_000 } };
  for (let i = 0; i < argv.length; i++) {
    const opt = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${opt} needs a value`);
      return v;
    };
    switch (opt) {
      case '--vdev': vdev = val(); break;
      case '--domid': a.domid = int(opt, val(), 0, 0x7fef); break;
      case '--sim': a.sim = val(); break;
      case '--xen': a.xen = true; break;
      case '--write': a.write = val(); break;
      case '--offset': a.offset = int(opt, val(), 0, Number.MAX_SAFE_INTEGER); break;
      case '--discard': {
        const v = val();
        const m = /^([0-9]+):([0-9]+)$/.exec(v);
        if (m === null) return `--discard takes OFFSET:LENGTH in bytes, got ${v}`;
        a.discard = { offset: int(opt, m[1]!, 0, Number.MAX_SAFE_INTEGER), length: int(opt, m[2]!, 1, Number.MAX_SAFE_INTEGER) };
        break;
      }
      case '--dump': a.dump = val(); break;
      case '--info': a.info = true; break;
      case '--abi': {
        const v = val();
        if (v !== 'x86_64' && v !== 'x86_32') return `--abi is x86_64 or x86_32, got ${v}`;
        a.front.abi = v as BlkifAbi;
        break;
      }
      case '--queues': a.front.maxQueues = int(opt, val(), 1, 64); break;
      case '--max-ring-page-order': a.front.maxRingPageOrder = int(opt, val(), 0, 4); break;
      case '--max-indirect-segments': a.front.maxIndirectSegments = int(opt, val(), 0, 4096); break;
      case '--no-persistent': a.front.persistent = false; break;
      case '--wait': a.front.deviceTimeoutMs = int(opt, val(), 0, 86_400_000); break;
      case '--timeout': a.front.connectTimeoutMs = int(opt, val(), 1, 86_400_000); break;
      case '--help': case '-h': return '';
      default: return `unknown argument ${opt}`;
    }
  }
  if (vdev === undefined) return '--vdev NAME is required';
  if (a.write === undefined && a.discard === undefined && a.dump === undefined && !a.info) return 'nothing to do: give --write, --discard, --dump and/or --info';
  if (a.sim !== undefined && a.xen) return '--sim and --xen exclude each other';
  if (a.dump === '-' && a.info) return '--dump - and --info both write to stdout';
  if (a.write === '-' && a.dump === '-') return 'stdin and stdout cannot both carry disk data here';
  return { ...a, vdev };
}

/** The chunk each request of the CLI covers (many blkif requests each). */
const CHUNK = 1024 * 1024;

async function writeAll(out: NodeJS.WritableStream, data: Uint8Array): Promise<void> {
  if (!out.write(data)) await once(out, 'drain');
}

/** Reads in flight while dumping, and the bytes of each. */
const DUMP_WINDOW = 4;
const DUMP_CHUNK = 256 * 1024;

/**
 * The dump's read buffers: the device's I/O buffers, so the data is granted in place instead of
 * copied by blkfront. They come from the same grant budget as blkfront's own pages (on Linux
 * gntalloc's `limit`, 1024 pages by default), hence 4 x 256 KiB; where the budget is spent,
 * plain memory does (blkfront then copies).
 */
function dumpBuffers(f: Blkfront, bytes: number): { bufs: Buffer[]; granted: boolean } {
  const bufs: Buffer[] = [];
  try {
    for (let i = 0; i < DUMP_WINDOW; i++) bufs.push(f.allocBuffer(bytes));
    return { bufs, granted: true };
  } catch {
    for (const b of bufs) f.freeBuffer(b);
    return { bufs: Array.from({ length: DUMP_WINDOW }, () => Buffer.alloc(bytes)), granted: false };
  }
}

async function dump(f: Blkfront, info: BlockInfo, target: string, signal: AbortSignal): Promise<number> {
  const total = info.sectors * info.sectorSize;
  const perChunk = Math.max(1, Math.floor(DUMP_CHUNK / info.sectorSize));
  const toStdout = target === '-';
  const fd = toStdout ? undefined : fs.openSync(target, 'w');
  const { bufs, granted } = dumpBuffers(f, perChunk * info.sectorSize);
  try {
    // A regular file is cut to the disk's size; a device, FIFO or /dev/null cannot be truncated.
    if (fd !== undefined && fs.fstatSync(fd).isFile()) fs.ftruncateSync(fd, 0);
    // A window of reads in flight, written out in order; a buffer is read into again once its
    // data is out (a file write is synchronous; stdout gets a copy, since a pipe may keep the
    // buffer until it drains).
    const window: Promise<Buffer>[] = [];
    let next = 0;
    let written = 0;
    let k = 0;
    const issue = (): void => {
      const n = Math.min(perChunk, info.sectors - next);
      const buf = bufs[k++ % DUMP_WINDOW]!.subarray(0, n * info.sectorSize);
      const at = next;
      window.push(f.read(at, buf, { signal }).then(() => buf));
      next += n;
    };
    while (next < info.sectors && window.length < DUMP_WINDOW) issue();
    while (window.length > 0) {
      const buf = await window.shift()!;
      if (toStdout) await writeAll(process.stdout, Buffer.from(buf));
      else fs.writeSync(fd!, buf, 0, buf.length, written);
      written += buf.length;
      if (next < info.sectors) issue();
    }
    if (written !== total) throw new Error(`dumped ${written} of ${total} bytes`);
    return written;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
    // A read abandoned by an error may still be on a ring; disconnect() frees what stays.
    if (granted) for (const b of bufs) { try { f.freeBuffer(b); } catch { /* still in use */ } }
  }
}

async function* chunksOf(source: string): AsyncGenerator<Buffer> {
  const stream = source === '-' ? process.stdin : fs.createReadStream(source, { highWaterMark: CHUNK });
  for await (const c of stream) yield c as Buffer;
}

async function write(f: Blkfront, info: BlockInfo, source: string, offset: number, signal: AbortSignal): Promise<number> {
  const ss = info.sectorSize;
  if (offset % ss !== 0) throw new Error(`--offset ${offset} is not a multiple of the sector size ${ss}`);
  const diskBytes = info.sectors * ss;
  let sector = offset / ss;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let total = 0;
  const flushWhole = async (): Promise<void> => {
    const whole = pendingBytes - (pendingBytes % ss);
    if (whole === 0) return;
    const all = Buffer.concat(pending, pendingBytes);
    if (sector * ss + whole > diskBytes) throw new Error(`input does not fit: the disk is ${diskBytes} bytes`);
    await f.write(sector, all.subarray(0, whole), { signal });
    sector += whole / ss;
    pending = [all.subarray(whole)];
    pendingBytes -= whole;
  };
  for await (const chunk of chunksOf(source)) {
    pending.push(chunk);
    pendingBytes += chunk.length;
    total += chunk.length;
    if (pendingBytes >= CHUNK) await flushWhole();
  }
  await flushWhole();
  if (pendingBytes > 0) {
    // A partial last sector: read it, overlay the tail, write it back.
    if ((sector + 1) * ss > diskBytes) throw new Error(`input does not fit: the disk is ${diskBytes} bytes`);
    const last = Buffer.alloc(ss);
    await f.read(sector, last, { signal });
    Buffer.concat(pending, pendingBytes).copy(last, 0);
    await f.write(sector, last, { signal });
  }
  await f.flush({ signal });
  return total;
}

/** `discard(f, info, range)` discards whole sectors (one blkif discard request), then flushes. */
async function discard(f: Blkfront, info: BlockInfo, range: { offset: number; length: number }, signal: AbortSignal): Promise<void> {
  const ss = info.sectorSize;
  if (range.offset % ss !== 0 || range.length % ss !== 0) throw new Error(`--discard ${range.offset}:${range.length} is not in whole sectors of ${ss} bytes`);
  if (range.offset + range.length > info.sectors * ss) throw new Error(`--discard ${range.offset}:${range.length} runs past the end of the disk (${info.sectors * ss} bytes)`);
  if (!info.features.discard) throw new Error(`the backend of ${f.location.name} does not offer discard (feature-discard)`);
  await f.discard(range.offset / ss, range.length / ss, { signal });
  await f.flush({ signal });
}

/** `run(argv)` attaches, does the actions, detaches; 0 on success. */
export async function run(argv: string[]): Promise<number> {
  const a = parseArgs('attach', argv, parse, USAGE);
  if (typeof a === 'number') return a;
  const say = (m: string): void => { process.stderr.write(`xenblk attach: ${m}\n`); };
  // On the simulator a guest is whichever domain we say (default 1); on Xen it is the domain
  // we run in, unless --domid says otherwise.
  const simulated = !a.xen && (a.sim !== undefined || !!process.env.XENBLK_SIM_DIR || !fs.existsSync(XEN_EVTCHN_DEVICE));
  const domid = a.domid ?? (simulated && !process.env.XENBLK_DOMID ? 1 : undefined);
  const host = await openHost({
    ...(a.sim !== undefined ? { sim: a.sim } : {}),
    ...(a.xen ? { xen: true } : {}),
    ...(domid !== undefined ? { domid } : {}),
  });
  const stop = new AbortController();
  const onSignal = (): void => stop.abort(new Error('interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let f: Blkfront | undefined;
  try {
    f = await Blkfront.attach(host, a.vdev, { ...a.front, signal: stop.signal });
    const info = await f.getInfo();
    say(`${f.location.name} (${f.location.devid}) of domain ${host.domid}: ${info.sectors} sectors of ${info.sectorSize} bytes${info.readWrite ? '' : ', read-only'}`);
    if (a.write !== undefined) {
      const n = await write(f, info, a.write, a.offset, stop.signal);
      say(`wrote ${n} bytes at offset ${a.offset}`);
    }
    if (a.discard !== undefined) {
      await discard(f, info, a.discard, stop.signal);
      say(`discarded ${a.discard.length} bytes at offset ${a.discard.offset}`);
    }
    if (a.dump !== undefined) {
      const before = f.stats().inPlace;
      const n = await dump(f, info, a.dump, stop.signal);
      say(`dumped ${n} bytes${a.dump === '-' ? '' : ` to ${a.dump}`}; ${f.stats().inPlace - before} requests granted in place from I/O buffers`);
    }
    if (a.info) {
      const now = await f.getInfo();
      process.stdout.write(`${JSON.stringify({
        device: { name: f.location.name, devid: f.location.devid, frontend: f.location.frontendPath, backend: f.location.backendPath, backendDomid: f.location.backendDomid },
        sectors: now.sectors, sectorSize: now.sectorSize, physicalSectorSize: now.physicalSectorSize, bytes: now.sectors * now.sectorSize,
        readWrite: now.readWrite, features: now.features,
      }, null, 2)}\n`);
    }
    return 0;
  } catch (e) {
    say(e instanceof Error ? e.message : String(e));
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await f?.disconnect();
    await host.close().catch(() => undefined);
  }
}
