// The toolstack's part of a virtual disk, as xl/libxl does it (libxl_disk.c device_disk_add,
// libxl_device.c libxl__device_generic_add / libxl__initiate_device_generic_remove):
//
// create: in one transaction, the frontend directory /local/domain/<fe>/device/vbd/<devid>
//   owned by the frontend domain with read access for the backend domain, and the backend
//   directory /local/domain/<be>/backend/vbd/<fe>/<devid> owned by the backend domain with
//   read access for the frontend: each end can write only its own half. Keys written inherit
//   those permissions. Both states start at Initialising.
// remove: online=0 and backend state=Closing in one transaction (the hot-unplug request),
//   wait (bounded) for the backend to reach Closed, then delete both directories (and parent
//   directories left empty, as libxl__xs_path_cleanup does). Unplugging before the ends have
//   closed corrupts the ring in real guests, so removal waits unless forced.
import type { Xenstore, XenstoreOps } from '../../xenstore/xenstore.ts';
import type { XsPermission } from '../../protocol/xs-wire.ts';
import { XenbusState, parseXenbusState } from '../../protocol/xenbus-state.ts';
import { resolveDevice } from '../../protocol/device-number.ts';

/** A disk to create for a frontend domain. */
export interface VbdConfig {
  readonly frontendDomid: number;
  /** Backend domain (default 0). */
  readonly backendDomid?: number;
  /** Virtual device: a name (`xvdb`, `d1p0`) or number (`51728`). */
  readonly vdev: string;
  /** What the backend opens (`/srv/disk.img`, `ram:67108864`, ...). */
  readonly params: string;
  readonly readonly?: boolean;
  /** Backend `type` (default `file`; libxl writes `phy` or `qdisk`). */
  readonly type?: string;
  /** `disk` (default) or `cdrom`. */
  readonly deviceType?: 'disk' | 'cdrom';
  /** Directory under backend/ (default `vbd`). */
  readonly kind?: string;
  readonly removable?: boolean;
  readonly bootable?: boolean;
  /** `discard-enable` (default: not written, which the backend reads as enabled). */
  readonly discardEnable?: boolean;
  /** `protocol` in the frontend directory, as libxl writes it for guests of a known ABI. */
  readonly protocol?: 'x86_64-abi' | 'x86_32-abi';
  /** `trusted` in the frontend directory (blkif.h: default 1). */
  readonly trusted?: boolean;
}

/** Where a disk lives in XenStore. */
export interface VbdPaths {
  readonly frontendDomid: number;
  readonly backendDomid: number;
  readonly devid: number;
  /** Canonical name of the device (`xvdb`). */
  readonly vdev: string;
  readonly kind: string;
  readonly frontend: string;
  readonly backend: string;
}

/** A toolstack operation that could not be done, naming the path involved. */
export class ToolstackError extends Error {
  override readonly name = 'ToolstackError';
  constructor(message: string, readonly code: string, readonly path: string) {
    super(message);
  }
}

/** `vbdPaths(frontendDomid, vdev, backendDomid?, kind?)` is where the disk's two directories are. */
export function vbdPaths(frontendDomid: number, vdev: string, backendDomid = 0, kind = 'vbd'): VbdPaths {
  const dev = resolveDevice(vdev);
  return {
    frontendDomid,
    backendDomid,
    devid: dev.number,
    vdev: dev.name,
    kind,
    frontend: `/local/domain/${frontendDomid}/device/vbd/${dev.number}`,
    backend: `/local/domain/${backendDomid}/backend/${kind}/${frontendDomid}/${dev.number}`,
  };
}

/**
 * `waitForDomain(xs, domid, signal?)` resolves once `domid` exists (IS_DOMAIN_INTRODUCED, woken
 * by @introduceDomain). A toolstack attaches disks only to existing domains: xenstored refuses
 * permissions that name a domain that does not exist.
 */
export async function waitForDomain(xs: Xenstore, domid: number, signal?: AbortSignal): Promise<void> {
  if (domid === 0 || await xs.isDomainIntroduced(domid)) return;
  const w = xs.watch('@introduceDomain');
  const abort = (): void => { void w.close(); };
  signal?.addEventListener('abort', abort, { once: true });
  try {
    for await (const _ev of w) {
      if (await xs.isDomainIntroduced(domid)) return;
    }
    signal?.throwIfAborted();
    throw new ToolstackError(`stopped waiting for domain ${domid}`, 'ECANCELED', '@introduceDomain');
  } finally {
    signal?.removeEventListener('abort', abort);
    await w.close().catch(() => undefined);
  }
}

