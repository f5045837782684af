import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  BLKIF_DISCARD_SECURE,
  BLKIF_MAX_INDIRECT_SEGMENTS,
  BLKIF_MAX_SEGMENTS_PER_REQUEST,
  BLKIF_OP_DISCARD,
  BLKIF_OP_FLUSH_DISKCACHE,
  BLKIF_OP_INDIRECT,
  BLKIF_OP_READ,
  BLKIF_OP_RESERVED_1,
  BLKIF_OP_WRITE,
  BLKIF_OP_WRITE_BARRIER,
  BLKIF_RSP_EOPNOTSUPP,
  BLKIF_RSP_ERROR,
  BLKIF_RSP_OKAY,
  BlkifError,
  blkifErrorStatus,
  blkifLayout,
  decodeIndirectSegments,
  decodeRequest,
  decodeResponse,
  encodeIndirectSegments,
  encodeRequest,
  encodeResponse,
  indirectPages,
  newBlkifRequest,
  newBlkifResponse,
  requestSize,
  responseSize,
  type BlkifAbi,
  type BlkifRequest,
} from '../../protocol/blkif.ts';

const ABIS: BlkifAbi[] = ['x86_64', 'x86_32'];
const MAX = BLKIF_MAX_INDIRECT_SEGMENTS;

interface Spec {
  op: number;
  dataOp?: number;
  id?: [number, number];
  handle?: number;
  sector?: number;
  nrSectors?: number;
  flag?: number;
  grefs?: number[];
  segs?: [number, number, number][];
}

function makeRequest(s: Spec): BlkifRequest {
  const r = newBlkifRequest();
  r.operation = s.op;
  r.dataOp = s.dataOp ?? s.op;
  [r.idLo, r.idHi] = s.id ?? [0x89abcdef, 0x01234567];
  r.handle = s.handle ?? 0x1234;
  r.sectorNumber = s.sector ?? 0;
  r.nrSectors = s.nrSectors ?? 0;
  r.discardFlag = s.flag ?? 0;
  const segs = s.segs ?? [];
  r.nrSegments = segs.length;
  segs.forEach(([g, f, l], i) => {
    r.segGref[i] = g;
    r.segFirst[i] = f;
    r.segLast[i] = l;
  });
  if (s.op === BLKIF_OP_INDIRECT) {
    r.nrIndirectPages = indirectPages(segs.length);
    (s.grefs ?? []).forEach((g, i) => (r.indirectGrefs[i] = g));
  }
  return r;
}

function segments(n: number, seed = 1): [number, number, number][] {
  return Array.from({ length: n }, (_, i) => {
    const first = (i * 3 + seed) % 8;
    return [(0x10000 + i * 7919 + seed) >>> 0, first, first + ((i + seed) % (8 - first))];
  });
}

function sameRequest(got: BlkifRequest, want: BlkifRequest, what = ''): void {
  for (const k of ['operation', 'dataOp', 'nrSegments', 'handle', 'idLo', 'idHi', 'sectorNumber', 'nrSectors', 'discardFlag', 'nrIndirectPages'] as const) {
    assert.equal(got[k], want[k], `${what} ${k}`);
  }
  const n = want.operation === BLKIF_OP_DISCARD ? 0 : want.nrSegments;
  assert.deepEqual(got.segGref.subarray(0, n), want.segGref.subarray(0, n), `${what} gref`);
  assert.deepEqual(got.segFirst.subarray(0, n), want.segFirst.subarray(0, n), `${what} first_sect`);
  assert.deepEqual(got.segLast.subarray(0, n), want.segLast.subarray(0, n), `${what} last_sect`);
  assert.deepEqual(got.indirectGrefs.subarray(0, want.nrIndirectPages), want.indirectGrefs.subarray(0, want.nrIndirectPages), `${what} indirect_grefs`);
}

