// protocol/xs-wire.ts: framing survives any chunking, oversize frames are refused for good,
// payload helpers and the permission codec round-trip. (Constants and byte layout are
// checked against xs_wire.h itself in test/conformance/xenstore-wire.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  XENSTORE_PAYLOAD_MAX, XS_HEADER_SIZE, XsMessageReader, XsOp, XsWireError, decodeErrorReply, decodePermissions,
  decodeStringList, decodeWatchEvent, encodeMessage, encodePermissions, formatPermission, nulStrings, parsePermission,
  permissionBits, permissionLetter, splitNul, xsOpName, type XsMessage, type XsPermission,
} from '../../protocol/xs-wire.ts';

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const message = fc.record({
  type: u32,
  reqId: u32,
  txId: u32,
  payload: fc.uint8Array({ maxLength: 300 }),
});

function plain(m: XsMessage): object {
  return { ...m, payload: [...m.payload] };
}

test('a message stream decodes identically however it is chunked', () => {
  fc.assert(fc.property(fc.array(message, { maxLength: 12 }), fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1 }), (msgs, cuts) => {
    const stream = new Uint8Array(msgs.reduce((n, m) => n + XS_HEADER_SIZE + m.payload.length, 0));
    let off = 0;
    for (const m of msgs) {
      const e = encodeMessage(m);
      stream.set(e, off);
      off += e.length;
    }
    const reader = new XsMessageReader();
    const got: XsMessage[] = [];
    let pos = 0;
    for (let i = 0; pos < stream.length; i++) {
      const n = cuts[i % cuts.length]!;
      got.push(...reader.feed(stream.subarray(pos, pos + n)));
      pos += n;
    }
    assert.deepEqual(got.map(plain), msgs.map(plain));
    assert.equal(reader.buffered, 0);
  }));
});

test('several messages in one chunk, including empty payloads', () => {
  const a = encodeMessage({ type: XsOp.TRANSACTION_START, reqId: 1, txId: 0, payload: new Uint8Array(0) });
  const b = encodeMessage({ type: XsOp.READ, reqId: 2, txId: 9, payload: nulStrings(['/a']) });
  const got = new XsMessageReader().feed(new Uint8Array([...a, ...b, ...a.subarray(0, 5)]));
  assert.equal(got.length, 2);
  assert.equal(got[0]!.payload.length, 0);
  assert.deepEqual([...got[1]!.payload], [...nulStrings(['/a'])]);
});

test('a frame announcing more than XENSTORE_PAYLOAD_MAX is refused, and the stream stays failed', () => {
  const good = encodeMessage({ type: XsOp.WRITE, reqId: 2, txId: 0, payload: nulStrings(['/a']) });
  const h = encodeMessage({ type: XsOp.WRITE, reqId: 3, txId: 0, payload: new Uint8Array(0) });
  new DataView(h.buffer).setUint32(12, XENSTORE_PAYLOAD_MAX + 1, true);
  const reader = new XsMessageReader();
  // What came before the bad header in the same chunk is still delivered.
  const got = reader.feed(new Uint8Array([...good, ...h, 1, 2, 3]));
  assert.deepEqual(got.map((m) => m.reqId), [2]);
  const e = reader.error;
  assert.ok(e instanceof XsWireError && e.reason === 'oversize' && e.field === 'len' && e.value === XENSTORE_PAYLOAD_MAX + 1);
  assert.throws(() => reader.feed(new Uint8Array(1)), XsWireError);
  // The largest legal payload passes, in pieces.
  const big = encodeMessage({ type: XsOp.WRITE, reqId: 4, txId: 0, payload: new Uint8Array(XENSTORE_PAYLOAD_MAX) });
  const r2 = new XsMessageReader();
  assert.equal(r2.feed(big.subarray(0, 10)).length, 0);
  assert.equal(r2.feed(big.subarray(10)).length, 1);
  assert.throws(() => encodeMessage({ type: 1, reqId: 1, txId: 0, payload: new Uint8Array(XENSTORE_PAYLOAD_MAX + 1) }), XsWireError);
  assert.throws(() => encodeMessage({ type: -1, reqId: 1, txId: 0, payload: new Uint8Array(0) }), /type/);
  assert.throws(() => encodeMessage({ type: 1, reqId: 2 ** 32, txId: 0, payload: new Uint8Array(0) }), /req_id/);
});

test('payload helpers follow xenstored string conventions', () => {
  assert.deepEqual(splitNul(new TextEncoder().encode('a\0bc\0tail')).strings.map((s) => [...s]), [[97], [98, 99]]);
  assert.deepEqual(decodeStringList(new TextEncoder().encode('x\0y\0')), ['x', 'y']);
  assert.deepEqual(decodeStringList(new Uint8Array(0)), []);
  assert.deepEqual(decodeWatchEvent(new TextEncoder().encode('/p\0tok\0')), { path: '/p', token: 'tok' });
  assert.throws(() => decodeWatchEvent(new TextEncoder().encode('/p')), XsWireError);
  assert.equal(decodeErrorReply(new TextEncoder().encode('EACCES\0')), 'EACCES');
  assert.throws(() => decodeErrorReply(new TextEncoder().encode('garbage here\0')), XsWireError);
  assert.equal(xsOpName(XsOp.DIRECTORY_PART), 'DIRECTORY_PART');
  assert.equal(xsOpName(20), 'UNKNOWN(20)');
});

const perm = fc.record({ domid: fc.integer({ min: 0, max: 0xffff }), perm: fc.constantFrom<XsPermission['perm']>('n', 'r', 'w', 'b') });

test('permission strings round-trip and reject junk', () => {
  fc.assert(fc.property(fc.array(perm, { minLength: 1, maxLength: 8 }), (perms) => {
    assert.deepEqual(decodePermissions(encodePermissions(perms)), perms.map((p) => ({ ...p })));
    for (const p of perms) assert.equal(permissionLetter(permissionBits(p.perm)), p.perm);
  }));
  assert.equal(formatPermission({ domid: 5, perm: 'r' }), 'r5');
  for (const bad of ['', 'r', 'x5', 'r-1', 'r5x', 'r65536', ' r5', 'R5']) assert.throws(() => parsePermission(bad), XsWireError, bad);
  assert.throws(() => formatPermission({ domid: 70000, perm: 'r' }), XsWireError);
  assert.throws(() => encodePermissions([]), XsWireError);
});
