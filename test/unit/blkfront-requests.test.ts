// Request splitting, segment geometry and the scatter list, checked as properties against a
// byte-by-byte model, plus the negotiation rules and XenStore value parsing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  ScatterList, chunkEnd, indirectPagesFor, maxSegmentsPerRequest, newSegmentGeometry, segmentAt, segmentsFor, usesIndirect,
} from '../../lib/blkfront/requests.ts';
import {
  negotiateIo, negotiateRings, parseUnsigned, readBackendDisk, readBackendIoFeatures, readBackendRingFeatures,
} from '../../lib/blkfront/features.ts';
import type { FrontendLimits } from '../../lib/blkfront/features.ts';
import { BlkfrontError } from '../../lib/blkfront/errors.ts';
import { BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER } from '../../protocol/blkif.ts';

test('segments tile a range exactly, each within one disk page, data contiguous', () => {
  fc.assert(fc.property(fc.integer({ min: 0, max: 1 << 20 }), fc.integer({ min: 1, max: 5000 }), (sector, count) => {
    const n = segmentsFor(sector, count);
    const g = newSegmentGeometry();
    let bytes = 0;
    for (let i = 0; i < n; i++) {
      segmentAt(sector, count, i, g);
      assert.ok(g.firstSect >= 0 && g.firstSect <= g.lastSect && g.lastSect <= 7, 'blkif.h 0 <= first <= last <= 7');
      assert.equal(g.byteOffset, bytes, 'segments follow each other in the data');
      // The segment's disk position: page (first page + i), sector firstSect within it.
      assert.equal((Math.floor(sector / 8) + i) * 8 + g.firstSect, sector + bytes / 512);
      if (i > 0) assert.equal(g.firstSect, 0, 'only the first segment may start mid-page');
      if (i < n - 1) assert.equal(g.lastSect, 7, 'only the last segment may end mid-page');
      bytes += g.byteLength;
    }
    assert.equal(bytes, count * 512);
  }));
});

test('chunkEnd never exceeds the segment limit and always progresses', () => {
  fc.assert(fc.property(fc.integer({ min: 0, max: 1 << 24 }), fc.integer({ min: 1, max: 100000 }), fc.constantFrom(11, 32, 512, 4096), (start, len, max) => {
    let s = start;
    const end = start + len;
    let requests = 0;
    while (s < end) {
      const e = chunkEnd(s, end, max);
      assert.ok(e > s, 'progress');
      assert.ok(segmentsFor(s, e - s) <= max, 'fits the segment limit');
      if (e < end) assert.equal(e % 8, 0, 'requests after the first start page-aligned');
      s = e;
      requests++;
    }
    assert.ok(requests <= Math.ceil((len + 7) / (max * 8)) + 1);
  }));
});

test('indirect only above 11 segments and only when offered', () => {
  assert.equal(usesIndirect(11, 32), false);
  assert.equal(usesIndirect(12, 32), true);
  assert.equal(usesIndirect(12, 0), false);
  assert.equal(maxSegmentsPerRequest(0), 11);
  assert.equal(maxSegmentsPerRequest(256), 256);
  assert.equal(indirectPagesFor(512), 1);
  assert.equal(indirectPagesFor(513), 2);
  assert.equal(indirectPagesFor(4096), 8);
});

test('ScatterList copies across buffer boundaries like one contiguous buffer', () => {
  fc.assert(fc.property(fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 1, maxLength: 8 }), fc.nat(), fc.nat(), (sizes, a, b) => {
    const bufs = sizes.map((n, i) => Buffer.alloc(n, i + 1));
    const flat = Buffer.concat(bufs);
    const list = new ScatterList(bufs);
    assert.equal(list.length, flat.length);
    if (flat.length === 0) return;
    const off = a % flat.length;
    const len = b % (flat.length - off + 1);
    const out = Buffer.alloc(len + 3);
    list.copyOut(off, out, 3, len);
    assert.deepEqual(out.subarray(3), flat.subarray(off, off + len));
    const src = Buffer.alloc(len, 0xee);
    list.copyIn(off, src, 0, len);
    flat.fill(0xee, off, off + len);
    assert.deepEqual(Buffer.concat(bufs), flat);
  }));
});

