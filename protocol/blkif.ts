// xen/include/public/io/blkif.h: the block request/response wire format, for both the x86_64
// and the x86_32 ABI (Linux xen-blkback common.h: struct blkif_x86_32_request is packed with
// 4-byte alignment of u64 fields). Pure: bytes in, values out.
//
// Hot path: one BlkifRequest / BlkifResponse object is allocated per ring slot up front and
// reused; decoding fills it in place. u64 fields that are opaque (id) are kept as two u32
// halves so no BigInt is created per request. sector_number is kept as a double: exact below
// 2^53, and any larger value still compares greater than every real disk size, so range checks
// stay correct.

// blkif.h operations
export const BLKIF_OP_READ = 0;
export const BLKIF_OP_WRITE = 1;
export const BLKIF_OP_WRITE_BARRIER = 2;
export const BLKIF_OP_FLUSH_DISKCACHE = 3;
export const BLKIF_OP_RESERVED_1 = 4;
export const BLKIF_OP_DISCARD = 5;
export const BLKIF_OP_INDIRECT = 6;

// blkif.h response status
export const BLKIF_RSP_EOPNOTSUPP = -2;
export const BLKIF_RSP_ERROR = -1;
export const BLKIF_RSP_OKAY = 0;

/** blkif.h BLKIF_MAX_SEGMENTS_PER_REQUEST: segments carried directly in a request. */
export const BLKIF_MAX_SEGMENTS_PER_REQUEST = 11;
/** blkif.h BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST. */
export const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8;
/** Segments per indirect page: 4096 / sizeof(struct blkif_request_segment) = 4096 / 8. */
export const BLKIF_SEGS_PER_INDIRECT_FRAME = 512;
/** The most segments one indirect request can carry (8 pages x 512). */
export const BLKIF_MAX_INDIRECT_SEGMENTS = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME;
/** blkif.h: sector numbers and first/last_sect are in 512-byte units whatever the sector-size. */
export const BLKIF_SECTOR_SIZE = 512;
/** Sectors in one 4 KiB page: last_sect <= 7. */
export const BLKIF_SECTORS_PER_PAGE = 8;
/** blkif.h BLKIF_DISCARD_SECURE: flag in blkif_request_discard.flag. */
export const BLKIF_DISCARD_SECURE = 1;

// blkif.h `info` bits
export const VDISK_CDROM = 1;
export const VDISK_REMOVABLE = 2;
export const VDISK_READONLY = 4;

/** Which layout the frontend uses; `protocol` key values `x86_64-abi` / `x86_32-abi`. */
export type BlkifAbi = 'x86_64' | 'x86_32';

/** The blkif request entry size, which fixes the ring geometry: 112 bytes (x86_64) / 108 (x86_32). */
export function requestSize(abi: BlkifAbi): number {
  return abi === 'x86_64' ? 112 : 108;
}

/**
 * The ring's entry size: a union of request and response, so the larger of the two.
 * x86_64: 112; x86_32: 108 — both give 32 entries per page.
 */
export function ringEntrySize(abi: BlkifAbi): number {
  return requestSize(abi);
}

/** A decoded (or to-be-encoded) request. Allocate one per ring slot with `newBlkifRequest()` and reuse it. */
export interface BlkifRequest {
  /** Wire operation: READ, WRITE, WRITE_BARRIER, FLUSH_DISKCACHE, DISCARD or INDIRECT. */
  operation: number;
  /** The data operation: equals `operation`, except for INDIRECT where it is indirect_op (READ or WRITE). */
  dataOp: number;
  /** Segments (direct: 0..11; indirect: 1..max, resolved from the indirect pages). */
  nrSegments: number;
  handle: number;
  /** The opaque u64 id, low and high 32 bits: echoed unchanged in the response. */
  idLo: number;
  idHi: number;
  /** First 512-byte sector; for DISCARD the first sector discarded. */
  sectorNumber: number;
  /** DISCARD: number of 512-byte sectors. */
  nrSectors: number;
  /** DISCARD: BLKIF_DISCARD_SECURE or 0. */
  discardFlag: number;
  /** INDIRECT: number of indirect pages, ceil(nrSegments / 512). */
  nrIndirectPages: number;
  /** INDIRECT: grant refs of the indirect pages (first nrIndirectPages valid). */
  readonly indirectGrefs: Uint32Array;
  /** Segment grant refs, first/last sectors (first nrSegments valid); capacity BLKIF_MAX_INDIRECT_SEGMENTS. */
  readonly segGref: Uint32Array;
  readonly segFirst: Uint8Array;
  readonly segLast: Uint8Array;
}

