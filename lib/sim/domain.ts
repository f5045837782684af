// One instance of a simulated domain, as the simulated hypervisor (the daemon) holds it: its
// RAM, grant table and event page files, the private pin table of its grants (Xen's "active
// grant entries"), and the chunk ownership of its refs and frames by attached processes.
import fs from 'node:fs';
import { PAGE } from '../../native/memory.ts';
import { Mapping } from '../../native/memory.ts';
import { backWithSuperpages } from './superpages.ts';
import { GRANT_ENTRY_V1_SIZE, GTF, comboAt, flagsAt, frameAt } from '../../gnttab/grant-entry.ts';
import { SIM_CHUNK } from '../../gnttab/sim.ts';
import {
  EVTCHN_PAGE, EVTCHNSTAT, MASK_W, NR_PORTS, PENDING_W, PORT, portWord,
} from '../../evtchn/sim-shared-info.ts';
import type { SimPaths } from './paths.ts';

/** Chunk owner values besides a slot index. */
export const CHUNK_FREE = -1;
/** A dead process's chunk that still has pinned grants (freed when the last pin goes). */
export const CHUNK_ZOMBIE = -2;

/** Xen's active grant entry: pins by mappers, and the frame captured at the first pin. */
export interface ActiveGrant {
  readers: number;
  writers: number;
  readonly frame: number;
}

/** Why a pin was refused: errno name, and a sentence. */
export interface PinFailure {
  readonly code: 'EINVAL' | 'EPERM';
  readonly detail: string;
}

/** A port-table entry's fields. */
export interface PortFields {
  readonly state: number;
  readonly remoteDomid: number;
  readonly remotePort: number;
  readonly remoteInstance: number;
  readonly ownerSlot: number;
  readonly ownerGen: number;
}

/** The daemon's state for one domain instance. */
export class DomainInstance {
  readonly memFd: number;
  private readonly gnttabMap: Mapping;
  private readonly evtchnMap: Mapping;
  /** grant_entry_v1[] as u16 (flagsAt/domidAt) and u32 (comboAt: flags|domid<<16, frameAt). */
  readonly flags16: Uint16Array;
  readonly words32: Uint32Array;
  /** The event page as u32 words. */
  readonly page: Uint32Array;
  readonly active = new Map<number, ActiveGrant>();
  readonly refOwner: Int32Array;
  readonly frameOwner: Int32Array;
  /** Slots of attached processes. */
  readonly slots = new Set<number>();
  released = false;
  private finalized = false;

  /**
   * `DomainInstance.create(paths, domid, instance, nrFrames, nrGrants, superpages)` creates and
   * maps the domain's files; with `superpages` its RAM is allocated at once on 2 MiB pages
   * (superpages.ts), or stays sparse when the kernel refuses, which `superpages` then says.
   */
  static create(paths: SimPaths, domid: number, instance: number, nrFrames: number, nrGrants: number, superpages = false): DomainInstance {
    const made: string[] = [];
    const mk = (p: string, size: number): number => {
      const fd = fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      made.push(p);
      fs.ftruncateSync(fd, size);
      return fd;
    };
    let memFd = -1;
    let gFd = -1;
    let eFd = -1;
    try {
      memFd = mk(paths.mem(domid, instance), nrFrames * PAGE);
      let huge = 'off';
      if (superpages) {
        const r = backWithSuperpages(memFd, nrFrames * PAGE);
        huge = r.ok ? 'on' : `refused (${r.why})`;
      }
      gFd = mk(paths.gnttab(domid, instance), nrGrants * GRANT_ENTRY_V1_SIZE);
      eFd = mk(paths.evtchn(domid, instance), EVTCHN_PAGE.size);
      const gnttabMap = Mapping.file(gFd, 0, nrGrants * GRANT_ENTRY_V1_SIZE, true, `grant table of d${domid}`);
      const evtchnMap = Mapping.file(eFd, 0, EVTCHN_PAGE.size, true, `event page of d${domid}`);
      return new DomainInstance(paths, domid, instance, nrFrames, nrGrants, huge, memFd, gnttabMap, evtchnMap);
    } catch (e) {
      if (memFd >= 0) fs.closeSync(memFd);
      for (const p of made) fs.rmSync(p, { force: true });
      throw e;
    } finally {
      if (gFd >= 0) fs.closeSync(gFd);
      if (eFd >= 0) fs.closeSync(eFd);
    }
  }

