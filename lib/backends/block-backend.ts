// What blkback serves: a small block-device interface that a raw file, a RAM disk and later
// formats (qcow2, VHD) or network disks (NBD) implement. blkback validates every request
// against the size, read-only flag and capabilities before calling it, so an implementation
// may trust its arguments (offsets and lengths are multiples of `sectorSize`, in range).
//
// Offsets and lengths are in bytes (JavaScript numbers: exact below 2^53 = 8 PiB). I/O goes
// straight into the caller's buffers — for blkback these are the guest's mapped pages — so an
// implementation must not keep them after its promise settles.

/** What a backing store can do beyond read and write; blkback advertises features from it. */
export interface BlockBackendCapabilities {
  /** A volatile cache that `flush()` makes durable: feature-flush-cache and feature-barrier. */
  readonly flush: boolean;
  /** `discard()` deallocates and later reads return zeros: feature-discard. */
  readonly discard: boolean;
  /** `discard(..., {secure: true})` erases the data (blkif.h discard-secure). */
  readonly discardSecure: boolean;
  /** blkif.h discard-granularity: the allocation unit in bytes a discard can free (0 = sector). */
  readonly discardGranularity: number;
  /** blkif.h discard-alignment: byte offset of the first whole granule. */
  readonly discardAlignment: number;
}

export interface DiscardOptions {
  /** Erase rather than deallocate (BLKIF_DISCARD_SECURE). */
  readonly secure: boolean;
}

/** A disk blkback can serve. */
export interface BlockBackend {
  /** Human description, e.g. `raw file /srv/disk.img (O_DIRECT)`. */
  readonly description: string;
  /** Logical sector size in bytes (blkif sector-size): 512 or 4096. */
  readonly sectorSize: number;
  /** Physical sector size in bytes (blkif physical-sector-size), a multiple of sectorSize. */
  readonly physicalSectorSize: number;
  /** No writes or discards are accepted. */
  readonly readonly: boolean;
  readonly capabilities: BlockBackendCapabilities;
  /** `size()` is the current size in bytes, a multiple of `sectorSize`; it changes on resize. */
  size(): Promise<number>;
  /** `read(offset, buffers)` fills `buffers` in order from byte `offset`. */
  read(offset: number, buffers: readonly Uint8Array[]): Promise<void>;
  /** `write(offset, buffers)` stores `buffers` in order at byte `offset`. */
  write(offset: number, buffers: readonly Uint8Array[]): Promise<void>;
  /** `flush()` makes every write that completed before the call durable. */
  flush(): Promise<void>;
  /** `discard(offset, length, opts)` deallocates (or securely erases) the range; it then reads as zeros. */
  discard(offset: number, length: number, opts: DiscardOptions): Promise<void>;
  /** `close()` releases the backing; no call may follow. */
  close(): Promise<void>;
  /**
   * `registerMemory(mem)`, where the backing can, has memory that I/O will use again and again
   * (blkback's persistently mapped grants) made cheaper to use: raw files on io_uring pin it
   * once instead of at every read and write. The result ends the registration and must be
   * called before `mem` is unmapped; undefined when the backing does not or cannot (reads and
   * writes on `mem` work the same either way).
   */
  registerMemory?(mem: Uint8Array): (() => void) | undefined;
}

/** A backing-store failure: `op` and the byte range that failed, with the OS error code if any. */
export class BackendError extends Error {
  override readonly name = 'BackendError';
  constructor(
    message: string,
    readonly op: 'open' | 'read' | 'write' | 'flush' | 'discard' | 'size' | 'close',
    readonly code: string,
    readonly offset?: number,
    readonly length?: number,
  ) {
    super(message);
  }
}

/** `totalLength(buffers)` is the sum of the buffers' lengths. */
export function totalLength(buffers: readonly Uint8Array[]): number {
  let n = 0;
  for (let i = 0; i < buffers.length; i++) n += buffers[i]!.byteLength;
  return n;
}
