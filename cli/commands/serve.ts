// `xenblk serve FILE --domid N --vdev xvdb [--readonly] [--sim DIR | --xen] ...`: act as the
// toolstack and the backend at once. It creates the disk's XenStore directories for domain N
// (as `xl block-attach` would), serves FILE to it with blkback until SIGINT/SIGTERM, then
// hot-unplugs the disk (asks both ends to close, waits, deletes the directories) and releases
// everything. If the directories already exist for the same FILE, a previous `serve` died: it
// takes them over (a backend restart) instead of failing.
import process from 'node:process';
import path from 'node:path';
import fs from 'node:fs';
import { openHost } from '../../lib/host/open.ts';
import { Blkback } from '../../lib/blkback/backend.ts';
import type { BlkbackLimits } from '../../lib/blkback/handshake.ts';
import { serveControl, defaultControlDir } from '../../lib/blkback/control.ts';
import { openBackend } from '../../lib/backends/open.ts';
import type { IoEngine } from '../../lib/backends/raw-file.ts';
import { pollDescription } from '../../native/fd-watch.ts';
import { ToolstackError, createVbd, removeVbd, vbdPaths, waitForDomain } from '../../lib/toolstack/vbd.ts';
import type { VbdPaths } from '../../lib/toolstack/vbd.ts';
import { parseArgs } from '../args.ts';

// More threads for the file I/O blkback keeps in flight (libuv's default is 4). Only effective
// if set before the first threadpool task; harmless otherwise.
process.env.UV_THREADPOOL_SIZE ??= '16';

const USAGE = `usage: xenblk serve FILE --domid N --vdev NAME [options]
  FILE                       raw disk image (or ram:BYTES for a RAM disk)
  --domid N                  frontend domain
  --vdev NAME                virtual device: xvdb, d1p0, 51728, ...
  --readonly                 serve read-only (mode r)
  --sim DIR | --xen          host: the simulator in DIR (default: real Xen if /dev/xen exists, else the simulator)
  --create SIZE              create FILE (sparse) of SIZE bytes (64M, 2G, ...) if it does not exist
  --sector-size 512|4096     logical sector size advertised (default 512)
  --direct auto|on|off       O_DIRECT policy (default auto)
  --io-engine ENGINE         auto|io_uring|aio|threadpool for O_DIRECT I/O (default auto: io_uring,
                             else Linux AIO, else the threadpool; or XENBLK_IO_ENGINE)
  --queues N                 multi-queue-max-queues (default 4)
  --max-ring-page-order N    0..4 (default 4)
  --max-indirect-segments N  0..4096 (default 256; 0 disables indirect requests)
  --no-persistent            do not offer persistent grants
  --grant-copy               copy data through the hypervisor (grant copy, as QEMU's qdisk)
                             instead of mapping the guest's pages; no persistent grants
  --kind KIND                backend directory kind (default vbd)
  --quiet                    only errors on stderr
`;

interface Args {
  file: string;
  domid: number;
  vdev: string;
  readonly: boolean;
  sim: string | undefined;
  xen: boolean;
  create: number | undefined;
  sectorSize: 512 | 4096;
  direct: 'auto' | 'on' | 'off';
  engine: IoEngine | 'auto' | undefined;
  limits: Partial<BlkbackLimits>;
  kind: string;
  quiet: boolean;
}