/** Encodes `req` (and its indirect pages), decodes it back, and is the decoded request. */
function roundTrip(abi: BlkifAbi, req: BlkifRequest, max = MAX): BlkifRequest {
  const slot = new Uint8Array(requestSize(abi)).fill(0xee);
  encodeRequest(abi, slot, 0, req);
  const out = newBlkifRequest();
  const err = decodeRequest(abi, slot, 0, out, max);
  assert.equal(err, undefined, err?.message);
  if (req.operation === BLKIF_OP_INDIRECT) {
    const pages = new Uint8Array(out.nrIndirectPages * 4096).fill(0xee);
    encodeIndirectSegments(pages, req);
    assert.equal(decodeIndirectSegments(pages, out), undefined);
  }
  return out;
}

test('every op round-trips on both ABIs', () => {
  const cases: Spec[] = [
    { op: BLKIF_OP_READ, sector: 2 ** 40 + 7, segs: segments(1) },
    { op: BLKIF_OP_READ, sector: 0, segs: segments(BLKIF_MAX_SEGMENTS_PER_REQUEST) },
    { op: BLKIF_OP_WRITE, sector: 2 ** 53 - 1, segs: segments(5, 3) },
    { op: BLKIF_OP_WRITE_BARRIER, sector: 99, segs: segments(2) },
    { op: BLKIF_OP_WRITE_BARRIER, sector: 0, segs: [] },
    { op: BLKIF_OP_FLUSH_DISKCACHE, sector: 0, segs: [] },
    { op: BLKIF_OP_FLUSH_DISKCACHE, sector: 12, segs: segments(11, 2) },
    { op: BLKIF_OP_DISCARD, sector: 4096, nrSectors: 2 ** 33, flag: 0 },
    { op: BLKIF_OP_DISCARD, sector: 1, nrSectors: 8, flag: BLKIF_DISCARD_SECURE },
    { op: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_READ, sector: 1 << 20, segs: segments(1), grefs: [77] },
    { op: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_WRITE, sector: 3, segs: segments(512), grefs: [1] },
    { op: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_WRITE, sector: 3, segs: segments(513), grefs: [1, 2] },
    { op: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_READ, sector: 5, segs: segments(MAX, 5), grefs: [8, 7, 6, 5, 4, 3, 2, 1] },
  ];
  for (const abi of ABIS) {
    for (const c of cases) {
      const req = makeRequest(c);
      sameRequest(roundTrip(abi, req), req, `${abi} op ${c.op}/${c.segs?.length}`);
    }
  }
});

test('encoding zeroes padding and unused segments, and writes only its own entry', () => {
  for (const abi of ABIS) {
    const L = blkifLayout(abi);
    const size = requestSize(abi);
    // A READ with one segment: every byte not belonging to a field must be zero.
    const buf = new Uint8Array(size + 16).fill(0xff);
    encodeRequest(abi, buf, 8, makeRequest({ op: BLKIF_OP_READ, id: [0xffffffff, 0xffffffff], handle: 0xffff, sector: 2 ** 53 - 1, segs: [[0xffffffff, 7, 7]] }));
    assert.ok(buf.subarray(0, 8).every((b) => b === 0xff) && buf.subarray(8 + size).every((b) => b === 0xff), 'outside the entry untouched');
    const entry = buf.subarray(8, 8 + size);
    const fieldBytes = new Set<number>();
    const mark = (off: number, len: number): void => {
      for (let i = 0; i < len; i++) fieldBytes.add(off + i);
    };
    mark(L['blkif_request.operation']!, 1);
    mark(L['blkif_request.nr_segments']!, 1);
    mark(L['blkif_request.handle']!, 2);
    mark(L['blkif_request.id']!, 8);
    mark(L['blkif_request.sector_number']!, 8);
    mark(L['blkif_request.seg']!, 6); // gref, first_sect, last_sect of seg[0]
    entry.forEach((b, i) => {
      if (!fieldBytes.has(i)) assert.equal(b, 0, `${abi}: byte ${i} of the entry is padding or an unused segment`);
    });

    // Responses: XSA-216, the padding of struct blkif_response.
    const rsz = responseSize(abi);
    const rbuf = new Uint8Array(rsz + 8).fill(0xff);
    encodeResponse(abi, rbuf, 4, { idLo: 1, idHi: 2, operation: 3, status: BLKIF_RSP_OKAY });
    assert.deepEqual([...rbuf.subarray(4, 4 + rsz)], [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, ...new Array(rsz - 12).fill(0)]);
    assert.ok(rbuf.subarray(0, 4).every((b) => b === 0xff) && rbuf.subarray(4 + rsz).every((b) => b === 0xff));

    // Indirect pages: descriptor padding and the rest of the last page are zeroed.
    const pages = new Uint8Array(2 * 4096).fill(0xff);
    encodeIndirectSegments(pages, makeRequest({ op: BLKIF_OP_INDIRECT, segs: segments(3) }));
    for (let i = 0; i < 3; i++) assert.deepEqual([...pages.subarray(i * 8 + 6, i * 8 + 8)], [0, 0]);
    assert.ok(pages.subarray(24, 4096).every((b) => b === 0), 'rest of the last page zeroed');
    assert.ok(pages.subarray(4096).every((b) => b === 0xff), 'pages beyond the last one untouched');
  }
});

