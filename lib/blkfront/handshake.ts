// The frontend's half of the XenStore handshake (blkif.h "Frontend XenBus Nodes"; Linux
// xen-blkfront blkfront_probe and talk_to_blkback): find the device directory, read what the
// toolstack wrote there, and publish the rings in one transaction together with Initialised.
import type { Xenstore, XenstoreOps } from '../../xenstore/xenstore.ts';
import { XenbusState, parseXenbusState } from '../../protocol/xenbus-state.ts';
import { DeviceNumberError, resolveDevice } from '../../protocol/device-number.ts';
import type { BlkifAbi } from '../../protocol/blkif.ts';
import { BlkfrontError } from './errors.ts';
import { isXenstoreError } from '../../xenstore/errors.ts';
import { parseUnsigned } from './features.ts';

/** xen.h DOMID_FIRST_RESERVED: domain ids at or above it name no domain a device can live in. */
const DOMID_FIRST_RESERVED = 0x7ff0;

/** Where a virtual block device lives in XenStore, as the toolstack set it up. */
export interface VbdLocation {
  /** The device number (the `device/vbd/<devid>` key), e.g. 51728 for xvdb. */
  readonly devid: number;
  /** Its canonical name (`xvdb`). */
  readonly name: string;
  /** `virtual-device` (or `virtual-device-ext`) as written by the toolstack. */
  readonly virtualDevice: number;
  /** Absolute path of the frontend directory. */
  readonly frontendPath: string;
  /** `backend`: absolute path of the backend directory. */
  readonly backendPath: string;
  /** `backend-id`: the backend's domain. */
  readonly backendDomid: number;
}

/** `protocolName(abi)` is the `protocol` value for a ring ABI (xen/io/protocols.h XEN_IO_PROTO_ABI_*). */
export function protocolName(abi: BlkifAbi): string {
  return abi === 'x86_64' ? 'x86_64-abi' : 'x86_32-abi';
}

/**
 * `locateVbd(xs, domid, vdev)` finds the device `vdev` (a name like `xvdb`, `d1p0`, or a number
 * like `51728`) among this domain's `device/vbd/*` and reads its toolstack keys. The directory
 * is normally keyed by the device number; failing that, a directory whose virtual-device
 * (or virtual-device-ext) is that number is used.
 */
export async function locateVbd(xs: Xenstore, domid: number, vdev: string | number, waitMs = 0): Promise<VbdLocation> {
  if (waitMs <= 0) return locateVbdOnce(xs, domid, vdev);
  // Wait for a toolstack to create the device (a hotplugged disk), re-checking on every change
  // under device/vbd.
  const deadline = Date.now() + waitMs;
  const dir = `${await xs.getDomainPath(domid)}/device/vbd`;
  const watch = xs.watch(dir);
  const it = watch[Symbol.asyncIterator]();
  try {
    for (;;) {
      try {
        return await locateVbdOnce(xs, domid, vdev);
      } catch (e) {
        if (!(e instanceof BlkfrontError) || e.code !== 'ENODEV' || Date.now() >= deadline) throw e;
      }
      let timer: NodeJS.Timeout | undefined;
      const tick = new Promise<void>((r) => { timer = setTimeout(r, Math.max(1, deadline - Date.now())); });
      await Promise.race([it.next(), tick]);
      clearTimeout(timer);
    }
  } finally {
    await watch.close().catch(() => {});
  }
}

async function locateVbdOnce(xs: Xenstore, domid: number, vdev: string | number): Promise<VbdLocation> {
  let devid: number;
  let name: string;
  try {
    const d = resolveDevice(String(vdev));
    devid = d.number;
    name = d.name;
  } catch (e) {
    if (e instanceof DeviceNumberError) throw new BlkfrontError('EINVAL', e.message, 'vdev', String(vdev), { cause: e });
    throw e;
  }
  const domainPath = await xs.getDomainPath(domid);
  const vbdDir = `${domainPath}/device/vbd`;
  let frontendPath = `${vbdDir}/${devid}`;
  // Before a toolstack creates the directory its parent may not be readable yet (EACCES).
  const probe = async (path: string): Promise<string | undefined> => {
    try {
      return await xs.tryRead(path);
    } catch (e) {
      if (isXenstoreError(e, 'EACCES')) return undefined;
      throw e;
    }
  };
  if ((await probe(`${frontendPath}/backend`)) === undefined) {
    let found: string | undefined;
    let children: string[] = [];
    try {
      children = await xs.directory(vbdDir);
    } catch {
      children = [];
    }
    for (const c of children) {
      const v = (await probe(`${vbdDir}/${c}/virtual-device`)) ?? (await probe(`${vbdDir}/${c}/virtual-device-ext`));
      if (v !== undefined && /^\s*[0-9]+\s*$/.test(v) && Number(v) === devid) {
        found = `${vbdDir}/${c}`;
        break;
      }
    }
    if (found === undefined) {
      throw new BlkfrontError('ENODEV', `no virtual block device ${name} (${devid}) for domain ${domid} under ${vbdDir}`, frontendPath, undefined);
    }
    frontendPath = found;
  }
  return readVbdLocation(xs, frontendPath, devid, name);
}

