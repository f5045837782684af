// The simulator's event-channel memory: what Xen keeps in each domain's shared_info page
// (evtchn_pending / evtchn_mask bitmaps of the 2-level ABI) and each vCPU's
// evtchn_upcall_pending flag, plus the port table Xen keeps privately, laid out in files every
// attached process maps. All words are u32 little-endian and accessed with Atomics (the C peer
// uses __atomic builtins on the same words).
//
// Event page (one per domain instance, file evtchn-<domid>.<instance>):
//   @0     pending bits, NR_PORTS bits (u32 words; port p is bit p%32 of word p/32)
//   @512   mask bits, same shape
//   @4096  port table, 32 bytes per port: state, remote domid, remote port, remote instance,
//          owner slot, owner slot generation (u32 each), 2 words reserved.
//          Written only by the daemon: fields first, state last.
// Slot table (one per simulator, file `slots`), 16 bytes per attached process ("vCPU"):
//   upcall pending, generation (0 = free), domid, pid.
// Each slot has a doorbell FIFO; whoever moves its upcall flag from 0 to 1 writes one byte.
//
// Raising an event (evtchn_2l_set_pending in spirit): set the pending bit; if it was already set
// the event coalesces; if the port is masked nothing else happens (unmasking re-checks);
// otherwise set the owner's upcall flag and ring its doorbell only on the 0 -> 1 transition.
// The receiver clears the upcall flag BEFORE scanning pending bits, so an event raised during
// the scan either is seen by the scan or finds the flag clear and rings again: no lost wakeup.

/** Ports per domain: the 2-level ABI's limit on 64-bit guests (EVTCHN_2L_NR_CHANNELS). */
export const NR_PORTS = 4096;

/** Byte layout of an event page. */
export const EVTCHN_PAGE = {
  pending: 0,
  mask: 512,
  ports: 4096,
  portEntry: 32,
  size: 4096 + NR_PORTS * 32,
} as const;

/** u32 indices of the event page's parts (byte offset / 4). */
export const PENDING_W = EVTCHN_PAGE.pending / 4;
export const MASK_W = EVTCHN_PAGE.mask / 4;
export const PORTS_W = EVTCHN_PAGE.ports / 4;
/** u32 words per port-table entry. */
export const PORT_WORDS = EVTCHN_PAGE.portEntry / 4;

/** Fields of a port-table entry, as u32 word offsets within it. */
export const PORT = { state: 0, remoteDomid: 1, remotePort: 2, remoteInstance: 3, ownerSlot: 4, ownerGen: 5 } as const;

/** event_channel.h EVTCHNSTAT_*: the states a port can be in. */
export const EVTCHNSTAT = { closed: 0, unbound: 1, interdomain: 2 } as const;

/** Slot table geometry. */
export const SLOTS = { max: 1024, entry: 16, size: 1024 * 16 } as const;
/** Fields of a slot entry, as u32 word offsets within it. */
export const SLOT = { upcall: 0, gen: 1, domid: 2, pid: 3 } as const;
/** u32 words per slot entry. */
export const SLOT_WORDS = SLOTS.entry / 4;

/** `portWord(p)` is the u32 index of the state word of port `p` in an event page. */
export function portWord(p: number): number {
  return PORTS_W + p * PORT_WORDS;
}

/**
 * `raiseEvent(page, port, slots, ring)` marks `port` pending in the event page `page` and, when
 * that makes its owner's upcall flag go from 0 to 1, calls `ring(slot, gen)` to wake the owner.
 * Allocation-free: this is the notify hot path.
 */
export function raiseEvent(page: Uint32Array, port: number, slots: Uint32Array, ring: (slot: number, gen: number) => void): void {
  const w = port >>> 5;
  const bit = 1 << (port & 31);
  const old = Atomics.or(page, PENDING_W + w, bit);
  if ((old & bit) !== 0) return;
  if ((Atomics.load(page, MASK_W + w) & bit) !== 0) return;
  const e = PORTS_W + port * PORT_WORDS;
  const gen = Atomics.load(page, e + PORT.ownerGen);
  if (gen === 0) return;
  const slot = Atomics.load(page, e + PORT.ownerSlot);
  if (slot >= SLOTS.max) return;
  const s = slot * SLOT_WORDS;
  if (Atomics.load(slots, s + SLOT.gen) !== gen) return;
  if (Atomics.exchange(slots, s + SLOT.upcall, 1) !== 0) return;
  ring(slot, gen);
}