/** `createVbd(xs, cfg)` creates both halves of the disk in one transaction; ToolstackError EEXIST if either exists. */
export async function createVbd(xs: Xenstore, cfg: VbdConfig): Promise<VbdPaths> {
  const p = vbdPaths(cfg.frontendDomid, cfg.vdev, cfg.backendDomid ?? 0, cfg.kind ?? 'vbd');
  const fe = p.frontendDomid;
  const be = p.backendDomid;
  const deviceType = cfg.deviceType ?? 'disk';
  await xs.transaction(async (tx) => {
    for (const dir of [p.frontend, p.backend]) {
      if ((await tx.tryRead(dir)) !== undefined) throw new ToolstackError(`${dir} already exists`, 'EEXIST', dir);
    }
    const frontPerms: XsPermission[] = [{ domid: fe, perm: 'n' }, { domid: be, perm: 'r' }];
    const backPerms: XsPermission[] = [{ domid: be, perm: 'n' }, { domid: fe, perm: 'r' }];
    await tx.mkdir(p.frontend);
    await tx.setPermissions(p.frontend, frontPerms);
    await tx.mkdir(p.backend);
    await tx.setPermissions(p.backend, backPerms);
    const front: [string, string][] = [
      ['backend', p.backend],
      ['backend-id', String(be)],
      ['state', String(XenbusState.Initialising)],
      ['virtual-device', String(p.devid)],
      ['device-type', deviceType],
      ['trusted', cfg.trusted === false ? '0' : '1'],
    ];
    if (cfg.protocol !== undefined) front.push(['protocol', cfg.protocol]);
    const back: [string, string][] = [
      ['frontend', p.frontend],
      ['frontend-id', String(fe)],
      ['online', '1'],
      ['removable', cfg.removable ? '1' : '0'],
      ['bootable', cfg.bootable === false ? '0' : '1'],
      ['state', String(XenbusState.Initialising)],
      ['dev', p.vdev],
      ['type', cfg.type ?? 'file'],
      ['mode', cfg.readonly ? 'r' : 'w'],
      ['params', cfg.params],
      ['device-type', deviceType],
    ];
    if (cfg.discardEnable !== undefined) back.push(['discard-enable', cfg.discardEnable ? '1' : '0']);
    await writeAll(tx, p.frontend, front);
    await writeAll(tx, p.backend, back);
  });
  return p;
}

async function writeAll(tx: XenstoreOps, dir: string, kv: [string, string][]): Promise<void> {
  for (const [k, v] of kv) await tx.write(`${dir}/${k}`, v);
}

export interface RemoveVbdOptions {
  /** How long to wait for the backend to reach Closed (default 10000 ms, libxl's LIBXL_DESTROY_TIMEOUT). */
  readonly timeoutMs?: number;
  /** Skip the request to close and delete at once (libxl's force). */
  readonly force?: boolean;
}

/** What `removeVbd` saw: whether the backend closed before the directories were deleted. */
export interface RemoveVbdResult {
  readonly backendClosed: boolean;
  readonly frontendState: XenbusState;
}

/** `removeVbd(xs, paths, opts)` hot-unplugs the disk: asks both ends to close, waits for the backend, deletes both halves. */
export async function removeVbd(xs: Xenstore, p: VbdPaths, opts: RemoveVbdOptions = {}): Promise<RemoveVbdResult> {
  let backendClosed = false;
  if (!opts.force && (await xs.tryRead(p.backend)) !== undefined) {
    await xs.transaction(async (tx) => {
      if ((await tx.tryRead(p.backend)) === undefined) return;
      await tx.write(`${p.backend}/online`, '0');
      const st = parseXenbusState(await tx.tryRead(`${p.backend}/state`));
      if (st !== XenbusState.Closed) await tx.write(`${p.backend}/state`, String(XenbusState.Closing));
    });
    backendClosed = await waitForState(xs, `${p.backend}/state`, XenbusState.Closed, opts.timeoutMs ?? 10_000);
  }
  const frontendState = parseXenbusState(await xs.tryRead(`${p.frontend}/state`));
  await xs.transaction(async (tx) => {
    await tx.rm(p.frontend).catch(ignoreMissing);
    await tx.rm(p.backend).catch(ignoreMissing);
    await rmIfEmpty(tx, `/local/domain/${p.backendDomid}/backend/${p.kind}/${p.frontendDomid}`);
  });
  return { backendClosed, frontendState };
}

/** `waitForState(xs, path, want, timeoutMs)` is whether the state at `path` became `want` before the timeout. */
export async function waitForState(xs: Xenstore, path: string, want: XenbusState, timeoutMs: number): Promise<boolean> {
  const w = xs.watch(path);
  const timer = setTimeout(() => { void w.close(); }, timeoutMs);
  try {
    for await (const _ev of w) {
      const v = await xs.tryRead(path);
      if (parseXenbusState(v) === want) return true;
      if (v === undefined && (await xs.tryRead(path.slice(0, path.lastIndexOf('/')))) === undefined) return false;
    }
    return false;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    await w.close().catch(() => undefined);
  }
}

async function rmIfEmpty(tx: XenstoreOps, dir: string): Promise<void> {
  if ((await tx.tryRead(dir)) === undefined) return;
  if ((await tx.directory(dir)).length === 0) await tx.rm(dir);
}

function ignoreMissing(e: unknown): void {
  if (typeof e === 'object' && e !== null && (e as { code?: unknown }).code === 'ENOENT') return;
  throw e;
}