const ours: FrontendLimits = { maxRingPageOrder: 4, maxQueues: 4, maxIndirectSegments: 32, persistent: true, abi: 'x86_64' };

test('negotiation takes the smaller of both ends, as Linux blkfront', () => {
  assert.deepEqual(negotiateRings({ maxRingPageOrder: 2, maxQueues: 8 }, ours), { ringPageOrder: 2, queues: 4 });
  assert.deepEqual(negotiateRings({ maxRingPageOrder: 9, maxQueues: 0 }, ours), { ringPageOrder: 4, queues: 1 });
  const base = { barrier: false, flushCache: false, discard: false, discardGranularity: 0, discardAlignment: 0, discardSecure: false, persistent: false, maxIndirectSegments: 0 };
  assert.equal(negotiateIo({ ...base, barrier: true, flushCache: true }, ours).flushOp, BLKIF_OP_FLUSH_DISKCACHE);
  assert.equal(negotiateIo({ ...base, barrier: true }, ours).flushOp, BLKIF_OP_WRITE_BARRIER);
  assert.equal(negotiateIo(base, ours).flushOp, null);
  assert.equal(negotiateIo({ ...base, maxIndirectSegments: 256 }, ours).maxIndirectSegments, 32);
  assert.equal(negotiateIo({ ...base, maxIndirectSegments: 11 }, ours).maxIndirectSegments, 0);
  assert.equal(negotiateIo({ ...base, maxIndirectSegments: 10000 }, { ...ours, maxIndirectSegments: 100000 }).maxIndirectSegments, 4096);
  assert.equal(negotiateIo({ ...base, persistent: true }, { ...ours, persistent: false }).persistent, false);
  assert.equal(negotiateIo({ ...base, discardSecure: true }, ours).discardSecure, false, 'discard-secure needs feature-discard');
});

function reader(keys: Record<string, string>) {
  return async (k: string): Promise<string | undefined> => keys[k];
}

test('garbage from the backend is an EPROTO error naming the key and the value', async () => {
  const bp = '/b';
  const isProto = (key: string, value?: string) => (e: unknown) => {
    assert.ok(e instanceof BlkfrontError);
    assert.equal(e.code, 'EPROTO');
    assert.equal(e.field, key);
    if (value !== undefined) assert.equal(e.value, value);
    return true;
  };
  await assert.rejects(readBackendRingFeatures(reader({ '/b/max-ring-page-order': 'four' }), bp), isProto('/b/max-ring-page-order', 'four'));
  await assert.rejects(readBackendRingFeatures(reader({ '/b/multi-queue-max-queues': '-1' }), bp), isProto('/b/multi-queue-max-queues', '-1'));
  const disk = { '/b/sectors': '2048', '/b/info': '0', '/b/sector-size': '512' };
  assert.deepEqual(await readBackendDisk(reader(disk), bp), { sectors: 2048, info: 0, sectorSize: 512, physicalSectorSize: 512 });
  await assert.rejects(readBackendDisk(reader({ ...disk, '/b/sectors': '12x' }), bp), isProto('/b/sectors', '12x'));
  await assert.rejects(readBackendDisk(reader({ ...disk, '/b/sector-size': '1000' }), bp), isProto('/b/sector-size'));
  await assert.rejects(readBackendDisk(reader({ ...disk, '/b/physical-sector-size': '256' }), bp), isProto('/b/physical-sector-size'));
  await assert.rejects(readBackendDisk(reader({ '/b/info': '0', '/b/sector-size': '512' }), bp), isProto('/b/sectors'));
  await assert.rejects(readBackendDisk(reader({ ...disk, '/b/sectors': '99999999999999999' }), bp), isProto('/b/sectors'));
  // `sectors` counts 512-byte units (Linux): 4096-byte sectors make 8 times fewer.
  assert.equal((await readBackendDisk(reader({ ...disk, '/b/sector-size': '4096' }), bp)).sectors, 256);
  await assert.rejects(readBackendIoFeatures(reader({ '/b/feature-discard': 'yes' }), bp), isProto('/b/feature-discard', 'yes'));
  assert.equal(parseUnsigned('/k', ' 42 '), 42);
  assert.throws(() => parseUnsigned('/k', '0x10'), isProto('/k', '0x10'));
  assert.throws(() => parseUnsigned('/k', ''), isProto('/k', ''));
});