function int(name: string, v: string, min: number, max: number): number {
  if (!/^[0-9]+$/.test(v) || Number(v) < min || Number(v) > max) throw new Error(`${name} takes an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return Number(v);
}

/** `bytes(name, v)` is a size given as BYTES or with a binary suffix (64M, 2G: as truncate(1) reads them). */
function bytes(name: string, v: string): number {
  const m = /^([0-9]+)([KMGT]?)(i?B)?$/i.exec(v);
  const scale = m === null ? 0 : 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase());
  const n = m === null ? NaN : Number(m[1]) * scale;
  if (!Number.isSafeInteger(n) || n < 512 || n % 512 !== 0) {
    throw new Error(`${name} takes a size of at least 512 bytes in whole sectors (e.g. 67108864, 64M, 2G), got ${JSON.stringify(v)}`);
  }
  return n;
}

/** `checkBacking(params, a)` is why `params` cannot be served (unopenable, or smaller than one sector), or undefined. */
async function checkBacking(params: string, a: Args): Promise<string | undefined> {
  let disk;
  try {
    disk = await openBackend(params, { readonly: a.readonly, direct: a.direct, engine: a.engine, sectorSize: a.sectorSize });
  } catch (e) {
    return `cannot serve ${params}: ${(e as Error).message}`;
  }
  try {
    const size = await disk.size();
    if (size < disk.sectorSize) {
      // size() counts whole sectors; say how big the file really is.
      const bytes = params.startsWith('ram:') ? size : fs.statSync(params).size;
      return `cannot serve ${params}: too small (${bytes} bytes, less than one ${disk.sectorSize}-byte sector)`;
    }
    return undefined;
  } finally {
    await disk.close();
  }
}

function parse(argv: string[]): Args | string {
  let file: string | undefined;
  let domid: number | undefined;
  let vdev: string | undefined;
  const a: Omit<Args, 'file' | 'domid' | 'vdev'> = {
    readonly: false, sim: undefined, xen: false, create: undefined, sectorSize: 512, direct: 'auto', engine: undefined, limits: {}, kind: 'vbd', quiet: false,
  };
  const limits: { -readonly [K in keyof BlkbackLimits]?: BlkbackLimits[K] } = {};
  for (let i = 0; i < argv.length; i++) {
    const opt = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${opt} needs a value`);
      return v;
    };
    switch (opt) {
      case '--domid': domid = int(opt, val(), 0, 0x7fef); break;
      case '--vdev': vdev = val(); break;
      case '--readonly': a.readonly = true; break;
      case '--sim': a.sim = val(); break;
      case '--xen': a.xen = true; break;
      case '--create': a.create = bytes(opt, val()); break;
      case '--sector-size': {
        const v = val();
        if (v !== '512' && v !== '4096') return `--sector-size is 512 or 4096, got ${v}`;
        a.sectorSize = Number(v) as 512 | 4096;
        break;
      }
      case '--direct': {
        const v = val();
        if (v !== 'auto' && v !== 'on' && v !== 'off') return `--direct is auto, on or off, got ${v}`;
        a.direct = v;
        break;
      }
      case '--io-engine': {
        const v = val();
        if (v !== 'auto' && v !== 'io_uring' && v !== 'aio' && v !== 'threadpool') return `--io-engine is auto, io_uring, aio or threadpool, got ${v}`;
        a.engine = v;
        break;
      }
      case '--queues': limits.maxQueues = int(opt, val(), 1, 256); break;
      case '--max-ring-page-order': limits.maxRingPageOrder = int(opt, val(), 0, 4); break;
      case '--max-indirect-segments': limits.maxIndirectSegments = int(opt, val(), 0, 4096); break;
      case '--no-persistent': limits.persistent = false; break;
      case '--grant-copy': limits.grantCopy = true; break;
      case '--kind': a.kind = val(); break;
      case '--quiet': a.quiet = true; break;
      case '--help': case '-h': return '';
      default:
        if (opt.startsWith('-')) return `unknown option ${opt}`;
        if (file !== undefined) return `one FILE only (got ${file} and ${opt})`;
        file = opt;
    }
  }
  if (file === undefined) return 'FILE is required';
  if (domid === undefined) return '--domid N is required';
  if (vdev === undefined) return '--vdev NAME is required';
  if (a.sim !== undefined && a.xen) return '--sim and --xen exclude each other';
  return { ...a, file, domid, vdev, limits };
}

