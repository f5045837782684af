import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  RING_HEADER_SIZE,
  RingError,
  backRingAttach,
  backRingInit,
  entryOffset,
  finalCheckForRequests,
  finalCheckForResponses,
  freeRequests,
  frontRingAttach,
  frontRingInit,
  nextRequestOffset,
  nextRequestSlot,
  nextResponseOffset,
  nextResponseSlot,
  publishResponses,
  pushRequestsAndCheckNotify,
  pushResponsesAndCheckNotify,
  reqEvent,
  reqProd,
  requestConsOverflow,
  requestProdOverflow,
  responseProdOverflow,
  responsesNotifyDue,
  ringEntries,
  rspEvent,
  rspProd,
  sringAttach,
  sringInit,
  unconsumedRequests,
  unconsumedResponses,
  type Sring,
} from '../../protocol/ring.ts';
import { ringEntrySize } from '../../protocol/blkif.ts';

const BLKIF = ringEntrySize('x86_64');

/** The ring.h rule restated: the largest power of two `p` with 64 + p * entry <= bytes, found by search. */
function modelEntries(bytes: number, entry: number): number {
  let p = 0;
  for (let c = 1; RING_HEADER_SIZE + c * entry <= bytes; c *= 2) p = c;
  return p;
}

/** ring.h's notify rule restated on the index line: the peer's event lies in (old, new] modulo 2^32. */
function modelNotify(oldProd: number, newProd: number, event: number): boolean {
  const M = 2n ** 32n;
  const published = (BigInt(newProd) - BigInt(oldProd) + M) % M;
  const e = (BigInt(event) - BigInt(oldProd) + M) % M;
  return e >= 1n && e <= published;
}

/** Writes a shared index the way a peer in another domain would: plain little-endian stores. */
function poke(s: Sring, byteOffset: number, v: number): void {
  new DataView(s.bytes.buffer, s.bytes.byteOffset).setUint32(byteOffset, v >>> 0, true);
}
const REQ_PROD = 0;
const REQ_EVENT = 4;
const RSP_PROD = 8;
const RSP_EVENT = 12;

function ringAt(order: number, start: number): Sring {
  const s = sringInit(new Uint8Array(new SharedArrayBuffer(4096 << order)), BLKIF);
  poke(s, REQ_PROD, start);
  poke(s, RSP_PROD, start);
  poke(s, REQ_EVENT, start + 1);
  poke(s, RSP_EVENT, start + 1);
  return s;
}

test('geometry: orders 0..4 and any entry size follow the round-down-to-a-power-of-two rule', () => {
  for (let order = 0; order <= 4; order++) {
    const bytes = 4096 << order;
    for (const entry of [1, 7, 16, 64, 108, 112, 113, 4000, 4032]) {
      const want = modelEntries(bytes, entry);
      if (want === 0) assert.throws(() => ringEntries(bytes, entry), RingError);
      else assert.equal(ringEntries(bytes, entry), want, `${entry} bytes, order ${order}`);
    }
    // Both blkif ABIs (112- and 108-byte entries) give the same ring.
    assert.equal(ringEntries(bytes, ringEntrySize('x86_32')), ringEntries(bytes, BLKIF));
    const s = sringInit(new Uint8Array(bytes), BLKIF);
    assert.equal(s.size, modelEntries(bytes, BLKIF));
    assert.ok(entryOffset(s, s.size - 1) + BLKIF <= bytes, 'the last slot fits in the ring');
    assert.equal(entryOffset(s, s.size), RING_HEADER_SIZE, 'slot index wraps at the ring size');
  }
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 4 }), fc.integer({ min: 1, max: 70000 }), (order, entry) => {
      const want = modelEntries(4096 << order, entry);
      if (want === 0) assert.throws(() => ringEntries(4096 << order, entry), RingError);
      else assert.equal(ringEntries(4096 << order, entry), want);
    }),
  );
  for (const bad of [0, -1, 1.5, NaN]) assert.throws(() => ringEntries(4096, bad), RingError);
});

test('sringInit sets producers to 0 and events to 1 and zeroes the private bytes; attach leaves them', () => {
  const buf = new Uint8Array(4096).fill(0xcc);
  const s = sringInit(buf, BLKIF);
  assert.deepEqual([reqProd(s), reqEvent(s), rspProd(s), rspEvent(s)], [0, 1, 0, 1]);
  assert.ok(buf.subarray(16, 64).every((b) => b === 0));
  assert.ok(buf.subarray(64).every((b) => b === 0xcc), 'entries untouched');
  poke(s, REQ_PROD, 7);
  const again = sringAttach(buf, BLKIF);
  assert.equal(reqProd(again), 7);
  assert.throws(() => sringAttach(new Uint8Array(new ArrayBuffer(4100), 2, 4096), BLKIF), RingError);
  assert.throws(() => sringAttach(new Uint8Array(64 + 50), BLKIF), RingError);
});

