// What a malicious frontend puts on the ring, and what blkback must answer. Each planned request
// is either well formed (it must succeed, and its data is checked against a model of the disk)
// or carries one deliberate flaw whose answer blkif.h and Linux xen-blkback fix:
//
//   unknown operation (RESERVED_1, 7..255)            -> BLKIF_RSP_EOPNOTSUPP (dispatch_other_io)
//   READ/WRITE with nr_segments 0, any rw op with > 11 -> ERROR ("Bad number of segments")
//   first_sect > last_sect, last_sect > 7              -> ERROR
//   sectors past the end, u64 wrap                     -> ERROR (xen_vbd_translate)
//   a segment ref not granted / revoked / granted to
//     another domain / another domain's ref number     -> ERROR (the map fails)
//   a read into a read-only grant                      -> ERROR (mapped writable for a read)
//   INDIRECT with indirect_op not READ/WRITE, with
//     nr_segments 0 or above feature-max-indirect-segments (65535, 4097...), with an indirect
//     page or a segment in it that cannot be mapped   -> ERROR
//   on a 4096-byte-sector disk, a start or a segment that is not whole logical sectors -> ERROR
//   write, flush, barrier on a read-only disk           -> ERROR; discard there -> EOPNOTSUPP
//   discard without feature-discard                    -> EOPNOTSUPP; past the end -> ERROR
// The response's operation is the request's, indirect_op for INDIRECT (make_response).
// Well-formed requests of one batch never overlap a sector another one modifies, so their
// results do not depend on completion order; read targets never share a page sector.
import {
  BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
  BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
} from '../../../protocol/blkif.ts';
import type { BlkifAbi } from '../../../protocol/blkif.ts';
import type { Rng } from '../fuzzer.ts';
import { BAD_REF_KINDS } from './grant-pools.ts';
import type { GrantPools, Page, SliceAllocator } from './grant-pools.ts';
import { rawRequest, writeSeg } from './raw-entry.ts';
import type { RawRequest, RawSeg } from './raw-entry.ts';

/** The backend configuration a session fuzzes. */
export interface SessionConfig {
  readonly abi: BlkifAbi;
  readonly ringPageOrder: number;
  readonly persistent: boolean;
  /** Data by grant copy (persistent grants then unused). */
  readonly grantCopy: boolean;
  /** feature-max-indirect-segments the backend advertised (0: none). */
  readonly maxIndirect: number;
  readonly sectorSize: 512 | 4096;
  readonly readonly: boolean;
  /** Disk size in 512-byte sectors. */
  readonly sectors: number;
  readonly flush: boolean;
  readonly discard: boolean;
  readonly discardSecure: boolean;
  /** Backend's in-flight bound (undefined: the ring size). */
  readonly maxInFlight: number | undefined;
}

/** A piece of a granted page one segment covers. */
export interface Slice {
  readonly page: Page;
  readonly first: number;
  readonly last: number;
}

/** What an OKAY answer means for the disk and the pages. */
export type Effect = 'none' | 'read' | 'write' | 'discard';

/** One request of a batch, with the answers blkback may give. */
export interface Planned {
  readonly raw: RawRequest;
  readonly label: string;
  /** Acceptable statuses (more than one only where Linux and blkif.h leave a choice). */
  readonly expect: readonly number[];
  /** The operation the response must carry. */
  readonly rspOp: number;
  readonly effect: Effect;
  /** First 512-byte sector and count (reads, writes, discards). */
  readonly sector: number;
  readonly nsect: number;
  /** Segments in order: read targets or write sources. */
  readonly slices: readonly Slice[];
  /** Indirect descriptor pages used. */
  readonly indirect: readonly Page[];
  /** Every ref the request names, in the entry or in its indirect pages. */
  readonly names: readonly number[];
}

/** `applyToModel(model, p)` makes the disk model follow a request that succeeded: its written data, or a discard's zeros. */
export function applyToModel(model: Buffer, p: Planned): void {
  if (p.effect === 'write') {
    let pos = p.sector * 512;
    for (const sl of p.slices) {
      const len = (sl.last - sl.first + 1) * 512;
      sl.page.buf.copy(model, pos, sl.first * 512, sl.first * 512 + len);
      pos += len;
    }
  } else if (p.effect === 'discard') {
    model.fill(0, p.sector * 512, (p.sector + p.nsect) * 512);
  }
}