  private constructor(
    private readonly paths: SimPaths,
    readonly domid: number,
    readonly instance: number,
    readonly nrFrames: number,
    readonly nrGrants: number,
    /** 'on' when the RAM is on 2 MiB pages, 'off' when not asked, else why the kernel refused. */
    readonly superpages: string,
    memFd: number,
    gnttabMap: Mapping,
    evtchnMap: Mapping,
  ) {
    this.memFd = memFd;
    this.gnttabMap = gnttabMap;
    this.evtchnMap = evtchnMap;
    const g = gnttabMap.view();
    this.flags16 = new Uint16Array(g.buffer, g.byteOffset, g.length / 2);
    this.words32 = new Uint32Array(g.buffer, g.byteOffset, g.length / 4);
    const e = evtchnMap.view();
    this.page = new Uint32Array(e.buffer, e.byteOffset, e.length / 4);
    this.refOwner = new Int32Array(Math.ceil(nrGrants / SIM_CHUNK)).fill(CHUNK_FREE);
    this.frameOwner = new Int32Array(Math.ceil(nrFrames / SIM_CHUNK)).fill(CHUNK_FREE);
  }

  /** The files of this instance. */
  get files(): string[] {
    return [this.paths.mem(this.domid, this.instance), this.paths.gnttab(this.domid, this.instance), this.paths.evtchn(this.domid, this.instance)];
  }

  // ---- grants ----------------------------------------------------------------------------

  /**
   * `pin(ref, mapper, writable)` is the frame of `ref` after taking a pin for domain `mapper`,
   * or why not. Validation and the GTF_reading/GTF_writing update are one cmpxchg on the
   * flags|domid word, as Xen's _set_status_v1 does, so a guest racing to revoke loses cleanly.
   */
  pin(ref: number, mapper: number, writable: boolean): number | PinFailure {
    if (!Number.isInteger(ref) || ref < 0 || ref >= this.nrGrants) {
      return { code: 'EINVAL', detail: `ref outside the grant table (0..${this.nrGrants - 1})` };
    }
    const w = comboAt(ref);
    for (;;) {
      const combo = Atomics.load(this.words32, w);
      const flags = combo & 0xffff;
      const domid = combo >>> 16;
      if ((flags & GTF.type_mask) !== GTF.permit_access) return { code: 'EPERM', detail: `entry is not GTF_permit_access (flags 0x${flags.toString(16)})` };
      if (domid !== mapper) return { code: 'EPERM', detail: `granted to d${domid}, not d${mapper}` };
      if (writable && (flags & GTF.readonly) !== 0) return { code: 'EPERM', detail: 'read-only grant; writable mapping refused' };
      const nflags = flags | GTF.reading | (writable ? GTF.writing : 0);
      if (Atomics.compareExchange(this.words32, w, combo, ((combo & 0xffff0000) | nflags) >>> 0) === combo) break;
    }
    let act = this.active.get(ref);
    if (act === undefined) {
      const frame = Atomics.load(this.words32, frameAt(ref));
      if (frame >= this.nrFrames) {
        this.clearFlags(ref, true, true);
        return { code: 'EINVAL', detail: `frame ${frame} outside the domain's memory` };
      }
      act = { readers: 0, writers: 0, frame };
      this.active.set(ref, act);
    }
    if (writable) act.writers++;
    else act.readers++;
    return act.frame;
  }

  /** `unpin(ref, writable)` drops one pin; clears GTF_writing / GTF_reading when the last goes. Returns whether the ref is now unpinned. */
  unpin(ref: number, writable: boolean): boolean {
    const act = this.active.get(ref);
    if (act === undefined) return true;
    if (writable) act.writers--;
    else act.readers--;
    const idle = act.readers + act.writers === 0;
    this.clearFlags(ref, act.writers === 0, idle);
    if (idle) this.active.delete(ref);
    return idle;
  }

