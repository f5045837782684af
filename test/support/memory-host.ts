// An in-process platform for unit tests of the device ends: grant tables and event channels
// between several "domains" living in one Node process. It follows the same rules as the
// simulator and Xen (grantee domid, read-only grants, EBUSY while mapped, coalesced events)
// but shares memory by aliasing one ArrayBuffer per domain instead of mmap. Integration tests
// use the real simulator (separate processes); this exists so the data path can be unit-tested
// without spawning anything.
//
// GrantMapper.map returns one contiguous buffer that aliases the grantor's pages, as on Xen and
// the simulator: each domain's RAM is a shared memory file mapped once as its `ram` buffer
// (what the sharer hands out are views of it), and a map maps the granted frames of the file
// again, run of consecutive frames by run, into one reserved range. So a backend keeping a
// multi-page mapping (blkback's persistent runs) and the frontend see each other's writes, and
// unmapping detaches the buffer. The RAM file and its mapping go when the `ram` buffer is
// collected; every grant mapping is a mapping of the file of its own.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { GrantMapper, GrantSharer, MappedGrants, SharedPages, UnmapNotify } from '../../gnttab/gnttab.ts';
import { PAGE_SIZE } from '../../gnttab/gnttab.ts';
import type { EventChannel, EventChannels } from '../../evtchn/evtchn.ts';
import type { Host } from '../../lib/host/host.ts';
import type { Xenstore } from '../../xenstore/xenstore.ts';
import { MAP, PROT, addressOf, isMapFailed, libc, viewAt } from '../../native/libc.ts';
import { Mapping } from '../../native/memory.ts';

/** An error from the memory platform; `code` mirrors the hypervisor's (GNTST_*, EBUSY...). */
export class MemoryHostError extends Error {
  constructor(message: string, readonly code: string) {
    super(message);
  }
}

interface GrantEntry {
  grantee: number;
  frame: number;
  readonly: boolean;
  pins: number;
}

interface Domain {
  readonly domid: number;
  readonly ram: Buffer;
  /** The shared memory file behind `ram` (open while `ram` lives). */
  readonly ramFd: number;
  /** 1 where a frame is in use; shares take the first run of `count` free frames. */
  readonly used: Uint8Array;
  /** Where the next search starts (next-fit keeps allocation cheap for long tests). */
  cursor: number;
  readonly grants: Map<number, GrantEntry>;
  nextRef: number;
  readonly ports: Map<number, Port>;
  nextPort: number;
}

interface Port {
  readonly domid: number;
  readonly local: number;
  readonly remoteDomid: number;
  remote: Port | undefined;
  handler: (() => void) | undefined;
  pending: boolean;
  closed: boolean;
}

/** Counters a test can assert on: everything shared, mapped and bound right now. */
export interface MemoryPlatformUsage {
  grants: number;
  mappings: number;
  ports: number;
}

export interface MemoryPlatform {
  /** `host(domid, xenstore)` is a Host for `domid` using this platform and the given xenstore connection. */
  host(domid: number, xenstore: Xenstore): Host;
  sharer(domid: number): GrantSharer;
  mapper(domid: number): GrantMapper;
  evtchn(domid: number): EventChannels;
  /** `usage(domid)` is what `domid` holds now: its grants, its mappings of others' pages, its bound ports. */
  usage(domid: number): MemoryPlatformUsage;
}

const ramFiles = new FinalizationRegistry<{ fd: number; address: number; length: number }>((r) => {
  libc.munmap(r.address, r.length);
  fs.closeSync(r.fd);
});

/** A domain's RAM: a fresh shared memory file (unlinked at once) and a buffer over its one mapping. */
function sharedRam(length: number): { ram: Buffer; ramFd: number } {
  const dir = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const file = path.join(dir, `xenblk-memory-host-${process.pid}-${randomUUID()}`);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  fs.unlinkSync(file);
  fs.ftruncateSync(fd, length);
  const p = libc.mmap(null, length, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0);
  if (isMapFailed(p)) {
    fs.closeSync(fd);
    throw new MemoryHostError(`cannot map ${length} bytes of RAM`, 'ENOMEM');
  }
  const address = addressOf(p);
  const ab = viewAt(address, length);
  ramFiles.register(ab, { fd, address, length });
  return { ram: Buffer.from(ab), ramFd: fd };
}

