// How an I/O of any length becomes blkif requests (pure arithmetic, no I/O).
//
// blkif.h: sector_number and first_sect/last_sect are in 512-byte units whatever the disk's
// sector-size; a segment is one 4 KiB granted page with 0 <= first_sect <= last_sect <= 7.
// blkfront bounces data through pages it granted (Linux blkfront does the same whenever
// persistent grants are in use), so it is free to choose where in a page the data sits. It
// places every byte at the page offset matching its disk offset: segment i of a request
// covers exactly the 4 KiB-aligned disk page it falls in. A request therefore spans as many
// segments as disk pages, a start that is not page-aligned uses first_sect > 0 and an end that
// is not uses last_sect < 7, the way Linux page-cache I/O looks to a backend. A caller's I/O
// buffer (io-buffers.ts) is granted in place instead of copied only where its bytes already
// sit at that page offset (ScatterList.grantAt), as they do for page-aligned buffers and I/O.
import {
  BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_SECTOR_SIZE, BLKIF_SECTORS_PER_PAGE, BLKIF_SEGS_PER_INDIRECT_FRAME,
} from '../../protocol/blkif.ts';
import { PAGE_SIZE } from '../../gnttab/gnttab.ts';
import type { IoBufferEntry, IoBuffers } from './io-buffers.ts';

/** `pageIndexOf(sector)` is the 4 KiB disk page holding 512-byte sector `sector`. */
export function pageIndexOf(sector: number): number {
  return Math.floor(sector / BLKIF_SECTORS_PER_PAGE);
}

/** `segmentsFor(sector, count)` is how many segments (disk pages) `count` sectors from `sector` span; 0 for count 0. */
export function segmentsFor(sector: number, count: number): number {
  if (count <= 0) return 0;
  return pageIndexOf(sector + count - 1) - pageIndexOf(sector) + 1;
}

/** `indirectPagesFor(segments)` is how many indirect pages a request of `segments` segments needs (blkif.h: 512 per page). */
export function indirectPagesFor(segments: number): number {
  return Math.ceil(segments / BLKIF_SEGS_PER_INDIRECT_FRAME);
}

/**
 * `chunkEnd(sector, end, maxSegments)` is the exclusive end sector of the next request starting
 * at `sector` for the range ending at `end`: as far as `maxSegments` disk pages reach.
 */
export function chunkEnd(sector: number, end: number, maxSegments: number): number {
  const reach = pageIndexOf(sector) * BLKIF_SECTORS_PER_PAGE + maxSegments * BLKIF_SECTORS_PER_PAGE;
  return reach < end ? reach : end;
}

/**
 * `usesIndirect(segments, maxIndirectSegments)` is whether a request of `segments` segments goes
 * out as BLKIF_OP_INDIRECT: only when it does not fit the 11 direct segments and the backend
 * offered indirect descriptors (Linux blkif_queue_rw_req).
 */
export function usesIndirect(segments: number, maxIndirectSegments: number): boolean {
  return segments > BLKIF_MAX_SEGMENTS_PER_REQUEST && maxIndirectSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST;
}

/** `maxSegmentsPerRequest(maxIndirectSegments)` is the most segments one request may carry. */
export function maxSegmentsPerRequest(maxIndirectSegments: number): number {
  return maxIndirectSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST ? maxIndirectSegments : BLKIF_MAX_SEGMENTS_PER_REQUEST;
}

/**
 * `segmentAt(sector, count, i, out)` fills `out` with segment `i` of the request covering
 * `count` sectors from `sector`: [first_sect, last_sect] within the page and the byte offset of
 * its data from the start of the request. Writes into `out` so the data path allocates nothing.
 */
export function segmentAt(sector: number, count: number, i: number, out: SegmentGeometry): void {
  const pageStart = (pageIndexOf(sector) + i) * BLKIF_SECTORS_PER_PAGE;
  const segStart = sector > pageStart ? sector : pageStart;
  const end = sector + count;
  const pageEnd = pageStart + BLKIF_SECTORS_PER_PAGE;
  const segEnd = end < pageEnd ? end : pageEnd;
  out.firstSect = segStart - pageStart;
  out.lastSect = segEnd - 1 - pageStart;
  out.byteOffset = (segStart - sector) * BLKIF_SECTOR_SIZE;
  out.byteLength = (segEnd - segStart) * BLKIF_SECTOR_SIZE;
}

/** Where one segment's data sits: its sectors within the page and its bytes within the request. */
export interface SegmentGeometry {
  firstSect: number;
  lastSect: number;
  byteOffset: number;
  byteLength: number;
}

