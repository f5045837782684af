// What the backend advertises in XenStore and what blkfront makes of it (pure: values in,
// decisions out; the reads themselves are in handshake.ts).
//
// Keys and defaults follow blkif.h's "Backend XenBus Nodes" and Linux xen-blkfront
// (talk_to_blkback, negotiate_mq, blkfront_gather_backend_features, blkfront_connect):
// absent optional keys take Linux's defaults; a present key that is not what blkif.h says
// (garbage from a buggy or hostile backend) is an EPROTO BlkfrontError naming path and value.
import {
  BLKIF_MAX_INDIRECT_SEGMENTS, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER,
  VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE,
} from '../../protocol/blkif.ts';
import type { BlkifAbi } from '../../protocol/blkif.ts';
import { BlkfrontError } from './errors.ts';

/** xenbus.h XENBUS_MAX_RING_GRANT_ORDER: a ring is at most 16 pages. */
export const MAX_RING_PAGE_ORDER = 4;

/** A key's value as read from XenStore: undefined when the key does not exist. */
export type KeyReader = (key: string) => Promise<string | undefined>;

/**
 * `parseUnsigned(path, text, max)` is the decimal unsigned integer in `text` (surrounding blanks
 * allowed, as scanf("%u") skips them), or an EPROTO error naming `path` and `text`.
 */
export function parseUnsigned(path: string, text: string, max: number = Number.MAX_SAFE_INTEGER): number {
  const t = text.trim();
  if (!/^[0-9]{1,16}$/.test(t)) throw new BlkfrontError('EPROTO', `${path}: ${JSON.stringify(text)} is not an unsigned decimal number`, path, text);
  const n = Number(t);
  if (n > max) throw new BlkfrontError('EPROTO', `${path}: ${t} is larger than ${max}`, path, text);
  return n;
}

/** `readUnsigned(read, dir, key, dflt, max)` is the unsigned at `dir/key`, `dflt` when absent (xenbus_read_unsigned). */
export async function readUnsigned(read: KeyReader, dir: string, key: string, dflt: number, max?: number): Promise<number> {
  const v = await read(`${dir}/${key}`);
  return v === undefined ? dflt : parseUnsigned(`${dir}/${key}`, v, max);
}

/** `readRequiredUnsigned(read, dir, key, max)` is the unsigned at `dir/key`; EPROTO naming the key when absent. */
export async function readRequiredUnsigned(read: KeyReader, dir: string, key: string, max?: number): Promise<number> {
  const v = await read(`${dir}/${key}`);
  if (v === undefined) throw new BlkfrontError('EPROTO', `${dir}/${key}: missing (the backend must write it before Connected)`, `${dir}/${key}`);
  return parseUnsigned(`${dir}/${key}`, v, max);
}

/** What the backend offers for the rings, read before the frontend allocates them (talk_to_blkback). */
export interface BackendRingFeatures {
  /** `max-ring-page-order` (default 0: one page). */
  readonly maxRingPageOrder: number;
  /** `multi-queue-max-queues` (default 1). */
  readonly maxQueues: number;
}

/** `readBackendRingFeatures(read, backendPath)` reads max-ring-page-order and multi-queue-max-queues. */
export async function readBackendRingFeatures(read: KeyReader, backendPath: string): Promise<BackendRingFeatures> {
  return {
    maxRingPageOrder: await readUnsigned(read, backendPath, 'max-ring-page-order', 0, 0xffffffff),
    maxQueues: await readUnsigned(read, backendPath, 'multi-queue-max-queues', 1, 0xffffffff),
  };
}

/** The frontend's own limits: the values Linux blkfront takes from module parameters. */
export interface FrontendLimits {
  /** Largest ring-page-order we accept (Linux max_ring_page_order). */
  readonly maxRingPageOrder: number;
  /** Most queues we use (Linux max_queues). */
  readonly maxQueues: number;
  /** Most segments per indirect request; 0 turns indirect descriptors off (Linux max_indirect_segments). */
  readonly maxIndirectSegments: number;
  /** Whether we offer persistent grants (Linux feature_persistent). */
  readonly persistent: boolean;
  /** The ring ABI, written as `protocol`. */
  readonly abi: BlkifAbi;
}

