// gnttab/linux-ioctl.ts: request numbers and argument bytes of /dev/xen/gntdev and
// /dev/xen/gntalloc, against the layouts REFERENCE.md records from xen/sys/gntdev.h and
// gntalloc.h (test/conformance/sim-xen-abi.test.ts checks the same against the headers with gcc).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  GNTALLOC_FLAG_WRITABLE, IOCTL_GNTALLOC_ALLOC_GREF, IOCTL_GNTALLOC_DEALLOC_GREF, IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
  IOCTL_GNTDEV_MAP_GRANT_REF, IOCTL_GNTDEV_SET_UNMAP_NOTIFY, IOCTL_GNTDEV_UNMAP_GRANT_REF, decodeGrefIds, decodeIndex,
  encodeAllocGref, encodeDeallocGref, encodeMapGrantRef, encodeUnmapGrantRef, encodeUnmapNotify,
} from '../../gnttab/linux-ioctl.ts';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

test('request numbers are the ones REFERENCE.md lists', () => {
  assert.equal(IOCTL_GNTDEV_MAP_GRANT_REF, 0x00184700);
  assert.equal(IOCTL_GNTDEV_UNMAP_GRANT_REF, 0x00104701);
  assert.equal(IOCTL_GNTDEV_SET_UNMAP_NOTIFY, 0x00104707);
  assert.equal(IOCTL_GNTALLOC_ALLOC_GREF, 0x00184705);
  assert.equal(IOCTL_GNTALLOC_DEALLOC_GREF, 0x00104706);
  assert.equal(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, 0x00104707);
});

test('MAP_GRANT_REF: count u32@0, pad@4, index u64@8, refs[]@16 of {domid u32, ref u32}', () => {
  const b = encodeMapGrantRef(7, [0x11223344, 9, 0xffffffff]);
  assert.equal(b.length, 16 + 3 * 8);
  assert.equal(hex(b.subarray(0, 16)), '03000000' + '00000000' + '0000000000000000');
  assert.equal(hex(b.subarray(16)), '07000000' + '44332211' + '07000000' + '09000000' + '07000000' + 'ffffffff');
  // One ref still needs the struct's full 24 bytes (refs[1] is declared in the struct).
  assert.equal(encodeMapGrantRef(1, [5]).length, 24);
  // The kernel writes index at 8; decodeIndex reads it back.
  new DataView(b.buffer).setBigUint64(8, 0x123456789000n, true);
  assert.equal(decodeIndex(b), 0x123456789000);
});

test('UNMAP_GRANT_REF: index u64@0, count u32@8 (16 bytes)', () => {
  assert.equal(hex(encodeUnmapGrantRef(0x2000, 11)), '0020000000000000' + '0b000000' + '00000000');
});

test('SET_UNMAP_NOTIFY: index u64@0, action u32@8, port u32@12; actions CLEAR_BYTE 1, SEND_EVENT 2', () => {
  assert.equal(hex(encodeUnmapNotify(0x1005, 1 | 2, 42)), '0510000000000000' + '03000000' + '2a000000');
});

test('ALLOC_GREF: domid u16@0, flags u16@2 (1 = writable), count u32@4, index u64@8, gref_ids[]@16', () => {
  const b = encodeAllocGref(3, GNTALLOC_FLAG_WRITABLE, 4);
  assert.equal(b.length, 16 + 4 * 4);
  assert.equal(hex(b.subarray(0, 16)), '0300' + '0100' + '04000000' + '0000000000000000');
  const v = new DataView(b.buffer);
  [100, 101, 7, 0xfffffffe].forEach((g, i) => v.setUint32(16 + 4 * i, g, true));
  assert.deepEqual(decodeGrefIds(b, 4), [100, 101, 7, 0xfffffffe]);
  assert.equal(encodeAllocGref(0, 0, 1).length, 24);
});

test('DEALLOC_GREF: index u64@0, count u32@8', () => {
  assert.equal(hex(encodeDeallocGref(0x5000, 2)), '0050000000000000' + '02000000' + '00000000');
});