/** `run(argv)` serves until interrupted; 0 after a clean teardown. */
export async function run(argv: string[]): Promise<number> {
  const a = parseArgs('serve', argv, parse, USAGE);
  if (typeof a === 'number') return a;
  const say = (msg: string): void => { if (!a.quiet) process.stderr.write(`xenblk serve: ${msg}\n`); };

  const params = a.file.startsWith('ram:') ? a.file : path.resolve(a.file);
  if (!params.startsWith('ram:') && !fs.existsSync(params)) {
    if (a.create === undefined) {
      process.stderr.write(`xenblk serve: ${params} does not exist (use --create SIZE to make a sparse image)\n`);
      return 1;
    }
    fs.writeFileSync(params, '');
    fs.truncateSync(params, a.create);
  }

  // Refuse a backing we could never serve before any XenStore entry exists: as a toolstack's
  // hotplug script would, so a bad FILE leaves nothing half-created behind.
  const refusal = await checkBacking(params, a);
  if (refusal !== undefined) {
    process.stderr.write(`xenblk serve: ${refusal}\n`);
    return 1;
  }

  const host = await openHost({ ...(a.sim !== undefined ? { sim: a.sim } : {}), ...(a.xen ? { xen: true } : {}) });
  const xs = host.xenstore;
  // Ctrl-C from here on ends the wait for the domain or the serving, then tears down.
  const interrupted = new AbortController();
  const onSignal = (): void => interrupted.abort(new Error('interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let blkback: Blkback | undefined;
  let control: Awaited<ReturnType<typeof serveControl>> | undefined;
  let paths: VbdPaths | undefined;
  let created = false;
  try {
    paths = vbdPaths(a.domid, a.vdev, host.domid, a.kind);
    if (!(await xs.isDomainIntroduced(a.domid)) && a.domid !== 0) {
      say(`waiting for domain ${a.domid} to exist`);
      try {
        await waitForDomain(xs, a.domid, interrupted.signal);
      } catch {
        return interrupted.signal.aborted ? 0 : 1;
      }
    }
    const existing = await xs.tryRead(`${paths.backend}/params`);
    if (existing !== undefined) {
      if (existing !== params) throw new Error(`${paths.vdev} of domain ${a.domid} already exists, serving ${existing}`);
      // Take over only a directory that is what createVbd would have written: a broken one is
      // refused here, naming the key, rather than served into an endless fatal-error loop.
      const want: Record<string, string> = { 'frontend-id': String(a.domid), frontend: paths.frontend };
      for (const [key, value] of Object.entries(want)) {
        const seen = await xs.tryRead(`${paths.backend}/${key}`);
        if (seen?.trim() !== value) {
          throw new ToolstackError(`${paths.backend}/${key} is ${JSON.stringify(seen)}, expected ${JSON.stringify(value)}: not taking over a broken disk directory`, 'EINVAL', `${paths.backend}/${key}`);
        }
      }
      say(`taking over ${paths.backend} (a previous backend died)`);
    } else {
      await createVbd(xs, { frontendDomid: a.domid, backendDomid: host.domid, vdev: a.vdev, params, readonly: a.readonly, kind: a.kind });
      created = true;
    }
    const p = paths;
    blkback = await Blkback.start({
      host,
      frontendDomid: a.domid,
      devid: p.devid,
      kind: a.kind,
      limits: a.limits,
      openBacking: (r) => openBackend(r.params, { readonly: r.readonly, direct: a.direct, engine: a.engine, sectorSize: a.sectorSize }),
      log: (m) => say(m),
    });
    const b = blkback;
    const startedAt = new Date().toISOString();
    control = await serveControl(defaultControlDir(), () => ({
      pid: process.pid, host: host.kind, backendDomid: host.domid, startedAt, disks: b.disks(),
    }));
    say(`serving ${params} as ${p.vdev} (${p.devid}) to domain ${a.domid}${a.readonly ? ' read-only' : ''} on ${host.kind === 'sim' ? 'the simulator' : 'Xen'}; events through ${pollDescription}; Ctrl-C to stop`);

    // Until a signal, or until the disk's directory disappears (the frontend domain died and
    // its devices were removed, or an operator removed it).
    const why = await new Promise<string>((resolve) => {
      if (interrupted.signal.aborted) resolve('interrupted');
      interrupted.signal.addEventListener('abort', () => resolve('interrupted'), { once: true });
      const w = xs.watch(p.backend);
      void (async () => {
        try {
          for await (const _ev of w) {
            if ((await xs.tryRead(p.backend)) === undefined) { resolve('the disk was removed'); break; }
          }
        } catch { /* connection closed at teardown */ }
      })();
    });
    say(`${why}: shutting down`);
    // A second signal during teardown exits at once.
    const hard = (): void => { process.stderr.write('xenblk serve: interrupted during teardown\n'); process.exit(130); };
    process.once('SIGINT', hard);
    process.once('SIGTERM', hard);
    if ((await xs.tryRead(p.backend)) !== undefined) {
      const r = await removeVbd(xs, p, { timeoutMs: 5000 });
      if (!r.backendClosed) say('the frontend did not close in time: removed anyway');
    }
    created = false;
    return 0;
  } finally {
    await blkback?.stop().catch(() => undefined);
    await control?.close().catch(() => undefined);
    if (created && paths !== undefined) await removeVbd(xs, paths, { force: true }).catch(() => undefined);
    await host.close().catch(() => undefined);
  }
}
