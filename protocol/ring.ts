// The Xen shared ring (xen/include/public/io/ring.h), as pure functions over a byte buffer.
//
// Layout (ring.h `struct __name##_sring`): req_prod@0, req_event@4, rsp_prod@8, rsp_event@12,
// private bytes @16..63, entries from @64. Every index is a free-running u32: slots are
// `idx & (size - 1)` and every comparison is done modulo 2^32, so a ring that has carried
// 2^32 requests keeps working (ring.h relies on unsigned wrap-around in the same way).
//
// The four shared indices are read and written with Atomics: the other end is another process
// (or domain) on another core, and a sequentially-consistent store/load gives both the wmb()
// that ring.h puts before publishing a producer index and the mb() it puts between publishing
// and reading the peer's event index.

/** ring.h: offsetof(struct sring, ring) — the header is 64 bytes on every ABI. */
export const RING_HEADER_SIZE = 64;

const REQ_PROD = 0;
const REQ_EVENT = 1;
const RSP_PROD = 2;
const RSP_EVENT = 3;

/** A problem with a ring's memory or with what the peer published in it. */
export class RingError extends Error {
  override readonly name = 'RingError';
  constructor(message: string, readonly field: string, readonly value: number) {
    super(message);
  }
}

/** A shared ring mapped at `bytes`: `size` entries of `entrySize` bytes. */
export interface Sring {
  readonly bytes: Uint8Array;
  /** The four shared u32 indices, accessed only through Atomics. */
  readonly idx: Uint32Array;
  readonly size: number;
  readonly entrySize: number;
}

/**
 * `ringEntries(ringBytes, entrySize)` is the number of entries ring.h's __RING_SIZE gives a ring
 * of `ringBytes` bytes: the largest power of two that fits after the 64-byte header.
 * blkif (112-byte entries): 32, 64, 128, 256, 512 for 1, 2, 4, 8, 16 pages.
 */
export function ringEntries(ringBytes: number, entrySize: number): number {
  if (!Number.isInteger(ringBytes) || !Number.isInteger(entrySize) || entrySize <= 0) {
    throw new RingError(`invalid ring geometry ${ringBytes}/${entrySize}`, 'entrySize', entrySize);
  }
  const fit = Math.floor((ringBytes - RING_HEADER_SIZE) / entrySize);
  if (fit < 1) throw new RingError(`a ring of ${ringBytes} bytes holds no ${entrySize}-byte entry`, 'ringBytes', ringBytes);
  return 2 ** Math.floor(Math.log2(fit));
}

/** `sringAttach(bytes, entrySize)` is a view of an existing ring in `bytes`, indices untouched. */
export function sringAttach(bytes: Uint8Array, entrySize: number): Sring {
  if (bytes.byteOffset % 4 !== 0) throw new RingError('ring memory must be 4-byte aligned', 'byteOffset', bytes.byteOffset);
  const size = ringEntries(bytes.byteLength, entrySize);
  const idx = new Uint32Array(bytes.buffer, bytes.byteOffset, 4);
  return { bytes, idx, size, entrySize };
}

/**
 * `sringInit(bytes, entrySize)` initialises a fresh ring as SHARED_RING_INIT does: producers at 0,
 * event indices at 1 (so the first push notifies), the private/padding bytes zeroed.
 */
export function sringInit(bytes: Uint8Array, entrySize: number): Sring {
  const s = sringAttach(bytes, entrySize);
  bytes.fill(0, 16, RING_HEADER_SIZE);
  Atomics.store(s.idx, REQ_PROD, 0);
  Atomics.store(s.idx, RSP_PROD, 0);
  Atomics.store(s.idx, REQ_EVENT, 1);
  Atomics.store(s.idx, RSP_EVENT, 1);
  return s;
}

/** `entryOffset(s, i)` is the byte offset in `s.bytes` of the slot for index `i` (RING_GET_REQUEST/RESPONSE). */
export function entryOffset(s: Sring, i: number): number {
  return RING_HEADER_SIZE + ((i & (s.size - 1)) >>> 0) * s.entrySize;
}