const TWO32 = 4294967296;

/** Plans one batch: call `wellFormed()` / `flawed()` / `chaos()` per request, `finish()` at the end. */
export class BatchPlanner {
  private readonly intervals: { start: number; end: number; modifying: boolean }[] = [];
  private indNext = 0;
  private readonly spl: number;
  /** Pages whose content this batch wrote (their shadows are refreshed at finish). */
  private readonly touched = new Set<Page>();

  constructor(
    private readonly rng: Rng,
    private readonly cfg: SessionConfig,
    private readonly pools: GrantPools,
    private readonly slices: SliceAllocator,
    /** Random bytes to copy write data from. */
    private readonly noise: Buffer,
    /** The byte read targets are filled with before the batch. */
    readonly sentinel: number,
    private nextId: () => number,
  ) {
    this.spl = cfg.sectorSize / 512;
    slices.reset();
  }

  /** `finish()` records the content of every page the backend may only read, as published. */
  finish(): void {
    for (const p of this.touched) {
      if (p.shadow !== undefined) p.shadow.set(p.buf);
    }
  }

  private id(r: RawRequest): void {
    r.idLo = this.nextId();
    r.idHi = this.rng.u32();
  }

  private reserve(nsect: number, modifying: boolean, tries = 12): number | undefined {
    const spl = this.spl;
    const maxStart = this.cfg.sectors - nsect;
    if (maxStart < 0) return undefined;
    for (let t = 0; t < tries; t++) {
      // Now and then right at the end of the disk: the last sector is in range.
      const start = this.rng.chance(0.05) ? maxStart - (maxStart % spl) : Math.floor(this.rng.int(maxStart + 1) / spl) * spl;
      const end = start + nsect;
      if (this.intervals.some((iv) => (modifying || iv.modifying) && start < iv.end && iv.start < end)) continue;
      this.intervals.push({ start, end, modifying });
      return start;
    }
    return undefined;
  }

  private lengths(nseg: number): number[] {
    if (this.spl === 8) return Array.from({ length: nseg }, () => 8);
    return Array.from({ length: nseg }, () => (this.rng.chance(0.3) ? 8 : 1 + this.rng.int(8)));
  }

  /** Read targets for `lens`, exclusive in this batch; the slices are filled with the sentinel. */
  private readSlices(lens: number[]): Slice[] | undefined {
    const out: Slice[] = [];
    const mine = new Set<Page>();
    for (const len of lens) {
      const s = this.slices.take(this.rng, len, this.spl === 8, mine);
      if (s === undefined) return undefined;
      mine.add(s.page);
      s.page.buf.fill(this.sentinel, s.first * 512, (s.last + 1) * 512);
      out.push(s);
    }
    return out;
  }

  /** Write sources for `lens`: any read-only or source page, filled with fresh noise. */
  private writeSlices(lens: number[]): Slice[] {
    const out: Slice[] = [];
    for (const len of lens) {
      const page = this.rng.chance(0.5) ? this.rng.pick(this.pools.ro) : this.rng.pick(this.pools.src);
      const first = this.spl === 8 ? 0 : this.rng.int(9 - len);
      const off = this.rng.int(this.noise.length - 4096);
      this.noise.copy(page.buf, first * 512, off, off + len * 512);
      this.touched.add(page);
      out.push({ page, first, last: first + len - 1 });
    }
    return out;
  }

  private takeIndirect(n: number): Page[] | undefined {
    if (this.indNext + n > this.pools.ind.length) return undefined;
    const out = this.pools.ind.slice(this.indNext, this.indNext + n);
    this.indNext += n;
    for (const p of out) this.touched.add(p);
    return out;
  }