test('front and back: requests flow one way, responses the other, each slot in order', () => {
  const s = sringInit(new Uint8Array(4096), BLKIF);
  const f = frontRingInit(s);
  const b = backRingInit(s);
  assert.equal(freeRequests(f), 32);
  const offs = [nextRequestOffset(f), nextRequestOffset(f), nextRequestOffset(f)];
  assert.deepEqual(offs, [64, 64 + BLKIF, 64 + 2 * BLKIF]);
  assert.equal(freeRequests(f), 29);
  assert.equal(unconsumedRequests(b), 0, 'nothing is visible before the push');
  assert.equal(pushRequestsAndCheckNotify(f), true, 'a fresh ring asks for an event at index 1');
  assert.equal(unconsumedRequests(b), 3);
  assert.deepEqual([nextRequestSlot(b), nextRequestSlot(b), nextRequestSlot(b)], offs);
  assert.equal(finalCheckForRequests(b), false);
  assert.equal(reqEvent(s), 4, 'the back asks to hear about the next request');
  nextResponseOffset(b);
  nextResponseOffset(b);
  assert.equal(unconsumedResponses(f), 0);
  assert.equal(pushResponsesAndCheckNotify(b), true, 'rsp_event 1 is within (0, 2]');
  assert.equal(unconsumedResponses(f), 2);
  assert.deepEqual([nextResponseSlot(f), nextResponseSlot(f)], offs.slice(0, 2));
  assert.equal(finalCheckForResponses(f), false);
  assert.equal(rspEvent(s), 3);
  nextResponseOffset(b);
  assert.equal(pushResponsesAndCheckNotify(b), true, 'the front asked for response 3');
  assert.equal(finalCheckForResponses(f), true, 'final check sees the response without sleeping');
  assert.equal(freeRequests(f), 31);

  // A second push while the back has not asked for more does not notify.
  nextRequestOffset(f);
  assert.equal(pushRequestsAndCheckNotify(f), true, 'req_event 4 == new request');
  nextRequestOffset(f);
  assert.equal(pushRequestsAndCheckNotify(f), false, 'req_event 4 already passed');
});

test('free-running u32 indices wrap at 2^32 (from 0xFFFFFFF0)', () => {
  for (const order of [0, 2]) {
    const start = 0xfffffff0;
    const s = ringAt(order, start);
    const f = frontRingAttach(s, start);
    const b = backRingAttach(s);
    assert.equal(b.reqCons, start);
    let expectNext = start;
    let produced = start;
    for (let round = 0; round < 6; round++) {
      const n = Math.min(freeRequests(f), 13);
      const slots: number[] = [];
      for (let i = 0; i < n; i++) {
        assert.equal(f.reqProdPvt, produced);
        slots.push(nextRequestOffset(f));
        produced = (produced + 1) >>> 0;
      }
      pushRequestsAndCheckNotify(f);
      assert.equal(reqProd(s), produced);
      assert.equal(unconsumedRequests(b), n);
      for (let i = 0; i < n; i++) {
        assert.equal(entryOffset(s, b.reqCons), slots[i]);
        assert.equal(b.reqCons, expectNext);
        nextRequestSlot(b);
        nextResponseOffset(b);
        expectNext = (expectNext + 1) >>> 0;
      }
      pushResponsesAndCheckNotify(b);
      assert.equal(unconsumedResponses(f), n);
      for (let i = 0; i < n; i++) nextResponseSlot(f);
      assert.equal(finalCheckForResponses(f), false);
      assert.equal(finalCheckForRequests(b), false);
    }
    assert.ok(reqProd(s) < 0x100, 'the producer index wrapped past 2^32');
    assert.equal(rspEvent(s), (f.rspCons + 1) >>> 0);
    assert.equal(reqEvent(s), (b.reqCons + 1) >>> 0);
    assert.equal(freeRequests(f), s.size);
  }
});

test('a frontend that publishes more than the ring holds is detected and not obeyed', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 0xffffffff }), (start, order, claim) => {
      const s = ringAt(order, start);
      const b = backRingAttach(s);
      const prod = (start + claim) >>> 0;
      poke(s, REQ_PROD, prod); // the rogue frontend's claim
      assert.equal(requestProdOverflow(b, prod), claim > s.size);
      // However many are claimed, the backend never has more than a ring's worth outstanding.
      let consumed = 0;
      while (unconsumedRequests(b) > 0) {
        assert.equal(requestConsOverflow(b, b.reqCons), false);
        nextRequestSlot(b);
        consumed++;
        assert.ok(consumed <= s.size, 'consumed past the ring');
      }
      assert.equal(consumed, Math.min(claim, s.size));
      assert.equal(requestConsOverflow(b, b.reqCons), consumed === s.size);
      // Answering one frees a slot for one more, still bounded.
      if (consumed > 0) {
        nextResponseOffset(b);
        assert.equal(unconsumedRequests(b), claim > consumed ? 1 : 0);
      }
    }),
    { numRuns: 300 },
  );
});

test('unconsumedRequests is never negative, like ring.h\'s unsigned arithmetic, even if the back answered ahead', () => {
  const s = ringAt(0, 5);
  const b = backRingAttach(s);
  nextResponseOffset(b); // a response with no request: a backend bug
  assert.equal(unconsumedRequests(b), 0);
  poke(s, REQ_PROD, 9);
  assert.equal(unconsumedRequests(b), 4, 'min(4, 32 - (5 - 6) mod 2^32 = 33)');
});