/** A decoded (or to-be-encoded) response. */
export interface BlkifResponse {
  idLo: number;
  idHi: number;
  operation: number;
  status: number;
}

/** `newBlkifRequest()` is a zeroed request with room for the largest indirect request. */
export function newBlkifRequest(): BlkifRequest {
  return {
    operation: 0,
    dataOp: 0,
    nrSegments: 0,
    handle: 0,
    idLo: 0,
    idHi: 0,
    sectorNumber: 0,
    nrSectors: 0,
    discardFlag: 0,
    nrIndirectPages: 0,
    indirectGrefs: new Uint32Array(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST),
    segGref: new Uint32Array(BLKIF_MAX_INDIRECT_SEGMENTS),
    segFirst: new Uint8Array(BLKIF_MAX_INDIRECT_SEGMENTS),
    segLast: new Uint8Array(BLKIF_MAX_INDIRECT_SEGMENTS),
  };
}

/** `newBlkifResponse()` is a zeroed response. */
export function newBlkifResponse(): BlkifResponse {
  return { idLo: 0, idHi: 0, operation: 0, status: 0 };
}

/** A request or response that breaks blkif.h's rules; `field` names the offending field. */
export class BlkifError extends Error {
  override readonly name = 'BlkifError';
  constructor(message: string, readonly field: string, readonly value: number | string) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------
// Codecs (implemented below this line).

// Byte offsets of one ABI's structs. x86_64 is blkif.h as compiled for x86_64 (u64 aligned to
// 8); x86_32 is the same declarations with u64 aligned to 4, as an i386 compiler lays them out
// (Linux xen-blkback common.h mirrors it with packed structs). Within one ABI `id` sits at the
// same offset in every request variant, so an unknown operation can still be answered.
interface Layout {
  /** sizeof(struct blkif_request): also the ring entry size. */
  readonly reqSize: number;
  /** offsetof(..., id) in every request variant. */
  readonly id: number;
  /** struct blkif_request: sector_number, seg[]. */
  readonly rwSector: number;
  readonly rwSeg: number;
  /** struct blkif_request_discard: sizeof, sector_number, nr_sectors. */
  readonly discardSize: number;
  readonly discardSector: number;
  readonly discardNrSectors: number;
  /** struct blkif_request_indirect: sizeof, sector_number, handle, indirect_grefs[]. */
  readonly indirectSize: number;
  readonly indirectSector: number;
  readonly indirectHandle: number;
  readonly indirectGrefs: number;
  /** sizeof(struct blkif_response). */
  readonly rspSize: number;
}

const L64: Layout = {
  reqSize: 112, id: 8, rwSector: 16, rwSeg: 24,
  discardSize: 32, discardSector: 16, discardNrSectors: 24,
  indirectSize: 64, indirectSector: 16, indirectHandle: 24, indirectGrefs: 28,
  rspSize: 16,
};
const L32: Layout = {
  reqSize: 108, id: 4, rwSector: 12, rwSeg: 20,
  discardSize: 28, discardSector: 12, discardNrSectors: 20,
  indirectSize: 64, indirectSector: 12, indirectHandle: 20, indirectGrefs: 24,
  rspSize: 12,
};

// Offsets common to both ABIs (blkif.h): the leading u8/u8/u16 of every request, the segment
// and the response tail.
const OFF_OPERATION = 0;
const OFF_NR_SEGMENTS = 1; // rw: u8 nr_segments; discard: u8 flag; indirect: u8 indirect_op
const OFF_HANDLE = 2; // rw and discard: u16 handle; indirect: u16 nr_segments
const SEG_SIZE = 8; // struct blkif_request_segment: gref@0 u32, first_sect@4, last_sect@5, pad@6..7
const SEG_FIRST = 4;
const SEG_LAST = 5;
const RSP_ID = 0;
const RSP_OPERATION = 8;
const RSP_STATUS = 10;
const PAGE_SIZE = 4096;
const TWO_32 = 4294967296;
const TWO_64 = 18446744073709551616;

function layout(abi: BlkifAbi): Layout {
  return abi === 'x86_64' ? L64 : L32;
}

/** `responseSize(abi)` is sizeof(struct blkif_response): 16 bytes (x86_64) / 12 (x86_32). */
export function responseSize(abi: BlkifAbi): number {
  return layout(abi).rspSize;
}

/** `indirectPages(nrSegments)` is how many indirect pages carry `nrSegments` segments, 512 per page (Linux INDIRECT_PAGES). */
export function indirectPages(nrSegments: number): number {
  return Math.ceil(nrSegments / BLKIF_SEGS_PER_INDIRECT_FRAME);
}

/**
 * `blkifLayout(abi)` is every size and offset the codecs use, keyed by blkif.h's names
 * (`struct.field`, `struct.sizeof`), so tests can hold it against what a C compiler reports.
 */
export function blkifLayout(abi: BlkifAbi): Readonly<Record<string, number>> {
  const L = layout(abi);
  return {
    'blkif_request.sizeof': L.reqSize,
    'blkif_request.operation': OFF_OPERATION,
    'blkif_request.nr_segments': OFF_NR_SEGMENTS,
    'blkif_request.handle': OFF_HANDLE,
    'blkif_request.id': L.id,
    'blkif_request.sector_number': L.rwSector,
    'blkif_request.seg': L.rwSeg,
    'blkif_request_segment.sizeof': SEG_SIZE,
    'blkif_request_segment.gref': 0,
    'blkif_request_segment.first_sect': SEG_FIRST,
    'blkif_request_segment.last_sect': SEG_LAST,
    'blkif_request_discard.sizeof': L.discardSize,
    'blkif_request_discard.operation': OFF_OPERATION,
    'blkif_request_discard.flag': OFF_NR_SEGMENTS,
    'blkif_request_discard.handle': OFF_HANDLE,
    'blkif_request_discard.id': L.id,
    'blkif_request_discard.sector_number': L.discardSector,
    'blkif_request_discard.nr_sectors': L.discardNrSectors,
    'blkif_request_indirect.sizeof': L.indirectSize,
    'blkif_request_indirect.operation': OFF_OPERATION,
    'blkif_request_indirect.indirect_op': OFF_NR_SEGMENTS,
    'blkif_request_indirect.nr_segments': OFF_HANDLE,
    'blkif_request_indirect.id': L.id,
    'blkif_request_indirect.sector_number': L.indirectSector,
    'blkif_request_indirect.handle': L.indirectHandle,
    'blkif_request_indirect.indirect_grefs': L.indirectGrefs,
    'blkif_response.sizeof': L.rspSize,
    'blkif_response.id': RSP_ID,
    'blkif_response.operation': RSP_OPERATION,
    'blkif_response.status': RSP_STATUS,
    'blkif_sring_entry.sizeof': ringEntrySize(abi),
  };
}

/**
 * `blkifErrorStatus(e)` is the status a backend answers a rejected request with, as Linux
 * xen-blkback does: BLKIF_RSP_EOPNOTSUPP for an operation it does not know (including
 * BLKIF_OP_RESERVED_1), BLKIF_RSP_ERROR for every other malformed request.
 */
export function blkifErrorStatus(e: BlkifError): number {
  return e.field === 'operation' ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR;
}

const OP_NAMES = ['READ', 'WRITE', 'WRITE_BARRIER', 'FLUSH_DISKCACHE', 'RESERVED_1', 'DISCARD', 'INDIRECT'];
function opName(op: number): string {
  return OP_NAMES[op] ?? `op ${op}`;
}

// Little-endian field access by plain byte arithmetic: works on any Uint8Array (shared or not,
// any offset), allocates nothing, and reads each byte of shared memory exactly once.
function rd16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}
function rd32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}
/** A u64 as a double: exact below 2^53, rounded (never below 2^53) above. */
function rd64(b: Uint8Array, o: number): number {
  return rd32(b, o) + rd32(b, o + 4) * TWO_32;
}
function wr16(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
}
function wr32(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}
function wr64(b: Uint8Array, o: number, v: number): void {
  const lo = v >>> 0; // ToUint32 is exact modulo 2^32 for any integral double
  wr32(b, o, lo);
  wr32(b, o + 4, (v - lo) / TWO_32);
}