  /** Writes segment descriptors into indirect pages (512 per page); the unused tail is noise. */
  private fillIndirect(pages: Page[], segs: RawSeg[]): void {
    for (let i = 0; i < segs.length; i++) writeSeg(pages[i >> 9]!.buf, (i & 511) * 8, segs[i]!);
    const usedInLast = ((segs.length - 1) & 511) + 1;
    const last = pages[pages.length - 1]!;
    const off = this.rng.int(this.noise.length - 4096);
    this.noise.copy(last.buf, usedInLast * 8, off, off + 4096 - usedInLast * 8);
  }

  private statusFor(op: 'read' | 'write' | 'flush' | 'discard'): number[] {
    const c = this.cfg;
    if (op === 'read') return [BLKIF_RSP_OKAY];
    if (op === 'discard') return !c.discard ? [BLKIF_RSP_EOPNOTSUPP] : [BLKIF_RSP_OKAY];
    return c.readonly ? [BLKIF_RSP_ERROR] : [BLKIF_RSP_OKAY];
  }

  /** A well-formed data request (READ/WRITE, direct or INDIRECT, FLUSH/BARRIER with data), or undefined if nothing fits. */
  dataRequest(kind: 'read' | 'write' | 'flush-data', indirect: boolean, nsegWanted?: number): Planned | undefined {
    const c = this.cfg;
    const rng = this.rng;
    const useIndirect = indirect && kind !== 'flush-data' && c.maxIndirect > 0;
    // Mostly small (a ring's worth of work stays cheap), now and then as large as allowed:
    // reads are bounded by the read-target pool, writes reach a second indirect page.
    const cap = useIndirect ? Math.min(c.maxIndirect, kind === 'read' ? 96 : 600) : 11;
    let nseg = nsegWanted ?? (useIndirect ? 1 + rng.int(rng.chance(0.04) ? cap : Math.min(cap, 16)) : rng.chance(0.7) ? 1 + rng.int(4) : 1 + rng.int(11));
    nseg = Math.max(1, Math.min(nseg, cap));
    const lens = this.lengths(nseg);
    let nsect = lens.reduce((a, b) => a + b, 0);
    while (nsect > c.sectors / 2 && lens.length > 1) nsect -= lens.pop()!;
    const modifying = kind !== 'read';
    const start = this.reserve(nsect, modifying);
    if (start === undefined) return undefined;
    const slices = kind === 'read' ? this.readSlices(lens) : this.writeSlices(lens);
    if (slices === undefined) return undefined;
    const segs: RawSeg[] = slices.map((s) => ({ gref: s.page.ref, first: s.first, last: s.last }));
    const r = rawRequest();
    this.id(r);
    r.sectorLo = start >>> 0;
    r.sectorHi = Math.floor(start / TWO32);
    r.handle = rng.chance(0.8) ? 51728 : rng.int(0x10000);
    const dataOp = kind === 'read' ? BLKIF_OP_READ : BLKIF_OP_WRITE;
    let indPages: Page[] = [];
    const names = segs.map((s) => s.gref);
    if (useIndirect) {
      const pages = this.takeIndirect(Math.ceil(segs.length / 512));
      if (pages === undefined) return undefined;
      indPages = pages;
      this.fillIndirect(pages, segs);
      r.layout = 'indirect';
      r.operation = BLKIF_OP_INDIRECT;
      r.indirectOp = dataOp;
      r.indirectNrSegments = segs.length;
      r.indirectGrefs = pages.map((p) => p.ref);
      names.push(...r.indirectGrefs);
    } else {
      r.layout = 'rw';
      r.operation = kind === 'flush-data' ? rng.pick([BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER]) : dataOp;
      r.nrSegmentsByte = segs.length;
      r.segs = segs;
    }
    const expect = this.statusFor(kind === 'read' ? 'read' : kind === 'write' ? 'write' : 'flush');
    return {
      raw: r, label: `${useIndirect ? 'INDIRECT ' : ''}${opName(r.operation === BLKIF_OP_INDIRECT ? dataOp : r.operation)} ${nseg} segs @${start}+${nsect}`,
      expect, rspOp: dataOp === BLKIF_OP_READ || useIndirect ? dataOp : r.operation,
      effect: kind === 'read' ? 'read' : 'write', sector: start, nsect, slices, indirect: indPages, names,
    };
  }