test('responses round-trip with every status', () => {
  for (const abi of ABIS) {
    for (const status of [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP, 0x7fff, -0x8000]) {
      const buf = new Uint8Array(responseSize(abi));
      const want = { idLo: 0xdeadbeef, idHi: 0xfeedface, operation: BLKIF_OP_INDIRECT, status };
      encodeResponse(abi, buf, 0, want);
      const got = newBlkifResponse();
      decodeResponse(abi, buf, 0, got);
      assert.deepEqual(got, want);
    }
  }
});

/** Encodes a valid request, lets `mutate` break the bytes, and is the decode error. */
function rejection(abi: BlkifAbi, spec: Spec, mutate: (entry: Uint8Array, L: Readonly<Record<string, number>>) => void, max = MAX, pagesMutate?: (pages: Uint8Array) => void): BlkifError {
  const req = makeRequest(spec);
  const entry = new Uint8Array(requestSize(abi));
  encodeRequest(abi, entry, 0, req);
  mutate(entry, blkifLayout(abi));
  const out = newBlkifRequest();
  let err = decodeRequest(abi, entry, 0, out, max);
  if (!err && out.operation === BLKIF_OP_INDIRECT) {
    const pages = new Uint8Array(out.nrIndirectPages * 4096);
    encodeIndirectSegments(pages, req);
    pagesMutate?.(pages);
    err = decodeIndirectSegments(pages, out);
  }
  assert.ok(err instanceof BlkifError, 'the request is rejected');
  // Whatever was wrong, the id and operation are there to answer with.
  assert.equal(out.idLo, req.idLo);
  assert.equal(out.idHi, req.idHi);
  assert.equal(out.operation, entry[0]);
  return err;
}