// Encoding checks: our own code produced the value, so an unrepresentable one is a bug and
// throws rather than being silently truncated into a different request.
function checkUint(v: number, max: number, field: string): void {
  if (!(v >= 0 && v <= max && v === Math.floor(v))) {
    throw new BlkifError(`blkif: ${field} ${v} does not fit 0..${max}`, field, v);
  }
}
function checkU64(v: number, field: string): void {
  if (!(v >= 0 && v < TWO_64 && v === Math.floor(v))) {
    throw new BlkifError(`blkif: ${field} ${v} is not a u64`, field, v);
  }
}
function checkSpan(bytes: Uint8Array, off: number, size: number, what: string): void {
  if (!(off >= 0 && off + size <= bytes.length && off === Math.floor(off))) {
    throw new RangeError(`blkif: ${what} of ${size} bytes at ${off} is outside a buffer of ${bytes.length}`);
  }
}

/**
 * Zeroes [from, to) with the typed-array fill: when `bytes` is a Node Buffer (a mapped ring
 * usually is), its own fill() is Buffer.prototype.fill, which validates its arguments in
 * JavaScript first and showed as ~8% of the ring benchmark's frontend time.
 */
const u8Fill = Uint8Array.prototype.fill;
function zeroFill(bytes: Uint8Array, from: number, to: number): void {
  u8Fill.call(bytes, 0, from, to);
}

