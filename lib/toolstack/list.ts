// Listing the virtual disks a backend domain has, as `xl block-list` does from XenStore:
// every backend/<kind>/<frontend-domid>/<devid> directory with both ends' states.
import type { Xenstore } from '../../xenstore/xenstore.ts';
import { parseXenbusState, xenbusStateName } from '../../protocol/xenbus-state.ts';
import { canonicalName } from '../../protocol/device-number.ts';

/** One disk as XenStore describes it. */
export interface VbdListing {
  readonly frontendDomid: number;
  readonly devid: number;
  /** Canonical device name (`xvdb`), or the number when it has none. */
  readonly vdev: string;
  readonly backend: string;
  readonly frontend: string | undefined;
  readonly params: string | undefined;
  readonly mode: string | undefined;
  readonly backendState: string;
  readonly frontendState: string;
  /** Size in 512-byte sectors once the backend published it. */
  readonly sectors: number | undefined;
  readonly sectorSize: number | undefined;
  readonly hotplugStatus: string | undefined;
  /** `ring-page-order` and queues the frontend published. */
  readonly ringPageOrder: number | undefined;
  readonly queues: number | undefined;
  readonly protocol: string | undefined;
}

/** `listVbds(xs, {backendDomid, kind})` is every disk under /local/domain/<backendDomid>/backend/<kind>, sorted. */
export async function listVbds(xs: Xenstore, opts: { backendDomid?: number; kind?: string } = {}): Promise<VbdListing[]> {
  const base = `/local/domain/${opts.backendDomid ?? 0}/backend/${opts.kind ?? 'vbd'}`;
  const out: VbdListing[] = [];
  if ((await xs.tryRead(base)) === undefined) return out;
  for (const fe of await xs.directory(base)) {
    const feDomid = Number(fe);
    if (!Number.isInteger(feDomid)) continue;
    const devids = await xs.directory(`${base}/${fe}`).catch(() => [] as string[]);
    for (const d of devids) {
      const devid = Number(d);
      if (!Number.isInteger(devid)) continue;
      const b = `${base}/${fe}/${d}`;
      const r = (k: string): Promise<string | undefined> => xs.tryRead(`${b}/${k}`);
      const frontend = await r('frontend');
      const fr = (k: string): Promise<string | undefined> => (frontend === undefined ? Promise.resolve(undefined) : xs.tryRead(`${frontend}/${k}`));
      const num = (v: string | undefined): number | undefined => (v !== undefined && /^\s*[0-9]+\s*$/.test(v) ? Number(v) : undefined);
      let vdev: string;
      try { vdev = canonicalName(devid); } catch { vdev = String(devid); }
      out.push({
        frontendDomid: feDomid,
        devid,
        vdev,
        backend: b,
        frontend,
        params: await r('params'),
        mode: await r('mode'),
        backendState: xenbusStateName(parseXenbusState(await r('state'))),
        frontendState: xenbusStateName(parseXenbusState(await fr('state'))),
        sectors: num(await r('sectors')),
        sectorSize: num(await r('sector-size')),
        hotplugStatus: await r('hotplug-status'),
        ringPageOrder: num(await fr('ring-page-order')),
        queues: num(await fr('multi-queue-num-queues')),
        protocol: await fr('protocol'),
      });
    }
  }
  out.sort((a, b) => a.frontendDomid - b.frontendDomid || a.devid - b.devid);
  return out;
}