/** `reqProd(s)` is the shared request producer index as last published by the frontend. */
export function reqProd(s: Sring): number {
  return Atomics.load(s.idx, REQ_PROD);
}
/** `rspProd(s)` is the shared response producer index as last published by the backend. */
export function rspProd(s: Sring): number {
  return Atomics.load(s.idx, RSP_PROD);
}
/** `reqEvent(s)` is the request index at which the backend asked to be notified. */
export function reqEvent(s: Sring): number {
  return Atomics.load(s.idx, REQ_EVENT);
}
/** `rspEvent(s)` is the response index at which the frontend asked to be notified. */
export function rspEvent(s: Sring): number {
  return Atomics.load(s.idx, RSP_EVENT);
}

// ---------------------------------------------------------------------------------------------
// Front end (produces requests, consumes responses)

/** The frontend's private view: its unpublished request producer and its response consumer. */
export interface FrontRing {
  readonly sring: Sring;
  reqProdPvt: number;
  rspCons: number;
}

/** `frontRingInit(s)` is a front ring over a freshly initialised `s` (FRONT_RING_INIT). */
export function frontRingInit(s: Sring): FrontRing {
  return { sring: s, reqProdPvt: 0, rspCons: 0 };
}

/** `frontRingAttach(s, start)` is a front ring resuming at index `start` (FRONT_RING_ATTACH). */
export function frontRingAttach(s: Sring, start: number): FrontRing {
  return { sring: s, reqProdPvt: start >>> 0, rspCons: start >>> 0 };
}

/** `freeRequests(f)` is how many requests the frontend may still queue (RING_FREE_REQUESTS). */
export function freeRequests(f: FrontRing): number {
  return f.sring.size - ((f.reqProdPvt - f.rspCons) >>> 0);
}

/** `nextRequestOffset(f)` is the byte offset of the slot the next request goes in; it advances reqProdPvt. */
export function nextRequestOffset(f: FrontRing): number {
  const off = entryOffset(f.sring, f.reqProdPvt);
  f.reqProdPvt = (f.reqProdPvt + 1) >>> 0;
  return off;
}

/**
 * `pushRequestsAndCheckNotify(f)` publishes the queued requests and is whether the backend must
 * be notified (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY): only if it asked for an event in the
 * range of indices just published.
 */
export function pushRequestsAndCheckNotify(f: FrontRing): boolean {
  const s = f.sring;
  const oldProd = Atomics.load(s.idx, REQ_PROD);
  const newProd = f.reqProdPvt;
  Atomics.store(s.idx, REQ_PROD, newProd);
  const event = Atomics.load(s.idx, REQ_EVENT);
  return ((newProd - event) >>> 0) < ((newProd - oldProd) >>> 0);
}

/** `unconsumedResponses(f)` is how many published responses the frontend has not consumed yet. */
export function unconsumedResponses(f: FrontRing): number {
  return (Atomics.load(f.sring.idx, RSP_PROD) - f.rspCons) >>> 0;
}

/** `nextResponseSlot(f)` is the byte offset of the next response to consume; it advances rspCons. */
export function nextResponseSlot(f: FrontRing): number {
  const off = entryOffset(f.sring, f.rspCons);
  f.rspCons = (f.rspCons + 1) >>> 0;
  return off;
}

/**
 * `responseProdOverflow(f, prod)` is whether a published `prod` claims more unconsumed responses
 * than the ring holds (RING_RESPONSE_PROD_OVERFLOW): the backend is buggy or malicious.
 */
export function responseProdOverflow(f: FrontRing, prod: number): boolean {
  return ((prod - f.rspCons) >>> 0) > f.sring.size;
}

/**
 * `finalCheckForResponses(f)` is whether responses are waiting; when none are, it first asks for
 * an event on the next response and re-checks, so a response published concurrently is not
 * slept through (RING_FINAL_CHECK_FOR_RESPONSES).
 */
export function finalCheckForResponses(f: FrontRing): boolean {
  if (unconsumedResponses(f) !== 0) return true;
  Atomics.store(f.sring.idx, RSP_EVENT, (f.rspCons + 1) >>> 0);
  return unconsumedResponses(f) !== 0;
}

// ---------------------------------------------------------------------------------------------
// Back end (consumes requests, produces responses)

/** The backend's private view: its request consumer and its unpublished response producer. */
export interface BackRing {
  readonly sring: Sring;
  reqCons: number;
  rspProdPvt: number;
}

/** `backRingInit(s)` is a back ring over a freshly initialised `s` (BACK_RING_INIT). */
export function backRingInit(s: Sring): BackRing {
  return { sring: s, reqCons: 0, rspProdPvt: 0 };
}