  /** A flush or barrier without data. */
  private flushRequest(): Planned {
    const r = rawRequest();
    this.id(r);
    r.operation = this.rng.pick([BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER]);
    r.nrSegmentsByte = 0;
    // blkif.h gives no meaning to sector_number here and Linux never checks it (its alignment
    // check is per segment): any value, even misaligned on a 4096-byte disk, gets the flush's status.
    const sector = this.rng.chance(0.7) ? 0 : this.rng.int(this.cfg.sectors);
    r.sectorLo = sector;
    const expect = this.statusFor('flush');
    return {
      raw: r, label: `${opName(r.operation)} without data (sector ${sector})`,
      expect,
      rspOp: r.operation, effect: 'none', sector: 0, nsect: 0, slices: [], indirect: [], names: [],
    };
  }

  private discardRequest(): Planned | undefined {
    const c = this.cfg;
    const n = Math.floor(this.rng.int(Math.min(512, c.sectors / 4)) / this.spl) * this.spl;
    const start = this.reserve(n, true);
    if (start === undefined) return undefined;
    const r = rawRequest();
    this.id(r);
    r.layout = 'discard';
    r.operation = BLKIF_OP_DISCARD;
    r.discardFlag = this.rng.pick([0, 1, 0xff]);
    r.handle = this.rng.int(0x10000);
    r.sectorLo = start;
    r.nrSectorsLo = n;
    return {
      raw: r, label: `DISCARD @${start}+${n}`, expect: this.statusFor('discard'), rspOp: BLKIF_OP_DISCARD,
      effect: 'discard', sector: start, nsect: n, slices: [], indirect: [], names: [],
    };
  }

  /** `wellFormed()` is a request a correct frontend could send. */
  wellFormed(): Planned | undefined {
    const rng = this.rng;
    const w = rng.int(100);
    if (w < 38) return this.dataRequest('read', rng.chance(0.3));
    if (w < 78) return this.dataRequest('write', rng.chance(0.3));
    if (w < 86) return this.dataRequest('flush-data', false);
    if (w < 93) return this.flushRequest();
    return this.discardRequest();
  }

  /** `flawed()` is a request with exactly one flaw, and the answer that flaw must get. */
  flawed(): Planned {
    for (;;) {
      const p = this.tryFlawed();
      if (p !== undefined) return p;
    }
  }