test('every validation error names its field, and tells which status to answer', () => {
  for (const abi of ABIS) {
    const rw = { op: BLKIF_OP_READ, segs: segments(3) };
    const cases: [string, BlkifError, number][] = [];
    const add = (field: string, e: BlkifError, value: number): void => void cases.push([field, e, value]);

    add('operation', rejection(abi, rw, (e) => (e[0] = BLKIF_OP_RESERVED_1)), BLKIF_OP_RESERVED_1);
    add('operation', rejection(abi, rw, (e) => (e[0] = 7)), 7);
    add('operation', rejection(abi, rw, (e) => (e[0] = 255)), 255);
    add('nr_segments', rejection(abi, rw, (e) => (e[1] = 0)), 0);
    add('nr_segments', rejection(abi, { op: BLKIF_OP_WRITE, segs: segments(1) }, (e) => (e[1] = 0)), 0);
    add('nr_segments', rejection(abi, rw, (e) => (e[1] = 12)), 12);
    add('nr_segments', rejection(abi, { op: BLKIF_OP_FLUSH_DISKCACHE, segs: [] }, (e) => (e[1] = 12)), 12);
    add('nr_segments', rejection(abi, { op: BLKIF_OP_WRITE_BARRIER, segs: [] }, (e) => (e[1] = 255)), 255);
    add('seg[2].last_sect', rejection(abi, rw, (e, L) => (e[L['blkif_request.seg']! + 2 * 8 + 5] = 8)), 8);
    add('seg[0].first_sect', rejection(abi, rw, (e, L) => {
      e[L['blkif_request.seg']! + 4] = 6;
      e[L['blkif_request.seg']! + 5] = 5;
    }), 6);
    add('seg[1].last_sect', rejection(abi, rw, (e, L) => {
      e[L['blkif_request.seg']! + 8 + 4] = 200; // both broken: last_sect is checked first
      e[L['blkif_request.seg']! + 8 + 5] = 9;
    }), 9);

    const ind = { op: BLKIF_OP_INDIRECT, dataOp: BLKIF_OP_WRITE, segs: segments(600), grefs: [1, 2] };
    for (const bad of [BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT, 99]) {
      add('indirect_op', rejection(abi, ind, (e) => (e[1] = bad)), bad);
    }
    add('nr_segments', rejection(abi, ind, (e) => ((e[2] = 0), (e[3] = 0))), 0);
    add('nr_segments', rejection(abi, ind, () => {}, 599), 600);
    add('nr_segments', rejection(abi, ind, (e) => ((e[2] = 4097 & 0xff), (e[3] = 4097 >> 8)), 65535), 4097); // capped at 8 pages
    add('nr_segments', rejection(abi, ind, (e) => ((e[2] = 0xff), (e[3] = 0xff)), 4096), 65535);
    add('seg[513].last_sect', rejection(abi, ind, () => {}, MAX, (p) => (p[513 * 8 + 5] = 8)), 8);
    add('seg[599].first_sect', rejection(abi, ind, () => {}, MAX, (p) => ((p[599 * 8 + 4] = 7), (p[599 * 8 + 5] = 0))), 7);

    for (const [field, e, value] of cases) {
      assert.equal(e.field, field, `${abi}: ${e.message}`);
      assert.equal(e.value, value, `${abi}: ${e.message}`);
      assert.equal(e.name, 'BlkifError');
      assert.ok(e.message.includes(field.replace(/^seg\[\d+\]\./, '')), `message names ${field}: ${e.message}`);
      assert.equal(blkifErrorStatus(e), field === 'operation' ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR);
    }
  }
});

test('DISCARD ignores flag bits other than BLKIF_DISCARD_SECURE, as Linux xen-blkback does', () => {
  for (const abi of ABIS) {
    const entry = new Uint8Array(requestSize(abi));
    encodeRequest(abi, entry, 0, makeRequest({ op: BLKIF_OP_DISCARD, sector: 8, nrSectors: 8 }));
    const out = newBlkifRequest();
    for (const [flag, want] of [[0xfe, 0], [0xff, BLKIF_DISCARD_SECURE], [0x81, BLKIF_DISCARD_SECURE]] as const) {
      entry[1] = flag;
      assert.equal(decodeRequest(abi, entry, 0, out, MAX), undefined);
      assert.equal(out.discardFlag, want);
      assert.equal(out.nrSegments, 0);
    }
  }
});

test('sector numbers above 2^53 decode to a double that still compares >= 2^53', () => {
  for (const abi of ABIS) {
    const entry = new Uint8Array(requestSize(abi));
    encodeRequest(abi, entry, 0, makeRequest({ op: BLKIF_OP_READ, segs: segments(1) }));
    const off = blkifLayout(abi)['blkif_request.sector_number']!;
    const out = newBlkifRequest();
    for (const hi of [0x00200000, 0x00200001, 0x7fffffff, 0xffffffff]) {
      for (const lo of [0, 1, 0xffffffff]) {
        new DataView(entry.buffer).setUint32(off, lo, true);
        new DataView(entry.buffer).setUint32(off + 4, hi, true);
        assert.equal(decodeRequest(abi, entry, 0, out, MAX), undefined);
        assert.ok(out.sectorNumber >= 2 ** 53);
      }
    }
  }
});

