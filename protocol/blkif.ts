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