/** The ring geometry both ends agreed on. */
export interface RingGeometry {
  readonly ringPageOrder: number;
  readonly queues: number;
}

/**
 * `negotiateRings(backend, ours)` is the ring geometry: the smaller of the two page orders
 * (Linux: min(xen_blkif_max_ring_order, max-ring-page-order)) and of the two queue counts, at
 * least one queue (negotiate_mq).
 */
export function negotiateRings(backend: BackendRingFeatures, ours: FrontendLimits): RingGeometry {
  const ringPageOrder = Math.min(ours.maxRingPageOrder, backend.maxRingPageOrder, MAX_RING_PAGE_ORDER);
  const queues = Math.max(1, Math.min(ours.maxQueues, backend.maxQueues));
  return { ringPageOrder, queues };
}

/** The disk as the backend describes it once Connected. */
export interface BackendDisk {
  /** Size in units of `sectorSize` (the `sectors` key divided by sectorSize / 512: see sectorsFromKey). */
  readonly sectors: number;
  /** `sector-size`: the logical block size in bytes (512..4096, a power of two). */
  readonly sectorSize: number;
  /** `physical-sector-size` (default `sectorSize`). */
  readonly physicalSectorSize: number;
  /** `info`: VDISK_* bits. */
  readonly info: number;
}

