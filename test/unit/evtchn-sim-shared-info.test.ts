// evtchn/sim-shared-info.ts raiseEvent: the decisions that make simulated event delivery both
// cheap and free of lost wakeups — coalesce on an already-pending port, defer on a masked one,
// ring the owner's doorbell only when its upcall flag goes from 0 to 1, and never ring a slot
// that a new process re-uses (generation check).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  EVTCHN_PAGE, MASK_W, NR_PORTS, PENDING_W, PORT, SLOT, SLOTS, SLOT_WORDS, portWord, raiseEvent,
} from '../../evtchn/sim-shared-info.ts';

function setup(port: number, slot: number, gen: number) {
  const page = new Uint32Array(EVTCHN_PAGE.size / 4);
  const slots = new Uint32Array(SLOTS.size / 4);
  page[portWord(port) + PORT.ownerSlot] = slot;
  page[portWord(port) + PORT.ownerGen] = gen;
  slots[slot * SLOT_WORDS + SLOT.gen] = gen;
  const rings: [number, number][] = [];
  const raise = (): void => raiseEvent(page, port, slots, (s, g) => rings.push([s, g]));
  const pending = (): boolean => (page[PENDING_W + (port >>> 5)]! & (1 << (port & 31))) !== 0;
  return { page, slots, rings, raise, pending };
}

test('first event rings the owner once; further events coalesce while pending or while the upcall flag is up', () => {
  const s = setup(37, 5, 9);
  s.raise();
  assert.ok(s.pending());
  assert.deepEqual(s.rings, [[5, 9]]);
  assert.equal(s.slots[5 * SLOT_WORDS + SLOT.upcall], 1);
  s.raise();
  assert.equal(s.rings.length, 1, 'already pending: coalesced');
  // The receiver consumed the port but has not cleared its upcall flag yet: no second ring.
  s.page[PENDING_W + 1] = 0;
  s.raise();
  assert.equal(s.rings.length, 1);
  // Once the receiver clears the flag (before scanning), the next event rings again.
  s.page[PENDING_W + 1] = 0;
  s.slots[5 * SLOT_WORDS + SLOT.upcall] = 0;
  s.raise();
  assert.equal(s.rings.length, 2);
});

test('a masked port is only marked pending (the unmasking side re-checks and raises)', () => {
  const s = setup(63, 1, 4);
  s.page[MASK_W + 1] = 1 << 31;
  s.raise();
  assert.ok(s.pending());
  assert.equal(s.rings.length, 0);
  assert.equal(s.slots[1 * SLOT_WORDS + SLOT.upcall], 0);
});

test('an owner that is gone (generation 0 or re-used slot) is not rung, but the bit is set', () => {
  const s = setup(1, 2, 7);
  s.slots[2 * SLOT_WORDS + SLOT.gen] = 8; // slot re-used by another process
  s.raise();
  assert.ok(s.pending());
  assert.equal(s.rings.length, 0);
  const u = setup(2, 0, 0); // closed port: no owner
  u.raise();
  assert.equal(u.rings.length, 0);
});

test('every port of the 2-level ABI maps to its own bit', () => {
  const page = new Uint32Array(EVTCHN_PAGE.size / 4);
  const slots = new Uint32Array(SLOTS.size / 4);
  slots[3 * SLOT_WORDS + SLOT.gen] = 1;
  const seen = new Set<string>();
  for (let p = 0; p < NR_PORTS; p++) {
    page[portWord(p) + PORT.ownerSlot] = 3;
    page[portWord(p) + PORT.ownerGen] = 1;
    let rung = 0;
    raiseEvent(page, p, slots, () => { rung++; });
    const pending = page.subarray(PENDING_W, MASK_W);
    const w = pending.findIndex((x) => x !== 0);
    assert.equal(w, p >>> 5);
    assert.equal(rung, 1);
    seen.add(`${w}:${pending[w]}`);
    pending.fill(0);
    slots[3 * SLOT_WORDS + SLOT.upcall] = 0;
  }
  assert.equal(seen.size, NR_PORTS);
});