  private clearFlags(ref: number, writing: boolean, reading: boolean): void {
    const mask = (writing ? GTF.writing : 0) | (reading ? GTF.reading : 0);
    if (mask !== 0) Atomics.and(this.flags16, flagsAt(ref), ~mask & 0xffff);
  }

  /** `revokeEntry(ref)` clears a grant entry (the guest is gone and nobody maps it). */
  revokeEntry(ref: number): void {
    Atomics.store(this.words32, comboAt(ref), 0);
    Atomics.store(this.words32, frameAt(ref), 0);
  }

  /** `grantedCount()` is the number of entries currently GTF_permit_access. */
  grantedCount(): number {
    let n = 0;
    for (let r = 0; r < this.nrGrants; r++) if ((Atomics.load(this.flags16, flagsAt(r)) & GTF.type_mask) === GTF.permit_access) n++;
    return n;
  }

  /** `clearByte(frame, offset)` writes 0 at byte `offset` of page `frame` (gntdev UNMAP_NOTIFY_CLEAR_BYTE). */
  clearByte(frame: number, offset: number): void {
    fs.writeSync(this.memFd, new Uint8Array(1), 0, 1, frame * PAGE + offset);
  }

  // ---- event channels --------------------------------------------------------------------

  /** `port(p)` is the fields of port `p`'s entry. */
  port(p: number): PortFields {
    const e = portWord(p);
    const a = this.page;
    return {
      state: Atomics.load(a, e + PORT.state),
      remoteDomid: Atomics.load(a, e + PORT.remoteDomid),
      remotePort: Atomics.load(a, e + PORT.remotePort),
      remoteInstance: Atomics.load(a, e + PORT.remoteInstance),
      ownerSlot: Atomics.load(a, e + PORT.ownerSlot),
      ownerGen: Atomics.load(a, e + PORT.ownerGen),
    };
  }

  /** `setPort(p, f)` writes port `p`'s entry: every field first, the state last. */
  setPort(p: number, f: PortFields): void {
    const e = portWord(p);
    const a = this.page;
    Atomics.store(a, e + PORT.state, EVTCHNSTAT.closed);
    Atomics.store(a, e + PORT.remoteDomid, f.remoteDomid);
    Atomics.store(a, e + PORT.remotePort, f.remotePort);
    Atomics.store(a, e + PORT.remoteInstance, f.remoteInstance);
    Atomics.store(a, e + PORT.ownerSlot, f.ownerSlot);
    Atomics.store(a, e + PORT.ownerGen, f.ownerGen);
    Atomics.store(a, e + PORT.state, f.state);
  }

  /** `freePort()` is the lowest closed port (port 0 is reserved, as in Xen), or -1. */
  freePort(): number {
    for (let p = 1; p < NR_PORTS; p++) {
      if (Atomics.load(this.page, portWord(p) + PORT.ownerGen) === 0 && Atomics.load(this.page, portWord(p) + PORT.state) === EVTCHNSTAT.closed) return p;
    }
    return -1;
  }

  /** `resetPortBits(p)` clears port `p`'s pending and mask bits. */
  resetPortBits(p: number): void {
    const bit = 1 << (p & 31);
    Atomics.and(this.page, PENDING_W + (p >>> 5), ~bit);
    Atomics.and(this.page, MASK_W + (p >>> 5), ~bit);
  }

  // ---- end of life -----------------------------------------------------------------------

  /** `unlinkFiles()` removes the instance's files; processes that mapped them keep their pages. */
  unlinkFiles(): void {
    for (const f of this.files) fs.rmSync(f, { force: true });
  }

  /** `finalize()` drops the daemon's own mappings and descriptors (once nobody pins anything). */
  finalize(): void {
    if (this.finalized) return;
    this.finalized = true;
    this.gnttabMap.unmap();
    this.evtchnMap.unmap();
    fs.closeSync(this.memFd);
  }
}