/** `createMemoryPlatform({ramPages})` is a fresh platform; each domain gets `ramPages` pages of RAM (default 8192 = 32 MiB). */
export function createMemoryPlatform(opts: { ramPages?: number } = {}): MemoryPlatform {
  const ramPages = opts.ramPages ?? 8192;
  const domains = new Map<number, Domain>();
  const mappingsBy = new Map<number, Set<MappedGrants>>();

  function domain(domid: number): Domain {
    let d = domains.get(domid);
    if (d === undefined) {
      d = {
        domid, ...sharedRam(ramPages * PAGE_SIZE), used: new Uint8Array(ramPages), cursor: 0,
        grants: new Map(), nextRef: 8, ports: new Map(), nextPort: 1,
      };
      domains.set(domid, d);
    }
    return d;
  }

  function allocFrames(d: Domain, count: number): number {
    // Contiguous frames for one share, so a peer mapping them in one call aliases them; freed
    // frames are reused (next-fit over the whole RAM, wrapping once).
    for (let tried = 0, start = d.cursor; tried < 2; tried++, start = 0) {
      let run = 0;
      for (let f = start; f < ramPages; f++) {
        run = d.used[f] === 0 ? run + 1 : 0;
        if (run === count) {
          const first = f - count + 1;
          d.used.fill(1, first, first + count);
          d.cursor = (first + count) % ramPages;
          return first;
        }
      }
    }
    throw new MemoryHostError(`domain ${d.domid} has no ${count} free contiguous pages`, 'ENOMEM');
  }

  function sharer(self: number): GrantSharer {
    const d = domain(self);
    return {
      share(domid, count, writable) {
        if (!Number.isInteger(count) || count < 1) throw new MemoryHostError(`bad page count ${count}`, 'EINVAL');
        const first = allocFrames(d, count);
        const refs: number[] = [];
        for (let i = 0; i < count; i++) {
          const ref = d.nextRef++;
          d.grants.set(ref, { grantee: domid, frame: first + i, readonly: !writable, pins: 0 });
          refs.push(ref);
        }
        const buffer = d.ram.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE);
        buffer.fill(0);
        return { domid, refs, buffer, writable };
      },
      endAccess(pages: SharedPages) {
        for (const ref of pages.refs) {
          const g = d.grants.get(ref);
          if (g !== undefined && g.pins > 0) throw new MemoryHostError(`grant ${ref} still mapped by domain ${g.grantee}`, 'EBUSY');
        }
        for (const ref of pages.refs) {
          const g = d.grants.get(ref);
          if (g !== undefined) d.used[g.frame] = 0;
          d.grants.delete(ref);
        }
      },
      close() {
        d.grants.clear();
      },
    };
  }

  function mapper(self: number): GrantMapper {
    let mine = mappingsBy.get(self);
    if (mine === undefined) { mine = new Set(); mappingsBy.set(self, mine); }
    const held = mine;
    const mappings = new Map<MappedGrants, { grantor: Domain; mapping: Mapping; notify?: UnmapNotify }>();
    const api: GrantMapper = {
      map(domid, refs, writable) {
        const grantor = domain(domid);
        if (refs.length === 0) throw new MemoryHostError('map of zero grants', 'EINVAL');
        const frames: number[] = [];
        for (const ref of refs) {
          const g = grantor.grants.get(ref);
          if (g === undefined) throw new MemoryHostError(`domain ${domid} grant ${ref} is not granted`, 'GNTST_bad_gntref');
          if (g.grantee !== self) throw new MemoryHostError(`domain ${domid} grant ${ref} is for domain ${g.grantee}, not ${self}`, 'GNTST_permission_denied');
          if (writable && g.readonly) throw new MemoryHostError(`domain ${domid} grant ${ref} is read-only`, 'GNTST_permission_denied');
          frames.push(g.frame);
        }
        // A mapping of its own, run of consecutive frames by run (unmap detaches its buffer: a
        // use after unmap throws). Writable either way, as the sharer's views of `ram` are: this
        // platform checks grants, not page protections.
        const mapping = Mapping.reserve(frames.length * PAGE_SIZE);
        try {
          for (let i = 0; i < frames.length;) {
            let n = 1;
            while (i + n < frames.length && frames[i + n] === frames[i]! + n) n++;
            mapping.place(i * PAGE_SIZE, grantor.ramFd, frames[i]! * PAGE_SIZE, n * PAGE_SIZE, true);
            i += n;
          }
        } catch (e) {
          mapping.unmap();
          throw new MemoryHostError(`cannot map ${frames.length} pages of domain ${domid}: ${(e as Error).message}`, 'ENOMEM');
        }
        for (const ref of refs) grantor.grants.get(ref)!.pins++;
        const m: MappedGrants = { domid, refs: [...refs], buffer: mapping.view(), writable };
        held.add(m);
        mappings.set(m, { grantor, mapping });
        return m;
      },
      unmap(m) {
        const c = mappings.get(m);
        if (c === undefined) throw new MemoryHostError('unmap of a mapping this mapper does not hold', 'EINVAL');
        if (c.notify?.clearByte !== undefined) m.buffer[c.notify.clearByte] = 0;
        c.mapping.unmap();
        for (const ref of m.refs) {
          const g = c.grantor.grants.get(ref);
          if (g !== undefined) g.pins--;
        }
        mappings.delete(m);
        held.delete(m);
        if (c.notify?.port !== undefined) {
          const p = domain(self).ports.get(c.notify.port);
          if (p !== undefined) notifyPort(p);
        }
      },
      copy(domid, batch, local, toForeign) {
        // GNTTABOP_copy: every piece checked as a map would be, then copied; no pin outlives the call.
        const grantor = domain(domid);
        if (batch.count < 1) throw new MemoryHostError('copy of zero pieces', 'EINVAL');
        for (let i = 0; i < batch.count; i++) {
          const ref = batch.refs[i]!;
          const g = grantor.grants.get(ref);
          if (g === undefined) throw new MemoryHostError(`domain ${domid} grant ${ref} is not granted`, 'GNTST_bad_gntref');
          if (g.grantee !== self) throw new MemoryHostError(`domain ${domid} grant ${ref} is for domain ${g.grantee}, not ${self}`, 'GNTST_permission_denied');
          if (toForeign && g.readonly) throw new MemoryHostError(`domain ${domid} grant ${ref} is read-only`, 'GNTST_permission_denied');
          const at = batch.localOffsets[i]!;
          const len = batch.lengths[i]!;
          if (at < 0 || at + len > local.byteLength) throw new MemoryHostError(`local range ${at}+${len} outside the buffer`, 'EINVAL');
          const page = g.frame * PAGE_SIZE + batch.offsets[i]!;
          if (toForeign) grantor.ram.set(local.subarray(at, at + len), page);
          else local.set(grantor.ram.subarray(page, page + len), at);
        }
      },
      setUnmapNotify(m, notify) {
        const c = mappings.get(m);
        if (c === undefined) throw new MemoryHostError('setUnmapNotify on an unknown mapping', 'EINVAL');
        c.notify = notify;
      },
      close() {
        for (const m of [...held]) if (mappings.has(m)) api.unmap(m);
      },
    };
    return api;
  }

  function notifyPort(p: Port): void {
    const r = p.remote;
    if (r === undefined || r.closed) return;
    if (r.pending) return; // coalesce, as a pending bit does
    r.pending = true;
    setImmediate(() => {
      r.pending = false;
      if (!r.closed) r.handler?.();
    });
  }

  function evtchn(self: number): EventChannels {
    const d = domain(self);
    function channel(p: Port): EventChannel {
      return {
        localPort: p.local,
        remoteDomid: p.remoteDomid,
        notify: () => {
          if (p.closed) throw new MemoryHostError(`port ${p.local} is closed`, 'EINVAL');
          notifyPort(p);
        },
        onEvent: (h) => { p.handler = h; },
        close: () => {
          if (p.closed) return;
          p.closed = true;
          d.ports.delete(p.local);
          if (p.remote !== undefined) p.remote.remote = undefined;
        },
      };
    }
    const open = new Set<EventChannel>();
    return {
      allocUnbound(remoteDomid) {
        const p: Port = { domid: self, local: d.nextPort++, remoteDomid, remote: undefined, handler: undefined, pending: false, closed: false };
        d.ports.set(p.local, p);
        const c = channel(p);
        open.add(c);
        return c;
      },
      bindInterdomain(remoteDomid, remotePort) {
        const rp = domain(remoteDomid).ports.get(remotePort);
        if (rp === undefined || rp.closed) throw new MemoryHostError(`domain ${remoteDomid} has no port ${remotePort}`, 'EINVAL');
        if (rp.remoteDomid !== self || rp.remote !== undefined) throw new MemoryHostError(`port ${remotePort} of domain ${remoteDomid} is not unbound for domain ${self}`, 'EINVAL');
        const p: Port = { domid: self, local: d.nextPort++, remoteDomid, remote: rp, handler: undefined, pending: false, closed: false };
        rp.remote = p;
        d.ports.set(p.local, p);
        const c = channel(p);
        open.add(c);
        return c;
      },
      close() {
        for (const c of open) c.close();
        open.clear();
      },
    };
  }

  return {
    sharer, mapper, evtchn,
    host(domid, xenstore) {
      const s = sharer(domid);
      const m = mapper(domid);
      const e = evtchn(domid);
      return {
        kind: 'sim', domid, xenstore, sharer: s, mapper: m, evtchn: e,
        async close() {
          m.close();
          e.close();
          s.close();
          await xenstore.close();
        },
      };
    },
    usage(domid) {
      const d = domain(domid);
      return { grants: d.grants.size, mappings: mappingsBy.get(domid)?.size ?? 0, ports: d.ports.size };
    },
  };
}
