// Event channels on the simulated Xen host. Control operations (alloc_unbound, bind_interdomain,
// close) are "hypercalls" to the simulator's daemon, which owns the port tables; the data path
// (notify, delivery) never involves the daemon: notify() sets the peer's pending bit in its
// event page and rings the owner's doorbell FIFO; delivery is a uv_poll on our own doorbell.
// See sim-shared-info.ts for the memory layout and the no-lost-wakeup argument.
//
// Delivery follows Linux's /dev/xen/evtchn driver, which masks a port when it reports it and
// lets userspace unmask it: for each pending port of ours we set the mask bit, clear the
// pending bit, clear the mask bit again (the EventChannel contract: unmasked before the handler
// runs) and, as Xen's EVTCHNOP_unmask does, re-check pending after unmasking and raise the
// upcall again if an event arrived while the port was masked.
//
// Measured on the development machine (2 vCPUs shared with other jobs): notify -> handler ->
// notify back -> handler between two processes ~21 us p50, ~50 us p99 per round trip
// (test/integration/evtchn-processes.test.ts prints it); a notify() that finds the peer's upcall
// flag already up costs ~0.25 us (atomics only), otherwise one write(2) more.
import fs from 'node:fs';
import type { EventChannel, EventChannels } from './evtchn.ts';
import { EvtchnError } from './error.ts';
import {
  EVTCHN_PAGE, EVTCHNSTAT, MASK_W, PENDING_W, PORT, SLOT, SLOT_WORDS, portWord, raiseEvent,
} from './sim-shared-info.ts';
import { FdWatch } from '../native/fd-watch.ts';
import { openFifoReader, openFifoWriter, ringFifo } from '../native/fifo.ts';
import { libc, NativeError } from '../native/libc.ts';
import { Mapping } from '../native/memory.ts';
import { addHandler, dispatchEvent } from './dispatch.ts';

/** The daemon calls SimEventChannels makes; each throws EvtchnError when refused. */
export interface SimEvtchnHypervisor {
  /** EVTCHNOP_alloc_unbound: a new port of ours that `remoteDomid` may bind. */
  allocUnbound(remoteDomid: number): number;
  /** EVTCHNOP_bind_interdomain: a new port of ours connected to (`remoteDomid`, `remotePort`). */
  bindInterdomain(remoteDomid: number, remotePort: number): number;
  /** EVTCHNOP_close on a port of ours. */
  closePort(port: number): void;
}

/** Where the simulator keeps event pages and doorbells. */
export interface SimEvtchnPaths {
  eventPage(domid: number, instance: number): string;
  doorbell(slot: number, gen: number): string;
}

/** What an attached process hands SimEventChannels. */
export interface SimEvtchnConfig {
  readonly domid: number;
  /** This domain's instance number (domids are re-used; instances are not). */
  readonly instance: number;
  /** This process's slot in the slot table and the slot's generation. */
  readonly slot: number;
  readonly slotGen: number;
  /** This domain's event page, mapped by the caller for as long as the channels live. */
  readonly eventPage: Uint32Array;
  /** The simulator's slot table, mapped by the caller. */
  readonly slots: Uint32Array;
  readonly paths: SimEvtchnPaths;
  readonly hypervisor: SimEvtchnHypervisor;
}

interface PeerPage {
  readonly mapping: Mapping;
  readonly page: Uint32Array;
  users: number;
}

interface Doorbell {
  readonly gen: number;
  readonly fd: number;
}

class SimEventChannel implements EventChannel {
  readonly handlers: (() => void)[] = [];
  /** An event arrived while no handler was registered; delivered to the first one. */
  undelivered = false;
  open = true;
  /** Instance of the peer page this channel holds a reference on (0 = none). */
  peerInstance = 0;
  fired = false;
  readonly word: number;
  readonly bit: number;

  constructor(private readonly owner: SimEventChannels, readonly localPort: number, readonly remoteDomid: number) {
    this.word = localPort >>> 5;
    this.bit = 1 << (localPort & 31);
  }