  private tryFlawed(): Planned | undefined {
    const rng = this.rng;
    const c = this.cfg;
    const attack = rng.int(14);
    const err = [BLKIF_RSP_ERROR];
    switch (attack) {
      case 0: { // unknown operation
        const r = rawRequest();
        this.id(r);
        r.operation = rng.chance(0.3) ? 4 : 7 + rng.int(249);
        r.layout = rng.pick(['rw', 'discard', 'indirect', 'none'] as const);
        r.nrSegmentsByte = rng.int(256);
        r.sectorLo = rng.u32();
        r.segs = [{ gref: rng.pick(this.pools.rw).ref, first: 0, last: 7 }];
        return {
          raw: r, label: `unknown operation ${r.operation}`, expect: [BLKIF_RSP_EOPNOTSUPP], rspOp: r.operation,
          effect: 'none', sector: 0, nsect: 0, slices: [], indirect: [], names: [],
        };
      }
      case 1: { // READ/WRITE with no segment
        const r = rawRequest();
        this.id(r);
        r.operation = rng.pick([BLKIF_OP_READ, BLKIF_OP_WRITE]);
        r.nrSegmentsByte = 0;
        r.sectorLo = rng.int(c.sectors);
        return { raw: r, label: `${opName(r.operation)} nr_segments 0`, expect: err, rspOp: r.operation, effect: 'none', sector: 0, nsect: 0, slices: [], indirect: [], names: [] };
      }
      case 2: { // more segments than an entry holds
        const kind = rng.pick(['read', 'write', 'flush-data'] as const);
        const p = this.dataRequest(kind, false, 11);
        if (p === undefined) return undefined;
        p.raw.nrSegmentsByte = rng.pick([12, 13, 16, 128, 255, 12 + rng.int(244)]);
        return this.as(p, `${p.label} with nr_segments ${p.raw.nrSegmentsByte}`, err);
      }
      case 3: { // first_sect > last_sect, or last_sect past the page
        const p = this.dataRequest(rng.pick(['read', 'write'] as const), rng.chance(0.4));
        if (p === undefined) return undefined;
        const i = rng.int(p.slices.length);
        const s = p.slices[i]!;
        const bad: RawSeg = { gref: s.page.ref, first: s.first, last: s.last };
        if (rng.chance(0.5) && s.last < 7) bad.first = s.last + 1 + rng.int(7 - s.last);
        else bad.last = 8 + rng.int(248);
        this.setSeg(p, i, bad);
        return this.as(p, `${p.label}, seg ${i} first ${bad.first} last ${bad.last}`, err);
      }
      case 4: { // past the end of the disk
        const p = this.dataRequest(rng.pick(['read', 'write'] as const), rng.chance(0.3));
        if (p === undefined) return undefined;
        const start = c.sectors - p.nsect + 1 + (rng.chance(0.5) ? 0 : rng.int(1 << 20));
        this.setSector(p, start >>> 0, Math.floor(start / TWO32));
        return this.as(p, `${p.label} moved to sector ${start} (disk has ${c.sectors})`, err);
      }
      case 5: { // sector number that wraps u64
        const p = this.dataRequest(rng.pick(['read', 'write'] as const), rng.chance(0.3));
        if (p === undefined) return undefined;
        const lo = rng.chance(0.5) ? (0xffffffff - rng.int(64)) >>> 0 : rng.u32();
        this.setSector(p, lo, rng.chance(0.7) ? 0xffffffff : 0x80000000 + rng.int(0x7fffffff));
        return this.as(p, `${p.label} at u64 sector ${p.raw.sectorHi.toString(16)}:${lo.toString(16)}`, err);
      }
      case 6: { // a segment ref the backend cannot map
        const p = this.dataRequest(rng.pick(['read', 'write'] as const), rng.chance(0.4));
        if (p === undefined) return undefined;
        const i = rng.int(p.slices.length);
        const kind = rng.pick(BAD_REF_KINDS);
        const s = p.slices[i]!;
        const gref = this.pools.badRef(rng, kind);
        this.setSeg(p, i, { gref, first: s.first, last: s.last });
        return this.as(p, `${p.label}, seg ${i} ref ${gref} (${kind})`, err);
      }
      case 7: { // a read into a read-only grant
        const p = this.dataRequest('read', rng.chance(0.4));
        if (p === undefined) return undefined;
        const i = rng.int(p.slices.length);
        const s = p.slices[i]!;
        const ro = rng.pick(this.pools.ro);
        this.setSeg(p, i, { gref: ro.ref, first: s.first, last: s.last });
        return this.as(p, `${p.label}, seg ${i} into read-only ref ${ro.ref}`, err);
      }
      case 8: { // INDIRECT with a bad indirect_op
        if (c.maxIndirect === 0) return undefined;
        const p = this.dataRequest(rng.pick(['read', 'write'] as const), true);
        if (p === undefined || p.raw.layout !== 'indirect') return undefined;
        p.raw.indirectOp = rng.pick([2, 3, 4, 5, 6, 7 + rng.int(249)]);
        return { ...this.as(p, `${p.label} with indirect_op ${p.raw.indirectOp}`, err), rspOp: p.raw.indirectOp };
      }
      case 9: { // INDIRECT nr_segments 0 or above the advertised maximum
        const p = this.dataRequest(rng.pick(['read', 'write'] as const), true);
        if (p === undefined) return undefined;
        const dataOp = p.raw.layout === 'indirect' ? p.raw.indirectOp : p.raw.operation === BLKIF_OP_READ ? BLKIF_OP_READ : BLKIF_OP_WRITE;
        const r = p.raw;
        let grefs = r.indirectGrefs;
        if (r.layout !== 'indirect') {
          const pg = this.takeIndirect(1);
          if (pg === undefined) return undefined;
          grefs = [pg[0]!.ref];
          (p.indirect as Page[]).push(pg[0]!);
        }
        r.layout = 'indirect';
        r.operation = BLKIF_OP_INDIRECT;
        r.indirectOp = dataOp;
        r.indirectGrefs = grefs;
        r.indirectNrSegments = c.maxIndirect === 0
          ? 1 + rng.int(64)
          : rng.pick([0, c.maxIndirect + 1, c.maxIndirect + 1 + rng.int(0x10000 - c.maxIndirect - 1), 4097, 0xffff]);
        return { ...this.as(p, `INDIRECT nr_segments ${r.indirectNrSegments} (max ${c.maxIndirect})`, err), rspOp: dataOp };
      }
      case 10: { // INDIRECT with an indirect page that cannot be mapped
        if (c.maxIndirect === 0) return undefined;
        const p = this.dataRequest(rng.pick(['read', 'write'] as const), true);
        if (p === undefined || p.raw.layout !== 'indirect') return undefined;
        const i = rng.int(p.raw.indirectGrefs.length);
        const kind = rng.pick(BAD_REF_KINDS);
        p.raw.indirectGrefs[i] = this.pools.badRef(rng, kind);
        return this.as(p, `${p.label}, indirect page ${i} ref ${p.raw.indirectGrefs[i]} (${kind})`, err);
      }
      case 11: { // a 4096-byte-sector disk addressed in 512-byte pieces
        if (this.spl === 1) return undefined;
        const p = this.dataRequest(rng.pick(['read', 'write'] as const), rng.chance(0.3));
        if (p === undefined) return undefined;
        if (rng.chance(0.5)) {
          this.setSector(p, p.sector + 1 + rng.int(7), 0);
          return this.as(p, `${p.label} at a sector that is not a 4096-byte boundary`, err);
        }
        const i = rng.int(p.slices.length);
        const s = p.slices[i]!;
        // A segment of 1..7 sectors: not a whole 4096-byte block.
        const seg: RawSeg = { gref: s.page.ref, first: 1 + rng.int(7), last: 7 };
        this.setSeg(p, i, seg);
        return this.as(p, `${p.label}, seg ${i} covers ${seg.last - seg.first + 1} of 8 sectors of a 4096-byte block`, err);
      }
      case 12: { // discard past the end or wrapping
        const r = rawRequest();
        this.id(r);
        r.layout = 'discard';
        r.operation = BLKIF_OP_DISCARD;
        const wrap = rng.chance(0.4);
        const start = wrap ? rng.u32() : c.sectors - rng.int(16);
        r.sectorLo = start >>> 0;
        r.sectorHi = wrap ? 0xffffffff : 0;
        r.nrSectorsLo = wrap ? 8 : 17 + rng.int(1000);
        r.nrSectorsHi = rng.chance(0.2) ? 0xffffffff : 0;
        const expect = !c.discard ? [BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR] : err;
        return { raw: r, label: `DISCARD past the end (${r.sectorHi}:${r.sectorLo} + ${r.nrSectorsHi}:${r.nrSectorsLo})`, expect, rspOp: BLKIF_OP_DISCARD, effect: 'none', sector: 0, nsect: 0, slices: [], indirect: [], names: [] };
      }
      default: { // a segment inside an indirect page with a bad ref
        if (c.maxIndirect === 0) return undefined;
        const p = this.dataRequest(rng.pick(['read', 'write'] as const), true);
        if (p === undefined || p.raw.layout !== 'indirect') return undefined;
        const i = rng.int(p.slices.length);
        const s = p.slices[i]!;
        const gref = rng.chance(0.2) && p.effect === 'read' ? rng.pick(this.pools.ro).ref : this.pools.badRef(rng, rng.pick(BAD_REF_KINDS));
        this.setSeg(p, i, { gref, first: s.first, last: s.last });
        return this.as(p, `${p.label}, indirect seg ${i} ref ${gref}`, err);
      }
    }
  }