/** Zeroes the few padding bytes [from, to) with plain stores (cheaper than a fill call for < 8 bytes). */
function zeroSmall(bytes: Uint8Array, from: number, to: number): void {
  for (let i = from; i < to; i++) bytes[i] = 0;
}

/** Validates the segments [0, n) already copied into `out` (blkif.h: 0 <= first_sect <= last_sect <= 7). */
function checkSegments(out: BlkifRequest, n: number): BlkifError | undefined {
  const first = out.segFirst;
  const last = out.segLast;
  for (let i = 0; i < n; i++) {
    const l = last[i]!;
    // Linux xen-blkback rejects last_sect >= XEN_PAGE_SIZE >> 9 and last_sect < first_sect.
    if (l >= BLKIF_SECTORS_PER_PAGE) {
      return new BlkifError(`blkif: seg[${i}].last_sect ${l} is past the 4 KiB page (max 7)`, `seg[${i}].last_sect`, l);
    }
    if (first[i]! > l) {
      return new BlkifError(`blkif: seg[${i}].first_sect ${first[i]} is after last_sect ${l}`, `seg[${i}].first_sect`, first[i]!);
    }
  }
  return undefined;
}

/**
 * `decodeRequest(abi, bytes, off, out, maxIndirectSegments)` copies the request at `off` out of
 * shared memory exactly once into `out` (XSA-155: every field is read once, then only `out` is
 * validated), and is undefined when it is well formed or a BlkifError naming the offending field.
 * Even on error `out.operation`, `idLo` and `idHi` are filled so the request can be answered
 * (status from `blkifErrorStatus`). For INDIRECT it fills dataOp (indirect_op), nrSegments,
 * nrIndirectPages and indirectGrefs; the segments live in the indirect pages, which the caller
 * maps and passes to `decodeIndirectSegments`. `maxIndirectSegments` is what the backend
 * advertised in feature-max-indirect-segments (capped at BLKIF_MAX_INDIRECT_SEGMENTS).
 * DISCARD flag bits other than BLKIF_DISCARD_SECURE are ignored, as Linux xen-blkback does.
 */
