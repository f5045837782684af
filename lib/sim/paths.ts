// Where a simulated Xen host keeps its state: one directory, by default
//   $XENBLK_SIM_DIR, else $XDG_RUNTIME_DIR/xenblk-sim, else /dev/shm/xenblk-sim-<uid>,
//   else <os tmpdir>/xenblk-sim-<uid>.
// Domain memory lives in this directory and is mapped MAP_SHARED, so it should be on tmpfs
// (the defaults are); Unix socket paths must stay under 108 bytes.
//
//   ctl.sock                  the daemon's control socket (hypercalls, hypercall.ts)
//   xenstored.sock            xenstored, privileged (dom0)
//   xs-<domid>.<inst>.sock    xenstored as seen by domain <domid>
//   mem-<domid>.<inst>        RAM of a domain instance (page frames)
//   gnttab-<domid>.<inst>     its grant table (grant_entry_v1[])
//   evtchn-<domid>.<inst>     its event page (evtchn/sim-shared-info.ts)
//   slots                     the table of attached processes (upcall flags)
//   doorbell-<slot>.<gen>     FIFO waking an attached process
//   daemon.pid                the daemon's pid
// Domain ids are re-used, instance numbers never, so a process still holding an old
// domain's pages can never confuse them with its successor's.
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';

/** `defaultSimDir(env)` is the simulator directory used when none is given. */
export function defaultSimDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XENBLK_SIM_DIR) return env.XENBLK_SIM_DIR;
  if (env.XDG_RUNTIME_DIR) return path.join(env.XDG_RUNTIME_DIR, 'xenblk-sim');
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  try {
    if (fs.statSync('/dev/shm').isDirectory()) return `/dev/shm/xenblk-sim-${uid}`;
  } catch {
    // no /dev/shm
  }
  return path.join(os.tmpdir(), `xenblk-sim-${uid}`);
}

/** The names of everything in a simulator directory. */
export class SimPaths {
  constructor(readonly dir: string) {}

  get ctl(): string { return path.join(this.dir, 'ctl.sock'); }
  get xenstored(): string { return path.join(this.dir, 'xenstored.sock'); }
  get slots(): string { return path.join(this.dir, 'slots'); }
  get pid(): string { return path.join(this.dir, 'daemon.pid'); }

  xs(domid: number, instance: number): string { return path.join(this.dir, `xs-${domid}.${instance}.sock`); }
  mem(domid: number, instance: number): string { return path.join(this.dir, `mem-${domid}.${instance}`); }
  gnttab(domid: number, instance: number): string { return path.join(this.dir, `gnttab-${domid}.${instance}`); }
  evtchn(domid: number, instance: number): string { return path.join(this.dir, `evtchn-${domid}.${instance}`); }
  doorbell(slot: number, gen: number): string { return path.join(this.dir, `doorbell-${slot}.${gen}`); }
}
