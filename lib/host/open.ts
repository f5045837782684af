// Opening the platform: real Xen when its devices are present, the simulator otherwise.
// Nothing above lib/host knows which one it got.
//
// Choice, first match wins:
//   opts.xen                        real Xen (fails clearly if /dev/xen is absent)
//   opts.sim / $XENBLK_SIM_DIR      the simulator in that directory
//   /dev/xen/evtchn exists          real Xen
//   otherwise                       the simulator in defaultSimDir()
// Domain: opts.domid, else $XENBLK_DOMID, else (Xen) 0 in dom0 or the `domid` key of our own
// XenStore directory, else (simulator) 0.
import fs from 'node:fs';
import { connect } from '../../xenstore/connect.ts';
import type { Xenstore } from '../../xenstore/xenstore.ts';
import { LinuxGrantMapper, LinuxGrantSharer } from '../../gnttab/linux.ts';
import { isDomid } from '../../gnttab/grant-entry.ts';
import { LinuxEventChannels } from '../../evtchn/linux.ts';
import { attachSim } from '../sim/attach.ts';
import { defaultSimDir } from '../sim/paths.ts';
import type { Host } from './host.ts';

/** Options of openHost. */
export interface OpenHostOptions {
  /** Use the simulator in this directory. */
  readonly sim?: string;
  /** Use real Xen even if detection would not. */
  readonly xen?: boolean;
  /** Act as this domain. */
  readonly domid?: number;
}

/** `XEN_EVTCHN_DEVICE` is the device whose presence means "running on Xen". */
export const XEN_EVTCHN_DEVICE = '/dev/xen/evtchn';

function envDomid(env: NodeJS.ProcessEnv): number | undefined {
  const v = env.XENBLK_DOMID;
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !isDomid(n)) throw new RangeError(`XENBLK_DOMID=${v}: not a domain id (0..32751)`);
  return n;
}

/** Which platform openHost picks. */
export type HostChoice =
  | { readonly kind: 'sim'; readonly dir: string; readonly domid: number }
  | { readonly kind: 'xen'; readonly domid: number | undefined };

/** `chooseHost(opts, env, onXen)` is openHost's decision, without opening anything. */
export function chooseHost(opts: OpenHostOptions, env: NodeJS.ProcessEnv, onXen: boolean): HostChoice {
  if (opts.domid !== undefined && !isDomid(opts.domid)) throw new RangeError(`domid ${opts.domid}: not a domain id (0..32751)`);
  const domid = opts.domid ?? envDomid(env);
  const simDir = opts.sim ?? (env.XENBLK_SIM_DIR || undefined);
  if (!opts.xen && (simDir !== undefined || !onXen)) return { kind: 'sim', dir: simDir ?? defaultSimDir(env), domid: domid ?? 0 };
  return { kind: 'xen', domid };
}

/** `openHost(opts)` is a Host on real Xen or on the simulator (see the choice rules above). */
export async function openHost(opts: OpenHostOptions = {}, env: NodeJS.ProcessEnv = process.env): Promise<Host> {
  const c = chooseHost(opts, env, fs.existsSync(XEN_EVTCHN_DEVICE));
  return c.kind === 'sim' ? attachSim({ dir: c.dir, domid: c.domid }) : openXenHost(c.domid);
}

async function ownDomid(xs: Xenstore): Promise<number> {
  try {
    if (/\bcontrol_d\b/.test(fs.readFileSync('/proc/xen/capabilities', 'utf8'))) return 0;
  } catch {
    // no xenfs: ask XenStore
  }
  const v = await xs.read('domid');
  const n = Number(v);
  if (!isDomid(n)) throw new RangeError(`xenstore domid '${v}' is not a domain id`);
  return n;
}

/** `openXenHost(domid)` is a Host on real Xen through /dev/xen and xenstored. */
export async function openXenHost(domid?: number): Promise<Host> {
  if (!fs.existsSync(XEN_EVTCHN_DEVICE)) {
    throw new Error(`not running on Xen: ${XEN_EVTCHN_DEVICE} is absent (load xen-evtchn, or use the simulator: xenblk sim up)`);
  }
  const xenstore = await connect();
  let evtchn: LinuxEventChannels | undefined;
  try {
    const id = domid ?? await ownDomid(xenstore);
    evtchn = new LinuxEventChannels(XEN_EVTCHN_DEVICE);
    const ev = evtchn;
    const sharer = new LinuxGrantSharer();
    const mapper = new LinuxGrantMapper();
    let closing: Promise<void> | undefined;
    return {
      kind: 'xen', domid: id, xenstore, sharer, mapper, evtchn: ev,
      close: () => {
        closing ??= (async () => {
          ev.close();
          mapper.close();
          sharer.close();
          await xenstore.close();
        })();
        return closing;
      },
    };
  } catch (e) {
    evtchn?.close();
    await xenstore.close().catch(() => {});
    throw e;
  }
}