/**
 * `backRingAttach(s)` is a back ring over a ring the frontend already used, resuming after the
 * last published response (BACK_RING_ATTACH at rsp_prod, as Linux blkback reconnects): requests
 * answered before are not served twice, requests published but unanswered are served.
 */
export function backRingAttach(s: Sring): BackRing {
  const start = rspProd(s);
  return { sring: s, reqCons: start, rspProdPvt: start };
}

/**
 * `requestProdOverflow(b, prod)` is whether a published `prod` claims more outstanding requests
 * than the ring holds (RING_REQUEST_PROD_OVERFLOW): the frontend is buggy or malicious.
 */
export function requestProdOverflow(b: BackRing, prod: number): boolean {
  return ((prod - b.rspProdPvt) >>> 0) > b.sring.size;
}

/** `requestConsOverflow(b, cons)` is whether consuming index `cons` would exceed the ring (RING_REQUEST_CONS_OVERFLOW). */
export function requestConsOverflow(b: BackRing, cons: number): boolean {
  return ((cons - b.rspProdPvt) >>> 0) >= b.sring.size;
}

/**
 * `unconsumedRequests(b)` is how many requests the backend may consume now
 * (RING_HAS_UNCONSUMED_REQUESTS): the published ones, bounded by the free response slots so a
 * frontend that publishes more than the ring holds is never obeyed past the ring.
 */
export function unconsumedRequests(b: BackRing): number {
  const req = (Atomics.load(b.sring.idx, REQ_PROD) - b.reqCons) >>> 0;
  // u32 like ring.h's `unsigned int rsp`: never negative, even if responses ran ahead.
  const rsp = (b.sring.size - ((b.reqCons - b.rspProdPvt) >>> 0)) >>> 0;
  return req < rsp ? req : rsp;
}

/** `nextRequestSlot(b)` is the byte offset of the next request to consume; it advances reqCons. */
export function nextRequestSlot(b: BackRing): number {
  const off = entryOffset(b.sring, b.reqCons);
  b.reqCons = (b.reqCons + 1) >>> 0;
  return off;
}

/** `nextResponseOffset(b)` is the byte offset of the slot the next response goes in; it advances rspProdPvt. */
export function nextResponseOffset(b: BackRing): number {
  const off = entryOffset(b.sring, b.rspProdPvt);
  b.rspProdPvt = (b.rspProdPvt + 1) >>> 0;
  return off;
}

/** `pushResponsesAndCheckNotify(b)` publishes the queued responses and is whether to notify the frontend (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY). */
export function pushResponsesAndCheckNotify(b: BackRing): boolean {
  const oldProd = Atomics.load(b.sring.idx, RSP_PROD);
  publishResponses(b);
  return responsesNotifyDue(b, oldProd);
}

/**
 * `publishResponses(b)` makes the queued responses visible to the frontend (rsp_prod) without
 * the notify check; `responsesNotifyDue(b, since)` is that check, done later for everything
 * published after `since` (the rsp_prod of the previous check). Together they are
 * RING_PUSH_RESPONSES_AND_CHECK_NOTIFY split in two, so that a backend can publish each response
 * as it is ready and decide on one event for the whole batch: the frontend's rsp_event either
 * falls inside (since, rsp_prod], and it gets the event, or it is past it, and its final check
 * (RING_FINAL_CHECK_FOR_RESPONSES) saw the responses itself.
 */
export function publishResponses(b: BackRing): void {
  Atomics.store(b.sring.idx, RSP_PROD, b.rspProdPvt);
}

/** `responsesNotifyDue(b, since)`: see publishResponses. */
export function responsesNotifyDue(b: BackRing, since: number): boolean {
  const prod = Atomics.load(b.sring.idx, RSP_PROD);
  const event = Atomics.load(b.sring.idx, RSP_EVENT);
  return ((prod - event) >>> 0) < ((prod - since) >>> 0);
}

/**
 * `finalCheckForRequests(b)` is whether requests are waiting; when none are, it first asks for an
 * event on the next request and re-checks (RING_FINAL_CHECK_FOR_REQUESTS).
 */
export function finalCheckForRequests(b: BackRing): boolean {
  if (unconsumedRequests(b) !== 0) return true;
  Atomics.store(b.sring.idx, REQ_EVENT, (b.reqCons + 1) >>> 0);
  return unconsumedRequests(b) !== 0;
}