/** `readVbdLocation(xs, frontendPath, devid, name)` reads virtual-device, backend and backend-id, validating each. */
export async function readVbdLocation(xs: XenstoreOps, frontendPath: string, devid: number, name: string): Promise<VbdLocation> {
  // blkfront_probe: virtual-device, else virtual-device-ext.
  let vdKey = `${frontendPath}/virtual-device`;
  let vd = await xs.tryRead(vdKey);
  if (vd === undefined) {
    vdKey = `${frontendPath}/virtual-device-ext`;
    vd = await xs.tryRead(vdKey);
  }
  if (vd === undefined) throw new BlkfrontError('EPROTO', `${frontendPath}: neither virtual-device nor virtual-device-ext is set`, `${frontendPath}/virtual-device`);
  const virtualDevice = parseUnsigned(vdKey, vd, 0xffffffff);

  const backendKey = `${frontendPath}/backend`;
  const backendPath = await xs.tryRead(backendKey);
  if (backendPath === undefined) throw new BlkfrontError('ENODEV', `${backendKey}: missing (no backend for this device)`, backendKey);
  if (!/^\/[\x21-\x7e]*[^/]$/.test(backendPath) || backendPath.includes('//')) {
    throw new BlkfrontError('EPROTO', `${backendKey}: ${JSON.stringify(backendPath)} is not an absolute XenStore path`, backendKey, backendPath);
  }
  const idKey = `${frontendPath}/backend-id`;
  const idText = await xs.tryRead(idKey);
  if (idText === undefined) throw new BlkfrontError('EPROTO', `${idKey}: missing`, idKey);
  const backendDomid = parseUnsigned(idKey, idText, DOMID_FIRST_RESERVED - 1);
  return { devid, name, virtualDevice, frontendPath, backendPath, backendDomid };
}

/** `readState(xs, dir)` is the XenbusState in `dir/state` (Unknown when absent or garbage, as xenbus_read_driver_state). */
export async function readState(xs: XenstoreOps, dir: string): Promise<XenbusState> {
  return parseXenbusState(await xs.tryRead(`${dir}/state`));
}

/** `writeState(xs, dir, state)` switches `dir/state` to `state` (xenbus_switch_state). */
export async function writeState(xs: XenstoreOps, dir: string, state: XenbusState): Promise<void> {
  await xs.write(`${dir}/state`, String(state));
}

/** One ring as published: its grant references and event channel. */
export interface PublishedRing {
  readonly ringRefs: readonly number[];
  readonly port: number;
}

/** What talk_to_blkback publishes. */
export interface RingPublication {
  readonly ringPageOrder: number;
  readonly rings: readonly PublishedRing[];
  readonly abi: BlkifAbi;
  readonly persistent: boolean;
}

/** Keys of an earlier connection that must not survive into a new one. */
const RING_KEY = /^(ring-ref[0-9]*|ring-page-order|event-channel|multi-queue-num-queues|queue-[0-9]+)$/;

/**
 * `publishRings(xs, frontendPath, p)` writes, in one transaction, what talk_to_blkback writes:
 * `ring-ref` (one page) or `ring-page-order` + `ring-ref<i>`; `event-channel`; for several
 * queues `multi-queue-num-queues` and `queue-<q>/{ring-ref..., event-channel}` instead;
 * `protocol`; `feature-persistent`; and `state` = Initialised. Ring keys left by an earlier
 * connection are removed in the same transaction so the backend never sees a mix.
 */
export async function publishRings(xs: Xenstore, frontendPath: string, p: RingPublication): Promise<void> {
  await xs.transaction(async (tx) => {
    for (const k of await tx.directory(frontendPath)) if (RING_KEY.test(k)) await tx.rm(`${frontendPath}/${k}`);
    if (p.ringPageOrder > 0) await tx.write(`${frontendPath}/ring-page-order`, String(p.ringPageOrder));
    const writeRing = async (dir: string, r: PublishedRing): Promise<void> => {
      if (p.ringPageOrder === 0) {
        await tx.write(`${dir}/ring-ref`, String(r.ringRefs[0]));
      } else {
        for (let i = 0; i < r.ringRefs.length; i++) await tx.write(`${dir}/ring-ref${i}`, String(r.ringRefs[i]));
      }
      await tx.write(`${dir}/event-channel`, String(r.port));
    };
    if (p.rings.length === 1) {
      await writeRing(frontendPath, p.rings[0]!);
    } else {
      await tx.write(`${frontendPath}/multi-queue-num-queues`, String(p.rings.length));
      for (let q = 0; q < p.rings.length; q++) await writeRing(`${frontendPath}/queue-${q}`, p.rings[q]!);
    }
    await tx.write(`${frontendPath}/protocol`, protocolName(p.abi));
    await tx.write(`${frontendPath}/feature-persistent`, p.persistent ? '1' : '0');
    await tx.write(`${frontendPath}/state`, String(XenbusState.Initialised));
  });
}
