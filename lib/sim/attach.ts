// Attaching this process to a running simulator as (a process of) domain `domid`: the Host a
// simulated domain uses. The first process of a domain creates it; the domain dies with its
// last process (dom0 excepted). Dying without `close()` — even by SIGKILL — is handled by the
// daemon when the control connection drops.
import fs from 'node:fs';
import { connect } from '../../xenstore/connect.ts';
import type { Xenstore } from '../../xenstore/xenstore.ts';
import { Mapping, PAGE } from '../../native/memory.ts';
import { GRANT_ENTRY_V1_SIZE } from '../../gnttab/grant-entry.ts';
import { SimGrantMapper, SimGrantSharer, type SimGnttabConfig } from '../../gnttab/sim.ts';
import { EVTCHN_PAGE, SLOTS } from '../../evtchn/sim-shared-info.ts';
import { SimEventChannels } from '../../evtchn/sim.ts';
import type { Host } from '../host/host.ts';
import { HypercallClient } from './hypercall-client.ts';
import { SimPaths, defaultSimDir } from './paths.ts';
import type { SimStatus } from './daemon.ts';

/** Options of attachSim. */
export interface AttachSimOptions {
  /** Simulator directory (default: defaultSimDir()). */
  readonly dir?: string;
  /** Domain to attach as (default 0). */
  readonly domid?: number;
}

/** A Host on the simulator, with the simulator-only extras. */
export interface SimHost extends Host {
  readonly kind: 'sim';
  readonly dir: string;
  /** This domain's instance number (a re-created domain gets a new one). */
  readonly instance: number;
  /** This process's slot in the simulator. */
  readonly slot: number;
  /** `status()` is the simulator's status (domains, grants, channels). */
  status(): SimStatus;
}

function mapFile(path: string, length: number, what: string): Mapping {
  const fd = fs.openSync(path, 'r+');
  try {
    return Mapping.file(fd, 0, length, true, what);
  } finally {
    fs.closeSync(fd);
  }
}

function u32(m: Mapping): Uint32Array {
  const b = m.view();
  return new Uint32Array(b.buffer, b.byteOffset, b.length / 4);
}

/** `attachSim(opts)` attaches this process to the simulator in `opts.dir` as domain `opts.domid`. */
export async function attachSim(opts: AttachSimOptions = {}): Promise<SimHost> {
  const dir = opts.dir ?? defaultSimDir();
  const domid = opts.domid ?? 0;
  const paths = new SimPaths(dir);
  const hc = new HypercallClient(paths.ctl);
  const maps: Mapping[] = [];
  let xenstore: Xenstore | undefined;
  try {
    const a = hc.attach(domid, process.pid);
    const ram = mapFile(paths.mem(domid, a.instance), a.nrFrames * PAGE, `memory of d${domid}`);
    maps.push(ram);
    const gnttab = mapFile(paths.gnttab(domid, a.instance), a.nrGrants * GRANT_ENTRY_V1_SIZE, `grant table of d${domid}`);
    maps.push(gnttab);
    const evtchnPage = mapFile(paths.evtchn(domid, a.instance), EVTCHN_PAGE.size, `event page of d${domid}`);
    maps.push(evtchnPage);
    const slots = mapFile(paths.slots, SLOTS.size, 'slot table');
    maps.push(slots);

    const gcfg: SimGnttabConfig = {
      domid, nrGrants: a.nrGrants, nrFrames: a.nrFrames, grantTable: gnttab.view(), ram,
      ramPath: (d, i) => paths.mem(d, i), hypervisor: hc.gnttab(),
    };
    const sharer = new SimGrantSharer(gcfg);
    const mapper = new SimGrantMapper(gcfg);
    const evtchn = new SimEventChannels({
      domid, instance: a.instance, slot: a.slot, slotGen: a.slotGen, eventPage: u32(evtchnPage), slots: u32(slots),
      paths: { eventPage: (d, i) => paths.evtchn(d, i), doorbell: (s, g) => paths.doorbell(s, g) },
      hypervisor: hc.evtchn(),
    });
    xenstore = await connect({ socketPath: domid === 0 ? paths.xenstored : paths.xs(domid, a.instance) });
    const xs = xenstore;
    let closing: Promise<void> | undefined;
    const host: SimHost = {
      kind: 'sim', domid, dir, instance: a.instance, slot: a.slot, xenstore: xs, sharer, mapper, evtchn,
      status: () => hc.status() as SimStatus,
      close: () => {
        closing ??= (async () => {
          evtchn.close();
          mapper.close();
          sharer.close();
          try { await xs.close(); } catch { /* the daemon may have dropped it */ }
          try { hc.detach(); } catch { /* daemon gone: nothing left to release */ }
          hc.close();
          for (const m of maps) m.unmap();
        })();
        return closing;
      },
    };
    return host;
  } catch (e) {
    if (xenstore !== undefined) await xenstore.close().catch(() => {});
    hc.close();
    for (const m of maps) m.unmap();
    throw e;
  }
}