/** `newSegmentGeometry()` is a zeroed SegmentGeometry to reuse. */
export function newSegmentGeometry(): SegmentGeometry {
  return { firstSect: 0, lastSect: 0, byteOffset: 0, byteLength: 0 };
}

/** Where a segment's bytes sit in an I/O buffer (ScatterList.grantAt). */
export interface GrantedPage {
  entry: IoBufferEntry | null;
  page: number;
}

/**
 * A list of caller buffers seen as one byte stream: the Block API takes several buffers whose
 * total length is a multiple of the sector size, in the spirit of Mirage_block's
 * `Cstruct.t list` (and with no 4096-byte restriction per buffer: mirage-block-xen #94).
 */
export class ScatterList {
  readonly buffers: readonly Uint8Array[];
  /** starts[i] is the stream offset of buffers[i]; starts[n] is the total length. */
  private readonly starts: Float64Array;
  readonly length: number;
  /** granted[i] is the I/O buffer (io-buffers.ts) buffers[i] lies in; null when none does. */
  private readonly granted: (IoBufferEntry | undefined)[] | null;

  constructor(buffers: readonly Uint8Array[], ioBuffers?: IoBuffers) {
    this.buffers = buffers;
    this.starts = new Float64Array(buffers.length + 1);
    let total = 0;
    let granted: (IoBufferEntry | undefined)[] | null = null;
    for (let i = 0; i < buffers.length; i++) {
      const b = buffers[i]!;
      this.starts[i] = total;
      total += b.byteLength;
      const e = ioBuffers?.lookup(b);
      if (e !== undefined) (granted ??= new Array<IoBufferEntry | undefined>(buffers.length))[i] = e;
    }
    this.starts[buffers.length] = total;
    this.length = total;
    this.granted = granted;
  }

  /** `hasGranted` is whether any of the buffers lies in an I/O buffer. */
  get hasGranted(): boolean {
    return this.granted !== null;
  }

  /**
   * `grantAt(offset, length, inPage, domid, out)` is whether the stream bytes [offset,
   * offset+length) can be granted in place: they lie in one buffer, an I/O buffer granted to
   * `domid`, with the first at byte `inPage` of one of its pages. Fills `out` with the entry and
   * that page; later bytes are in the pages after it, so for a whole request segment i is page
   * `out.page + i` (each segment after the first starts a page), and for one segment, whose
   * bytes end within its page, the page is all there is. False when the bytes must be copied.
   */
  grantAt(offset: number, length: number, inPage: number, domid: number, out: GrantedPage): boolean {
    const granted = this.granted;
    if (granted === null) return false;
    const i = this.indexOf(offset);
    const e = granted[i];
    if (e === undefined || e.pages.domid !== domid) return false;
    const start = this.starts[i]!;
    if (offset + length > this.starts[i + 1]!) return false;
    // Byte offset within the granted pages: the view's own offset into them plus the stream's.
    const rel = this.buffers[i]!.byteOffset - e.pages.buffer.byteOffset + (offset - start);
    if (rel % PAGE_SIZE !== inPage) return false;
    out.entry = e;
    out.page = Math.floor(rel / PAGE_SIZE);
    return true;
  }

  private indexOf(offset: number): number {
    // Binary search: the last buffer starting at or before `offset`.
    let lo = 0;
    let hi = this.buffers.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid]! <= offset) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  /**
   * `copyOut(offset, dst, dstOffset, length)` copies `length` stream bytes from `offset` into
   * `dst`. (Buffer.prototype.copy would not help: on Node 20 it makes the same view.)
   */
  copyOut(offset: number, dst: Uint8Array, dstOffset: number, length: number): void {
    let i = this.indexOf(offset);
    let done = 0;
    while (done < length) {
      const b = this.buffers[i]!;
      const inBuf = offset + done - this.starts[i]!;
      const n = Math.min(b.byteLength - inBuf, length - done);
      // A whole buffer is copied as is: a view of it would be an allocation per copy.
      if (n > 0) dst.set(n === b.byteLength ? b : b.subarray(inBuf, inBuf + n), dstOffset + done);
      done += n > 0 ? n : 0;
      i++;
    }
  }

  /** `copyIn(offset, src, srcOffset, length)` copies `length` bytes of `src` into the stream at `offset`. */
  copyIn(offset: number, src: Uint8Array, srcOffset: number, length: number): void {
    let i = this.indexOf(offset);
    let done = 0;
    while (done < length) {
      const b = this.buffers[i]!;
      const inBuf = offset + done - this.starts[i]!;
      const n = Math.min(b.byteLength - inBuf, length - done);
      const from = srcOffset + done;
      if (n > 0) b.set(from === 0 && n === src.byteLength ? src : src.subarray(from, from + n), inBuf);
      done += n > 0 ? n : 0;
      i++;
    }
  }
}