/** What the backend offers for I/O, read when it is Connected (blkfront_gather_backend_features). */
export interface BackendIoFeatures {
  readonly barrier: boolean;
  readonly flushCache: boolean;
  readonly discard: boolean;
  readonly discardGranularity: number;
  readonly discardAlignment: number;
  readonly discardSecure: boolean;
  readonly persistent: boolean;
  readonly maxIndirectSegments: number;
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/**
 * `sectorsFromKey(sectors512, sectorSize)` is the disk size in logical sectors given the
 * `sectors` key. That key counts 512-byte units whatever `sector-size` is: Linux xen-blkback
 * writes vbd_sz() in 512-byte sectors and xen-blkfront hands it to set_capacity(), which counts
 * 512-byte sectors (Xen 4.17's blkif.h text says "units of sector-size", which only agrees
 * when sector-size is 512). A partial logical sector at the end is not addressable.
 */
export function sectorsFromKey(sectors512: number, sectorSize: number): number {
  return Math.floor(sectors512 / (sectorSize / 512));
}

/** `readBackendDisk(read, backendPath)` reads sectors, info, sector-size and physical-sector-size (blkfront_connect). */
export async function readBackendDisk(read: KeyReader, backendPath: string): Promise<BackendDisk> {
  const sectors512 = await readRequiredUnsigned(read, backendPath, 'sectors');
  const info = await readRequiredUnsigned(read, backendPath, 'info', 0xffffffff);
  const sectorSize = await readRequiredUnsigned(read, backendPath, 'sector-size', 0xffffffff);
  // The block layer takes a logical block size that is a power of two from 512 to a page.
  if (!isPowerOfTwo(sectorSize) || sectorSize < 512 || sectorSize > 4096) {
    throw new BlkfrontError('EPROTO', `${backendPath}/sector-size: ${sectorSize} is not a power of two from 512 to 4096`, `${backendPath}/sector-size`, sectorSize);
  }
  const physicalSectorSize = await readUnsigned(read, backendPath, 'physical-sector-size', sectorSize, 0xffffffff);
  if (!isPowerOfTwo(physicalSectorSize) || physicalSectorSize < sectorSize) {
    throw new BlkfrontError('EPROTO', `${backendPath}/physical-sector-size: ${physicalSectorSize} is not a power of two >= sector-size ${sectorSize}`, `${backendPath}/physical-sector-size`, physicalSectorSize);
  }
  // Keep every byte offset exact in a double.
  if (sectors512 > Number.MAX_SAFE_INTEGER / 512) {
    throw new BlkfrontError('EPROTO', `${backendPath}/sectors: ${sectors512} is beyond what this frontend can address`, `${backendPath}/sectors`, sectors512);
  }
  return { sectors: sectorsFromKey(sectors512, sectorSize), sectorSize, physicalSectorSize, info };
}

/** `readBackendIoFeatures(read, backendPath)` reads the feature-* keys and discard parameters. */
export async function readBackendIoFeatures(read: KeyReader, backendPath: string): Promise<BackendIoFeatures> {
  const flag = async (key: string): Promise<boolean> => (await readUnsigned(read, backendPath, key, 0, 0xffffffff)) !== 0;
  const discard = await flag('feature-discard');
  return {
    barrier: await flag('feature-barrier'),
    flushCache: await flag('feature-flush-cache'),
    discard,
    discardGranularity: discard ? await readUnsigned(read, backendPath, 'discard-granularity', 0, 0xffffffff) : 0,
    discardAlignment: discard ? await readUnsigned(read, backendPath, 'discard-alignment', 0, 0xffffffff) : 0,
    discardSecure: discard ? await flag('discard-secure') : false,
    persistent: await flag('feature-persistent'),
    maxIndirectSegments: await readUnsigned(read, backendPath, 'feature-max-indirect-segments', 0, 0xffffffff),
  };
}

/** How blkfront will drive the data path on this connection. */
export interface IoNegotiated {
  /** The op flush() sends: FLUSH_DISKCACHE, else WRITE_BARRIER, else none (a write-through disk). */
  readonly flushOp: typeof BLKIF_OP_FLUSH_DISKCACHE | typeof BLKIF_OP_WRITE_BARRIER | null;
  readonly discard: boolean;
  readonly discardSecure: boolean;
  readonly discardGranularity: number;
  readonly discardAlignment: number;
  /** Both ends offered persistent grants. */
  readonly persistent: boolean;
  /** Segments per indirect request, or 0 when requests stay direct (11 segments). */
  readonly maxIndirectSegments: number;
}

/**
 * `negotiateIo(backend, ours)` is blkfront_gather_backend_features: flush-cache is preferred to
 * barriers, persistent grants need both ends, and indirect segments are the smaller of both
 * ends' maxima (capped by blkif.h's 8 pages x 512), dropped to 0 when that is no more than the
 * 11 direct segments.
 */
export function negotiateIo(backend: BackendIoFeatures, ours: FrontendLimits): IoNegotiated {
  let indirect = Math.min(backend.maxIndirectSegments, ours.maxIndirectSegments, BLKIF_MAX_INDIRECT_SEGMENTS);
  if (indirect <= BLKIF_MAX_SEGMENTS_PER_REQUEST) indirect = 0;
  return {
    flushOp: backend.flushCache ? BLKIF_OP_FLUSH_DISKCACHE : backend.barrier ? BLKIF_OP_WRITE_BARRIER : null,
    discard: backend.discard,
    discardSecure: backend.discard && backend.discardSecure,
    discardGranularity: backend.discardGranularity,
    discardAlignment: backend.discardAlignment,
    persistent: ours.persistent && backend.persistent,
    maxIndirectSegments: indirect,
  };
}

/** The `info` bits decoded. */
export interface DiskFlags {
  readonly readOnly: boolean;
  readonly cdrom: boolean;
  readonly removable: boolean;
}

/** `diskFlags(info)` decodes VDISK_READONLY / VDISK_CDROM / VDISK_REMOVABLE. */
export function diskFlags(info: number): DiskFlags {
  return { readOnly: (info & VDISK_READONLY) !== 0, cdrom: (info & VDISK_CDROM) !== 0, removable: (info & VDISK_REMOVABLE) !== 0 };
}
