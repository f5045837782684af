// Raw blkif ring entries for a malicious frontend: every field written exactly as given, u64s
// as two u32 halves, no validation. protocol/blkif.ts's encodeRequest refuses values a real
// frontend never sends (sector numbers of 2^64 - 1, nr_segments past the entry); the fuzzer
// needs to send them, so it writes bytes itself, at the offsets blkifLayout() gives (which the
// conformance tier pins to Xen's blkif.h as compiled for each ABI).
import { blkifLayout, requestSize, responseSize } from '../../../protocol/blkif.ts';
import type { BlkifAbi } from '../../../protocol/blkif.ts';

/** Offsets of one ABI, resolved once. */
export interface EntryLayout {
  readonly abi: BlkifAbi;
  readonly size: number;
  readonly id: number;
  readonly rwSector: number;
  readonly rwSeg: number;
  readonly discardSector: number;
  readonly discardNrSectors: number;
  readonly indirectSector: number;
  readonly indirectHandle: number;
  readonly indirectGrefs: number;
  readonly rspSize: number;
  readonly rspOperation: number;
  readonly rspStatus: number;
  /** Bytes of struct blkif_response that are padding (must read as zero: XSA-216). */
  readonly rspPadding: readonly number[];
}

/** `entryLayout(abi)` is the offsets the raw writers use for `abi`. */
export function entryLayout(abi: BlkifAbi): EntryLayout {
  const L = blkifLayout(abi);
  const rspSize = responseSize(abi);
  const op = L['blkif_response.operation']!;
  const st = L['blkif_response.status']!;
  const used = new Set<number>();
  for (let i = 0; i < 8; i++) used.add(L['blkif_response.id']! + i);
  used.add(op);
  used.add(st);
  used.add(st + 1);
  const rspPadding: number[] = [];
  for (let i = 0; i < rspSize; i++) if (!used.has(i)) rspPadding.push(i);
  return {
    abi,
    size: requestSize(abi),
    id: L['blkif_request.id']!,
    rwSector: L['blkif_request.sector_number']!,
    rwSeg: L['blkif_request.seg']!,
    discardSector: L['blkif_request_discard.sector_number']!,
    discardNrSectors: L['blkif_request_discard.nr_sectors']!,
    indirectSector: L['blkif_request_indirect.sector_number']!,
    indirectHandle: L['blkif_request_indirect.handle']!,
    indirectGrefs: L['blkif_request_indirect.indirect_grefs']!,
    rspSize,
    rspOperation: op,
    rspStatus: st,
    rspPadding,
  };
}

export function wr16(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
}

export function wr32(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

export function rd16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

export function rd32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

/** One segment descriptor (struct blkif_request_segment) as raw values. */
export interface RawSeg {
  gref: number;
  first: number;
  last: number;
}

/** A request as raw field values; which fields are written depends on `operation`'s layout. */
export interface RawRequest {
  /** The byte written at offset 0 (any value). */
  operation: number;
  idLo: number;
  idHi: number;
  /** READ/WRITE/BARRIER/FLUSH: the nr_segments byte (may exceed the 11 segments written). */
  nrSegmentsByte: number;
  handle: number;
  sectorLo: number;
  sectorHi: number;
  /** Direct segments written into the entry (at most 11 fit). */
  segs: RawSeg[];
  /** DISCARD: flag byte and nr_sectors halves. */
  discardFlag: number;
  nrSectorsLo: number;
  nrSectorsHi: number;
  /** INDIRECT: indirect_op byte, nr_segments u16 and up to 8 indirect grefs. */
  indirectOp: number;
  indirectNrSegments: number;
  indirectGrefs: number[];
  /** Which layout to write: the one `operation` names, or a chosen one for garbage operations. */
  layout: 'rw' | 'discard' | 'indirect' | 'none';
}

/** `rawRequest()` is an all-zero raw request with the rw layout. */
export function rawRequest(): RawRequest {
  return {
    operation: 0, idLo: 0, idHi: 0, nrSegmentsByte: 0, handle: 0, sectorLo: 0, sectorHi: 0, segs: [],
    discardFlag: 0, nrSectorsLo: 0, nrSectorsHi: 0, indirectOp: 0, indirectNrSegments: 0, indirectGrefs: [], layout: 'rw',
  };
}

/**
 * `writeEntry(L, bytes, off, r, fill)` writes `r` as the ring entry at `off`; the rest of the
 * entry is filled with `fill` (0 for a tidy frontend, anything else for a sloppy one).
 */
export function writeEntry(L: EntryLayout, bytes: Uint8Array, off: number, r: RawRequest, fill = 0): void {
  bytes.fill(fill, off, off + L.size);
  bytes[off] = r.operation;
  wr32(bytes, off + L.id, r.idLo);
  wr32(bytes, off + L.id + 4, r.idHi);
  switch (r.layout) {
    case 'rw': {
      bytes[off + 1] = r.nrSegmentsByte;
      wr16(bytes, off + 2, r.handle);
      wr32(bytes, off + L.rwSector, r.sectorLo);
      wr32(bytes, off + L.rwSector + 4, r.sectorHi);
      const n = Math.min(r.segs.length, 11);
      for (let i = 0; i < n; i++) writeSeg(bytes, off + L.rwSeg + 8 * i, r.segs[i]!);
      return;
    }
    case 'discard':
      bytes[off + 1] = r.discardFlag;
      wr16(bytes, off + 2, r.handle);
      wr32(bytes, off + L.discardSector, r.sectorLo);
      wr32(bytes, off + L.discardSector + 4, r.sectorHi);
      wr32(bytes, off + L.discardNrSectors, r.nrSectorsLo);
      wr32(bytes, off + L.discardNrSectors + 4, r.nrSectorsHi);
      return;
    case 'indirect': {
      bytes[off + 1] = r.indirectOp;
      wr16(bytes, off + 2, r.indirectNrSegments);
      wr32(bytes, off + L.indirectSector, r.sectorLo);
      wr32(bytes, off + L.indirectSector + 4, r.sectorHi);
      wr16(bytes, off + L.indirectHandle, r.handle);
      const n = Math.min(r.indirectGrefs.length, 8);
      for (let i = 0; i < n; i++) wr32(bytes, off + L.indirectGrefs + 4 * i, r.indirectGrefs[i]!);
      return;
    }
    default:
      return;
  }
}

/** `writeSeg(bytes, off, s)` writes one segment descriptor, padding zeroed. */
export function writeSeg(bytes: Uint8Array, off: number, s: RawSeg): void {
  wr32(bytes, off, s.gref);
  bytes[off + 4] = s.first;
  bytes[off + 5] = s.last;
  bytes[off + 6] = 0;
  bytes[off + 7] = 0;
}

/** A response as read from the ring, with the offsets of any non-zero padding byte. */
export interface RawResponse {
  idLo: number;
  idHi: number;
  operation: number;
  status: number;
  /** Padding bytes that are not zero (XSA-216), as `offset=value`. */
  dirtyPadding: string[];
}

/** `readResponse(L, bytes, off)` reads the response at `off` once. */
export function readResponse(L: EntryLayout, bytes: Uint8Array, off: number): RawResponse {
  const dirtyPadding: string[] = [];
  for (const p of L.rspPadding) if (bytes[off + p] !== 0) dirtyPadding.push(`${p}=0x${bytes[off + p]!.toString(16)}`);
  return {
    idLo: rd32(bytes, off),
    idHi: rd32(bytes, off + 4),
    operation: bytes[off + L.rspOperation]!,
    status: (rd16(bytes, off + L.rspStatus) << 16) >> 16,
    dirtyPadding,
  };
}