test('a backend that publishes more responses than requests outstanding is detected', () => {
  const s = ringAt(0, 0xfffffffe);
  const f = frontRingAttach(s, 0xfffffffe);
  assert.equal(responseProdOverflow(f, (0xfffffffe + 32) >>> 0), false);
  assert.equal(responseProdOverflow(f, (0xfffffffe + 33) >>> 0), true);
  assert.equal(responseProdOverflow(f, 0xfffffffd), true, 'behind the consumer is a huge count');
});

test('notify decisions: producers notify exactly when the peer event is in the range just published', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 0, max: 32 }),
      fc.oneof(fc.integer({ min: -40, max: 40 }), fc.integer({ min: 0, max: 0xffffffff })),
      fc.boolean(),
      (start, n, eventDelta, requests) => {
        const s = ringAt(0, start);
        const event = (start + eventDelta) >>> 0;
        poke(s, requests ? REQ_EVENT : RSP_EVENT, event);
        let notify: boolean;
        if (requests) {
          const f = frontRingAttach(s, start);
          for (let i = 0; i < n; i++) nextRequestOffset(f);
          notify = pushRequestsAndCheckNotify(f);
          assert.equal(reqProd(s), (start + n) >>> 0);
        } else {
          const b = backRingAttach(s);
          b.reqCons = (start + n) >>> 0; // the requests were consumed
          for (let i = 0; i < n; i++) nextResponseOffset(b);
          notify = pushResponsesAndCheckNotify(b);
          assert.equal(rspProd(s), (start + n) >>> 0);
        }
        assert.equal(notify, modelNotify(start, (start + n) >>> 0, event));
      },
    ),
    { numRuns: 1000 },
  );
});

test('split push: publishing in steps and checking once decides as the combined macro over the whole range', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.array(fc.integer({ min: 0, max: 8 }), { minLength: 1, maxLength: 4 }),
      fc.oneof(fc.integer({ min: -40, max: 40 }), fc.integer({ min: 0, max: 0xffffffff })),
      (start, steps, eventDelta) => {
        const s = ringAt(0, start);
        const event = (start + eventDelta) >>> 0;
        poke(s, RSP_EVENT, event);
        const b = backRingAttach(s);
        const n = steps.reduce((a, x) => a + x, 0);
        b.reqCons = (start + n) >>> 0;
        for (const k of steps) {
          for (let i = 0; i < k; i++) nextResponseOffset(b);
          publishResponses(b);
          assert.equal(rspProd(s), b.rspProdPvt, 'each step is visible at once');
        }
        assert.equal(responsesNotifyDue(b, start), modelNotify(start, (start + n) >>> 0, event));
      },
    ),
    { numRuns: 1000 },
  );
});

test('split push: no lost wake-up against a frontend doing ring.h final checks, in any interleaving', () => {
  // The backend publishes responses in steps and checks once after each batch; the frontend,
  // when awake, consumes and runs RING_FINAL_CHECK_FOR_RESPONSES, sleeping if it finds nothing.
  // Whatever the interleaving, after the backend's last check the frontend is awake or has seen
  // every response.
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.array(fc.constantFrom('publish', 'check', 'front'), { maxLength: 60 }),
      (start, script) => {
        const s = ringAt(0, start);
        const b = backRingAttach(s);
        const f = frontRingAttach(s, start);
        let since = start;
        let awake = false;
        let produced = 0;
        const check = (): void => {
          if (responsesNotifyDue(b, since)) awake = true;
          since = b.rspProdPvt;
        };
        for (const step of [...script, 'check']) {
          if (step === 'publish' && produced < 32) {
            b.reqCons = (b.reqCons + 1) >>> 0;
            nextResponseOffset(b);
            produced++;
            publishResponses(b);
          } else if (step === 'check') {
            check();
          } else if (step === 'front' && awake) {
            for (;;) {
              while (unconsumedResponses(f) > 0) { nextResponseSlot(f); produced--; }
              if (!finalCheckForResponses(f)) break;
            }
            awake = false;
          }
        }
        assert.ok(awake || unconsumedResponses(f) === 0, `frontend asleep with ${unconsumedResponses(f)} responses unseen`);
      },
    ),
    { numRuns: 2000 },
  );
});

test('final checks: with nothing pending they ask for the next index and re-check', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 3 }), (start, pending) => {
      const s = ringAt(0, start);
      const f = frontRingAttach(s, start);
      const b = backRingAttach(s);
      poke(s, REQ_EVENT, 12345);
      poke(s, RSP_EVENT, 12345);
      poke(s, REQ_PROD, start + pending);
      assert.equal(finalCheckForRequests(b), pending > 0);
      // ring.h: the event index is written only when nothing was pending.
      assert.equal(reqEvent(s), pending > 0 ? 12345 : (start + 1) >>> 0);
      poke(s, RSP_PROD, start + pending);
      assert.equal(finalCheckForResponses(f), pending > 0);
      assert.equal(rspEvent(s), pending > 0 ? 12345 : (start + 1) >>> 0);
    }),
  );
});