test('encoding refuses values that do not fit their field, and buffers too small', () => {
  const abi = 'x86_64';
  const slot = new Uint8Array(requestSize(abi));
  const bad: [Spec, string][] = [
    [{ op: 256 }, 'operation'],
    [{ op: BLKIF_OP_READ, handle: 0x10000, segs: segments(1) }, 'handle'],
    [{ op: BLKIF_OP_READ, sector: -1, segs: segments(1) }, 'sector_number'],
    [{ op: BLKIF_OP_READ, sector: 2 ** 64, segs: segments(1) }, 'sector_number'],
    [{ op: BLKIF_OP_READ, sector: 1.5, segs: segments(1) }, 'sector_number'],
    [{ op: BLKIF_OP_DISCARD, nrSectors: NaN }, 'nr_sectors'],
    [{ op: BLKIF_OP_READ, id: [2 ** 32, 0], segs: segments(1) }, 'id'],
  ];
  for (const [spec, field] of bad) {
    assert.throws(() => encodeRequest(abi, slot, 0, makeRequest(spec)), (e: unknown) => e instanceof BlkifError && e.field === field, field);
  }
  const many = makeRequest({ op: BLKIF_OP_READ, segs: segments(11) });
  many.nrSegments = 256;
  assert.throws(() => encodeRequest(abi, slot, 0, many), (e: unknown) => e instanceof BlkifError && e.field === 'nr_segments');
  assert.throws(() => encodeRequest(abi, new Uint8Array(111), 0, many), RangeError);
  assert.throws(() => encodeRequest('x86_32', new Uint8Array(200), 93, many), RangeError);
  assert.throws(() => decodeRequest(abi, new Uint8Array(112), 1, newBlkifRequest(), MAX), RangeError);
  assert.throws(() => encodeResponse(abi, new Uint8Array(16), 0, { idLo: 0, idHi: 0, operation: 0, status: 0x8000 }), BlkifError);
  assert.throws(() => encodeResponse(abi, new Uint8Array(15), 0, { idLo: 0, idHi: 0, operation: 0, status: 0 }), RangeError);
  const ind = makeRequest({ op: BLKIF_OP_INDIRECT, segs: segments(513) });
  assert.throws(() => encodeIndirectSegments(new Uint8Array(4096), ind), RangeError);
  const out = newBlkifRequest();
  out.nrSegments = 513;
  assert.throws(() => decodeIndirectSegments(new Uint8Array(4096), out), RangeError);
});

test('a direct request with more than 11 segments encodes its count but only 11 segments', () => {
  for (const abi of ABIS) {
    const req = makeRequest({ op: BLKIF_OP_WRITE, segs: segments(11) });
    req.nrSegments = 12;
    const buf = new Uint8Array(requestSize(abi) * 2).fill(0xab);
    encodeRequest(abi, buf, 0, req);
    assert.ok(buf.subarray(requestSize(abi)).every((b) => b === 0xab), 'the next entry is untouched');
    const err = decodeRequest(abi, buf, 0, newBlkifRequest(), MAX);
    assert.equal(err?.field, 'nr_segments');
  }
});

// ---- property tests ---------------------------------------------------------------------------

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const sector = fc.oneof(fc.integer({ min: 0, max: 2 ** 32 }), fc.maxSafeInteger().map((n) => Math.abs(n)));
const segment = fc.integer({ min: 0, max: 7 }).chain((first) => fc.tuple(u32, fc.constant(first), fc.integer({ min: first, max: 7 })));