  notify(): void {
    if (!this.open) throw new EvtchnError('EINVAL', 'notify', this.remoteDomid, this.localPort, 'channel is closed');
    this.owner.notifyChannel(this);
  }

  onEvent(handler: () => void): void {
    if (!this.open) throw new EvtchnError('EINVAL', 'read', this.remoteDomid, this.localPort, 'channel is closed');
    addHandler(this, handler);
  }

  close(): void {
    this.owner.closeChannel(this);
  }
}

/** Event channels of one attached process of a simulated domain. */
export class SimEventChannels implements EventChannels {
  private readonly own: Uint32Array;
  private readonly slots: Uint32Array;
  private readonly channels = new Map<number, SimEventChannel>();
  private bound: SimEventChannel[] = [];
  private readonly peers = new Map<number, PeerPage>();
  private readonly gone = new Set<number>();
  private readonly bells = new Map<number, Doorbell>();
  private readonly readerFd: number;
  private readonly watch: FdWatch;
  private readonly scratch = new Uint8Array(256);
  private readonly ring = (slot: number, gen: number): void => this.ringDoorbell(slot, gen);
  private closed = false;

  /** `new SimEventChannels(cfg)` opens this process's doorbell and starts watching it. */
  constructor(private readonly cfg: SimEvtchnConfig) {
    this.own = cfg.eventPage;
    this.slots = cfg.slots;
    try {
      this.readerFd = openFifoReader(cfg.paths.doorbell(cfg.slot, cfg.slotGen));
    } catch (e) {
      throw new EvtchnError('ENODEV', 'open', cfg.domid, undefined, `doorbell: ${(e as Error).message}`);
    }
    // The watch drains the doorbell itself (one read into scratch) before calling onDoorbell.
    this.watch = new FdWatch(this.readerFd, () => this.onDoorbell(), { buffer: this.scratch });
    this.watch.unref();
  }

  allocUnbound(remoteDomid: number): EventChannel {
    this.assertOpen('allocUnbound');
    const port = this.cfg.hypervisor.allocUnbound(remoteDomid);
    return this.adopt(port, remoteDomid);
  }

  bindInterdomain(remoteDomid: number, remotePort: number): EventChannel {
    this.assertOpen('bindInterdomain');
    const port = this.cfg.hypervisor.bindInterdomain(remoteDomid, remotePort);
    return this.adopt(port, remoteDomid);
  }

  close(): void {
    if (this.closed) return;
    for (const ch of [...this.channels.values()]) {
      try { this.closeChannel(ch); } catch { /* the daemon releases what we could not */ }
    }
    this.closed = true;
    this.watch.close();
    libc.close(this.readerFd);
    for (const b of this.bells.values()) libc.close(b.fd);
    this.bells.clear();
    for (const p of this.peers.values()) p.mapping.unmap();
    this.peers.clear();
  }

  /** `notifyChannel(ch)` is EVTCHNOP_send: raise the event at the remote end, if still connected. */
  notifyChannel(ch: SimEventChannel): void {
    const e = portWord(ch.localPort);
    const own = this.own;
    if (Atomics.load(own, e + PORT.state) !== EVTCHNSTAT.interdomain) return; // Xen drops sends on unbound ports
    const rport = Atomics.load(own, e + PORT.remotePort);
    const rinst = Atomics.load(own, e + PORT.remoteInstance);
    let page: Uint32Array | undefined;
    if (rinst === this.cfg.instance) {
      page = own;
    } else {
      if (ch.peerInstance !== rinst) this.retarget(ch, rinst, Atomics.load(own, e + PORT.remoteDomid));
      page = this.peers.get(rinst)?.page;
      if (page === undefined) return; // the peer domain is gone
    }
    raiseEvent(page, rport, this.slots, this.ring);
  }

  /** `closeChannel(ch)` is EVTCHNOP_close on the channel's port. */
  closeChannel(ch: SimEventChannel): void {
    if (!ch.open) return;
    ch.open = false;
    this.channels.delete(ch.localPort);
    this.bound = [...this.channels.values()];
    this.releasePeer(ch);
    if (this.bound.length === 0) this.watch.unref();
    this.cfg.hypervisor.closePort(ch.localPort);
  }