export function decodeRequest(
  abi: BlkifAbi,
  bytes: Uint8Array,
  off: number,
  out: BlkifRequest,
  maxIndirectSegments: number,
): BlkifError | undefined {
  const L = abi === 'x86_64' ? L64 : L32;
  checkSpan(bytes, off, L.reqSize, 'request');

  // Copy phase: each byte of the entry is read at most once.
  const op = bytes[off + OFF_OPERATION]!;
  out.operation = op;
  out.dataOp = op;
  out.idLo = rd32(bytes, off + L.id);
  out.idHi = rd32(bytes, off + L.id + 4);
  out.nrSegments = 0;
  out.handle = 0;
  out.sectorNumber = 0;
  out.nrSectors = 0;
  out.discardFlag = 0;
  out.nrIndirectPages = 0;

  switch (op) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE:
    case BLKIF_OP_WRITE_BARRIER:
    case BLKIF_OP_FLUSH_DISKCACHE: {
      out.nrSegments = bytes[off + OFF_NR_SEGMENTS]!;
      out.handle = rd16(bytes, off + OFF_HANDLE);
      out.sectorNumber = rd64(bytes, off + L.rwSector);
      const n = out.nrSegments;
      // blkif.h: READ/WRITE carry 1..11 segments; a barrier or flush may carry none (a pure
      // flush), as Linux xen-blkback accepts nseg == 0 only for REQ_PREFLUSH operations.
      const min = op === BLKIF_OP_READ || op === BLKIF_OP_WRITE ? 1 : 0;
      if (n < min || n > BLKIF_MAX_SEGMENTS_PER_REQUEST) {
        return new BlkifError(
          `blkif: ${opName(op)} nr_segments ${n} outside ${min}..${BLKIF_MAX_SEGMENTS_PER_REQUEST}`,
          'nr_segments',
          n,
        );
      }
      const seg = off + L.rwSeg;
      for (let i = 0; i < n; i++) {
        const s = seg + i * SEG_SIZE;
        out.segGref[i] = rd32(bytes, s);
        out.segFirst[i] = bytes[s + SEG_FIRST]!;
        out.segLast[i] = bytes[s + SEG_LAST]!;
      }
      return checkSegments(out, n);
    }
    case BLKIF_OP_DISCARD: {
      out.discardFlag = bytes[off + OFF_NR_SEGMENTS]! & BLKIF_DISCARD_SECURE;
      out.handle = rd16(bytes, off + OFF_HANDLE);
      out.sectorNumber = rd64(bytes, off + L.discardSector);
      out.nrSectors = rd64(bytes, off + L.discardNrSectors);
      return undefined;
    }
    case BLKIF_OP_INDIRECT: {
      out.dataOp = bytes[off + OFF_NR_SEGMENTS]!;
      out.nrSegments = rd16(bytes, off + OFF_HANDLE);
      out.sectorNumber = rd64(bytes, off + L.indirectSector);
      out.handle = rd16(bytes, off + L.indirectHandle);
      // blkif.h: indirect_op is BLKIF_OP_{READ,WRITE}; Linux answers anything else with ERROR.
      if (out.dataOp !== BLKIF_OP_READ && out.dataOp !== BLKIF_OP_WRITE) {
        return new BlkifError(`blkif: INDIRECT indirect_op ${out.dataOp} is not READ or WRITE`, 'indirect_op', out.dataOp);
      }
      const max = maxIndirectSegments < BLKIF_MAX_INDIRECT_SEGMENTS ? maxIndirectSegments : BLKIF_MAX_INDIRECT_SEGMENTS;
      const n = out.nrSegments;
      if (n < 1 || n > max) {
        return new BlkifError(`blkif: INDIRECT nr_segments ${n} outside 1..${max}`, 'nr_segments', n);
      }
      const pages = (n + BLKIF_SEGS_PER_INDIRECT_FRAME - 1) >>> 9; // <= 8 since n <= 4096
      out.nrIndirectPages = pages;
      const g = off + L.indirectGrefs;
      for (let i = 0; i < pages; i++) out.indirectGrefs[i] = rd32(bytes, g + 4 * i);
      return undefined;
    }
    default:
      return new BlkifError(`blkif: unsupported operation ${opName(op)}`, 'operation', op);
  }
}

/**
 * `decodeIndirectSegments(pages, out)` copies `out.nrSegments` segment descriptors (struct
 * blkif_request_segment, 8 bytes, 512 per page) from the mapped indirect pages (page i at
 * i * 4096) into `out` once each, and is undefined or a BlkifError naming the bad segment field.
 */
export function decodeIndirectSegments(pages: Uint8Array, out: BlkifRequest): BlkifError | undefined {
  const n = out.nrSegments;
  if (n > BLKIF_MAX_INDIRECT_SEGMENTS) throw new RangeError(`blkif: ${n} indirect segments exceed ${BLKIF_MAX_INDIRECT_SEGMENTS}`);
  checkSpan(pages, 0, n * SEG_SIZE, 'indirect segments');
  for (let i = 0; i < n; i++) {
    const s = i * SEG_SIZE;
    out.segGref[i] = rd32(pages, s);
    out.segFirst[i] = pages[s + SEG_FIRST]!;
    out.segLast[i] = pages[s + SEG_LAST]!;
  }
  return checkSegments(out, n);
}