const validSpec: fc.Arbitrary<Spec> = fc.oneof(
  fc.record({ op: fc.constantFrom(BLKIF_OP_READ, BLKIF_OP_WRITE), id: fc.tuple(u32, u32), handle: fc.integer({ min: 0, max: 0xffff }), sector, segs: fc.array(segment, { minLength: 1, maxLength: 11 }) }),
  fc.record({ op: fc.constantFrom(BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE), id: fc.tuple(u32, u32), handle: fc.integer({ min: 0, max: 0xffff }), sector, segs: fc.array(segment, { maxLength: 11 }) }),
  fc.record({ op: fc.constant(BLKIF_OP_DISCARD), id: fc.tuple(u32, u32), handle: fc.integer({ min: 0, max: 0xffff }), sector, nrSectors: sector, flag: fc.constantFrom(0, BLKIF_DISCARD_SECURE) }),
  fc.record({
    op: fc.constant(BLKIF_OP_INDIRECT),
    dataOp: fc.constantFrom(BLKIF_OP_READ, BLKIF_OP_WRITE),
    id: fc.tuple(u32, u32),
    handle: fc.integer({ min: 0, max: 0xffff }),
    sector,
    segs: fc.array(segment, { minLength: 1, maxLength: 1200 }),
    grefs: fc.array(u32, { minLength: 3, maxLength: 3 }),
  }),
);

test('property: every valid request round-trips on both ABIs', () => {
  fc.assert(
    fc.property(validSpec, fc.constantFrom(...ABIS), (spec, abi) => {
      const req = makeRequest(spec);
      sameRequest(roundTrip(abi, req), req);
    }),
    { numRuns: 400 },
  );
});

test('property: arbitrary entry bytes never throw; what is accepted re-encodes to the same request', () => {
  fc.assert(
    fc.property(fc.constantFrom(...ABIS), fc.uint8Array({ minLength: 112, maxLength: 112 }), fc.integer({ min: 0, max: 6 }), fc.integer({ min: 0, max: 5000 }), (abi, raw, op, max) => {
      raw[0] = op; // mostly known operations, so validation paths are reached
      const out = newBlkifRequest();
      const err = decodeRequest(abi, raw, 0, out, max);
      if (err) {
        assert.ok(err instanceof BlkifError && typeof err.field === 'string');
        return;
      }
      const again = roundTrip(abi, out, max);
      // sector numbers beyond 2^53 are rounded on decode; everything else must be exact.
      if (out.sectorNumber < 2 ** 53 && out.nrSectors < 2 ** 53) sameRequest(again, out);
    }),
    { numRuns: 2000 },
  );
});

test('property (XSA-155): each byte of shared memory is read at most once, and a peer rewriting it meanwhile cannot get an invalid request accepted', () => {
  fc.assert(
    fc.property(validSpec, fc.constantFrom(...ABIS), fc.uint8Array({ minLength: 112, maxLength: 112 }), (spec, abi, noise) => {
      const entry = new Uint8Array(requestSize(abi));
      encodeRequest(abi, entry, 0, makeRequest(spec));
      // The frontend rewrites every byte right after the backend reads it.
      const reads = new Map<number, number>();
      const shared = new Proxy(entry, {
        get(target, key) {
          if (typeof key === 'string' && /^\d+$/.test(key)) {
            const i = Number(key);
            reads.set(i, (reads.get(i) ?? 0) + 1);
            const v = target[i]!;
            target[i] = noise[i % noise.length]!;
            return v;
          }
          return Reflect.get(target, key, target);
        },
      });
      const out = newBlkifRequest();
      const err = decodeRequest(abi, shared, 0, out, MAX);
      for (const [i, n] of reads) assert.equal(n, 1, `byte ${i} read ${n} times`);
      assert.equal(err, undefined, 'the bytes read were a valid request');
      // What was accepted is valid in itself: re-validating the private copy agrees.
      const again = roundTrip(abi, out);
      sameRequest(again, out);
    }),
    { numRuns: 500 },
  );
});

test('property: responses round-trip on both ABIs', () => {
  fc.assert(
    fc.property(fc.constantFrom(...ABIS), u32, u32, fc.integer({ min: 0, max: 255 }), fc.integer({ min: -0x8000, max: 0x7fff }), (abi, idLo, idHi, operation, status) => {
      const buf = new Uint8Array(responseSize(abi) + 3).fill(0x55);
      encodeResponse(abi, buf, 3, { idLo, idHi, operation, status });
      const got = newBlkifResponse();
      decodeResponse(abi, buf, 3, got);
      assert.deepEqual(got, { idLo, idHi, operation, status });
    }),
  );
});