  /** `dispatch(ch)` delivers an event to `ch` (see dispatch.ts). */
  dispatch(ch: SimEventChannel): void {
    dispatchEvent(ch);
  }

  private adopt(port: number, remoteDomid: number): EventChannel {
    const ch = new SimEventChannel(this, port, remoteDomid);
    this.channels.set(port, ch);
    this.bound = [...this.channels.values()];
    this.watch.ref();
    return ch;
  }

  private onDoorbell(): void {
    const own = this.own;
    Atomics.store(this.slots, this.cfg.slot * SLOT_WORDS + SLOT.upcall, 0);
    const bound = this.bound;
    let any = false;
    for (let i = 0; i < bound.length; i++) {
      const ch = bound[i]!;
      const w = ch.word;
      const bit = ch.bit;
      if ((Atomics.load(own, PENDING_W + w) & bit) === 0) continue;
      Atomics.or(own, MASK_W + w, bit);
      Atomics.and(own, PENDING_W + w, ~bit);
      Atomics.and(own, MASK_W + w, ~bit);
      if ((Atomics.load(own, PENDING_W + w) & bit) !== 0) this.kickSelf();
      ch.fired = true;
      any = true;
    }
    if (!any) return;
    for (let i = 0; i < bound.length; i++) {
      const ch = bound[i]!;
      if (!ch.fired) continue;
      ch.fired = false;
      if (ch.open) this.dispatch(ch);
    }
  }

  private kickSelf(): void {
    const s = this.cfg.slot * SLOT_WORDS;
    if (Atomics.exchange(this.slots, s + SLOT.upcall, 1) === 0) this.ringDoorbell(this.cfg.slot, this.cfg.slotGen);
  }

  private ringDoorbell(slot: number, gen: number): void {
    if (slot === this.cfg.slot && gen === this.cfg.slotGen) {
      ringFifo(this.readerFd);
      return;
    }
    let b = this.bells.get(slot);
    if (b === undefined || b.gen !== gen) {
      if (b !== undefined) libc.close(b.fd);
      this.bells.delete(slot);
      let fd: number;
      try {
        fd = openFifoWriter(this.cfg.paths.doorbell(slot, gen));
      } catch (e) {
        if (e instanceof NativeError) return; // that process is gone (ENOENT/ENXIO): nobody to wake
        throw e;
      }
      b = { gen, fd };
      this.bells.set(slot, b);
    }
    if (ringFifo(b.fd) === 'gone') {
      libc.close(b.fd);
      this.bells.delete(slot);
    }
  }

  private retarget(ch: SimEventChannel, instance: number, domid: number): void {
    this.releasePeer(ch);
    let p = this.peers.get(instance);
    if (p === undefined) {
      if (this.gone.has(instance)) return;
      let fd: number;
      try {
        fd = fs.openSync(this.cfg.paths.eventPage(domid, instance), 'r+');
      } catch {
        this.gone.add(instance);
        return;
      }
      try {
        const mapping = Mapping.file(fd, 0, EVTCHN_PAGE.size, true, `event page of d${domid}`);
        const buf = mapping.view();
        p = { mapping, page: new Uint32Array(buf.buffer, buf.byteOffset, EVTCHN_PAGE.size / 4), users: 0 };
      } finally {
        fs.closeSync(fd);
      }
      this.peers.set(instance, p);
    }
    p.users++;
    ch.peerInstance = instance;
  }

  private releasePeer(ch: SimEventChannel): void {
    if (ch.peerInstance === 0) return;
    const p = this.peers.get(ch.peerInstance);
    ch.peerInstance = 0;
    if (p === undefined || --p.users > 0) return;
    for (const [k, v] of this.peers) if (v === p) this.peers.delete(k);
    p.mapping.unmap();
  }

  private assertOpen(op: 'allocUnbound' | 'bindInterdomain'): void {
    if (this.closed) throw new EvtchnError('EINVAL', op, undefined, undefined, 'event channels closed');
  }
}