/**
 * `encodeRequest(abi, bytes, off, req)` writes `req` as the ring entry at `off`: every byte of the
 * entry (sizeof(struct blkif_request)) that no field sets (padding, unused segments, the tail past
 * a shorter variant) is zeroed, so none carries stale bytes. READ/WRITE/WRITE_BARRIER/FLUSH_DISKCACHE write up to 11 segments; DISCARD the discard
 * layout; INDIRECT the indirect header with ceil(nrSegments/512) grefs (the segments go in the
 * indirect pages with `encodeIndirectSegments`); any other operation only operation and id, so
 * tests can send unknown operations. Values that do not fit their field throw a BlkifError.
 */
export function encodeRequest(abi: BlkifAbi, bytes: Uint8Array, off: number, req: BlkifRequest): void {
  const L = abi === 'x86_64' ? L64 : L32;
  checkSpan(bytes, off, L.reqSize, 'request');
  const op = req.operation;
  checkUint(op, 0xff, 'operation');
  checkUint(req.idLo, 0xffffffff, 'id');
  checkUint(req.idHi, 0xffffffff, 'id');
  // Only the bytes no field sets are zeroed, not the whole entry first: this runs once per
  // request on the data path and the entry is mostly fields. x86_64 has 4 bytes of padding
  // before the u64 id ([4, 8)); x86_32 has none (id at 4).
  const end = off + L.reqSize;
  bytes[off + OFF_OPERATION] = op;
  if (L.id === 8) wr32(bytes, off + 4, 0);
  wr32(bytes, off + L.id, req.idLo);
  wr32(bytes, off + L.id + 4, req.idHi);

  switch (op) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE:
    case BLKIF_OP_WRITE_BARRIER:
    case BLKIF_OP_FLUSH_DISKCACHE: {
      const n = req.nrSegments;
      checkUint(n, 0xff, 'nr_segments');
      checkUint(req.handle, 0xffff, 'handle');
      checkU64(req.sectorNumber, 'sector_number');
      bytes[off + OFF_NR_SEGMENTS] = n;
      wr16(bytes, off + OFF_HANDLE, req.handle);
      wr64(bytes, off + L.rwSector, req.sectorNumber);
      // A count above 11 is written as given (a test may want to send it), but only the 11
      // segments the entry has room for are.
      const m = n < BLKIF_MAX_SEGMENTS_PER_REQUEST ? n : BLKIF_MAX_SEGMENTS_PER_REQUEST;
      const seg = off + L.rwSeg;
      for (let i = 0; i < m; i++) {
        const s = seg + i * SEG_SIZE;
        wr32(bytes, s, req.segGref[i]!);
        bytes[s + SEG_FIRST] = req.segFirst[i]!;
        bytes[s + SEG_LAST] = req.segLast[i]!;
        bytes[s + 6] = 0; // struct blkif_request_segment: 2 bytes of padding after last_sect
        bytes[s + 7] = 0;
      }
      zeroFill(bytes, seg + m * SEG_SIZE, end); // unused segments
      return;
    }
    case BLKIF_OP_DISCARD:
      checkUint(req.discardFlag, 0xff, 'flag');
      checkUint(req.handle, 0xffff, 'handle');
      checkU64(req.sectorNumber, 'sector_number');
      checkU64(req.nrSectors, 'nr_sectors');
      bytes[off + OFF_NR_SEGMENTS] = req.discardFlag;
      wr16(bytes, off + OFF_HANDLE, req.handle);
      wr64(bytes, off + L.discardSector, req.sectorNumber);
      wr64(bytes, off + L.discardNrSectors, req.nrSectors);
      zeroFill(bytes, off + L.discardNrSectors + 8, end); // past struct blkif_request_discard
      return;
    case BLKIF_OP_INDIRECT: {
      const n = req.nrSegments;
      checkUint(req.dataOp, 0xff, 'indirect_op');
      checkUint(n, 0xffff, 'nr_segments');
      checkUint(req.handle, 0xffff, 'handle');
      checkU64(req.sectorNumber, 'sector_number');
      bytes[off + OFF_NR_SEGMENTS] = req.dataOp;
      wr16(bytes, off + OFF_HANDLE, n);
      wr64(bytes, off + L.indirectSector, req.sectorNumber);
      wr16(bytes, off + L.indirectHandle, req.handle);
      const g = off + L.indirectGrefs;
      zeroSmall(bytes, off + L.indirectHandle + 2, g); // padding after handle
      const need = (n + BLKIF_SEGS_PER_INDIRECT_FRAME - 1) >>> 9;
      const pages = need < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST ? need : BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST;
      for (let i = 0; i < pages; i++) wr32(bytes, g + 4 * i, req.indirectGrefs[i]!);
      zeroFill(bytes, g + 4 * pages, end); // unused grefs and the tail of the entry
      return;
    }
    default:
      // Only operation and id are set.
      zeroSmall(bytes, off + 1, off + 4);
      zeroFill(bytes, off + L.id + 8, end);
      return;
  }
}