  /** `p` with a new label and expected statuses; the effect stays for the sentinel check of read targets. */
  private as(p: Planned, label: string, expect: number[]): Planned {
    // A flawed write does nothing; a flawed read leaves its (sentinel-filled) targets alone.
    return { ...p, label, expect, effect: p.effect === 'read' ? 'read' : 'none' };
  }

  private setSeg(p: Planned, i: number, s: RawSeg): void {
    if (p.raw.layout === 'indirect') writeSeg(p.indirect[i >> 9]!.buf, (i & 511) * 8, s);
    else p.raw.segs[i] = s;
    (p.names as number[]).push(s.gref);
  }

  private setSector(p: Planned, lo: number, hi: number): void {
    p.raw.sectorLo = lo >>> 0;
    p.raw.sectorHi = hi >>> 0;
  }

  /**
   * `chaos(ringRefs)` is garbage: random bytes in the entry, or an INDIRECT whose descriptor
   * pages are noise, data pages, or the ring itself. Only what holds for any input is checked:
   * an answer with the right id, an op and a status blkif.h defines, nothing mapped that was
   * not granted, and nothing written into read-only grants.
   */
  chaos(ringRefs: readonly number[]): Planned {
    const rng = this.rng;
    const r = rawRequest();
    this.id(r);
    const kind = rng.int(4);
    if (kind === 0) {
      // Every field random; the layout follows the op byte or is random.
      r.operation = rng.chance(0.7) ? rng.int(7) : rng.int(256);
      r.layout = rng.pick(['rw', 'discard', 'indirect'] as const);
      r.nrSegmentsByte = rng.int(256);
      r.indirectOp = rng.chance(0.5) ? BLKIF_OP_WRITE : rng.int(256);
      r.indirectNrSegments = rng.int(0x10000);
      r.handle = rng.int(0x10000);
      r.sectorLo = rng.u32();
      r.sectorHi = rng.chance(0.8) ? 0 : rng.u32();
      r.nrSectorsLo = rng.u32();
      r.nrSectorsHi = rng.chance(0.8) ? 0 : rng.u32();
      const n = 1 + rng.int(11);
      for (let i = 0; i < n; i++) r.segs.push({ gref: this.chaosRef(), first: rng.int(10), last: rng.int(10) });
      for (let i = 0; i < 8; i++) r.indirectGrefs.push(this.chaosRef());
      // Garbage READs could land disk data anywhere the frontend granted writable, the ring
      // included (its ref may appear in the noise): keep chaos data reads away from it.
      if (r.operation === BLKIF_OP_READ) r.operation = BLKIF_OP_WRITE;
      if (r.operation === BLKIF_OP_INDIRECT) {
        r.layout = 'indirect';
        if (r.indirectOp === BLKIF_OP_READ) r.indirectOp = BLKIF_OP_WRITE;
      }
    } else {
      // INDIRECT (indirect_op WRITE: the backend only reads pages) whose descriptors are
      // noise, a data page, a decoy, or the ring pages themselves.
      r.layout = 'indirect';
      r.operation = BLKIF_OP_INDIRECT;
      r.indirectOp = BLKIF_OP_WRITE;
      r.indirectNrSegments = rng.chance(0.5) ? 1 + rng.int(Math.max(1, this.cfg.maxIndirect)) : rng.int(0x10000);
      r.sectorLo = rng.int(this.cfg.sectors);
      const pages = Math.max(1, Math.min(8, Math.ceil(r.indirectNrSegments / 512)));
      for (let i = 0; i < pages; i++) {
        r.indirectGrefs.push(kind === 1 ? rng.pick(ringRefs) : kind === 2 ? rng.pick([...this.pools.rw, ...this.pools.decoy]).ref : rng.pick(this.pools.ro).ref);
      }
    }
    return {
      raw: r, label: `chaos ${kind} op ${r.operation}`, expect: [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP],
      rspOp: -1, effect: 'none', sector: 0, nsect: 0, slices: [], indirect: [], names: [],
    };
  }

  private chaosRef(): number {
    const rng = this.rng;
    if (rng.chance(0.4)) return this.pools.badRef(rng, rng.pick(BAD_REF_KINDS));
    return rng.pick([...this.pools.src, ...this.pools.ro, ...this.pools.decoy]).ref;
  }
}

/** `opName(op)` is blkif.h's name of an operation. */
export function opName(op: number): string {
  return ['READ', 'WRITE', 'WRITE_BARRIER', 'FLUSH_DISKCACHE', 'RESERVED_1', 'DISCARD', 'INDIRECT'][op] ?? `op ${op}`;
}