/**
 * `encodeIndirectSegments(pages, req)` writes `req.nrSegments` segment descriptors into the
 * indirect pages (segment i at byte i * 8), padding zeroed, and zeroes the rest of the last page
 * used so the backend sees no stale descriptors.
 */
export function encodeIndirectSegments(pages: Uint8Array, req: BlkifRequest): void {
  const n = req.nrSegments;
  checkUint(n, BLKIF_MAX_INDIRECT_SEGMENTS, 'nr_segments');
  const used = n * SEG_SIZE;
  checkSpan(pages, 0, used, 'indirect segments');
  for (let i = 0; i < n; i++) {
    const s = i * SEG_SIZE;
    wr32(pages, s, req.segGref[i]!);
    pages[s + SEG_FIRST] = req.segFirst[i]!;
    pages[s + SEG_LAST] = req.segLast[i]!;
    pages[s + 6] = 0;
    pages[s + 7] = 0;
  }
  const end = Math.ceil(used / PAGE_SIZE) * PAGE_SIZE;
  zeroFill(pages, used, end < pages.length ? end : pages.length);
}

/**
 * `encodeResponse(abi, bytes, off, rsp)` writes `rsp` as the response at `off`, zeroing every
 * byte of struct blkif_response it does not set (XSA-216: padding must not leak backend memory).
 */
export function encodeResponse(abi: BlkifAbi, bytes: Uint8Array, off: number, rsp: BlkifResponse): void {
  const size = abi === 'x86_64' ? L64.rspSize : L32.rspSize;
  checkSpan(bytes, off, size, 'response');
  checkUint(rsp.idLo, 0xffffffff, 'id');
  checkUint(rsp.idHi, 0xffffffff, 'id');
  checkUint(rsp.operation, 0xff, 'operation');
  if (!(rsp.status >= -0x8000 && rsp.status <= 0x7fff && rsp.status === Math.floor(rsp.status))) {
    throw new BlkifError(`blkif: status ${rsp.status} is not an int16`, 'status', rsp.status);
  }
  wr32(bytes, off + RSP_ID, rsp.idLo);
  wr32(bytes, off + RSP_ID + 4, rsp.idHi);
  bytes[off + RSP_OPERATION] = rsp.operation;
  bytes[off + RSP_OPERATION + 1] = 0; // padding before the int16 status
  wr16(bytes, off + RSP_STATUS, rsp.status & 0xffff);
  // x86_64 pads the struct to 16 bytes (u64 alignment); x86_32 ends at 12.
  zeroSmall(bytes, off + RSP_STATUS + 2, off + size);
}

/** `decodeResponse(abi, bytes, off, out)` reads the response at `off` once into `out` (status sign-extended). */
export function decodeResponse(abi: BlkifAbi, bytes: Uint8Array, off: number, out: BlkifResponse): void {
  checkSpan(bytes, off, abi === 'x86_64' ? L64.rspSize : L32.rspSize, 'response');
  out.idLo = rd32(bytes, off + RSP_ID);
  out.idHi = rd32(bytes, off + RSP_ID + 4);
  out.operation = bytes[off + RSP_OPERATION]!;
  out.status = (rd16(bytes, off + RSP_STATUS) << 16) >> 16;
}
