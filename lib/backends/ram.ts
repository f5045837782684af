// A RAM disk: a Buffer served as a block device. Used by tests, benchmarks and `ram:` params.
// Reads and writes copy between the guest's pages and the Buffer; discard zeroes.
import type { BlockBackend, DiscardOptions } from './block-backend.ts';
import { BackendError } from './block-backend.ts';

export interface RamDiskOptions {
  /** Size in bytes, a positive multiple of `sectorSize`. */
  readonly size: number;
  /** Logical sector size: 512 (default) or 4096. */
  readonly sectorSize?: 512 | 4096;
  readonly readonly?: boolean;
  /** Initial contents (copied); the rest is zero. */
  readonly contents?: Uint8Array;
}

/** A RAM disk; `data` is its live contents (tests inspect it). */
export interface RamDisk extends BlockBackend {
  readonly data: Buffer;
  /** `resize(bytes)` grows or shrinks the disk, keeping the common prefix. */
  resize(bytes: number): void;
}

/** `createRamDisk(opts)` is a zero-filled RAM disk of `opts.size` bytes. */
export function createRamDisk(opts: RamDiskOptions): RamDisk {
  const sectorSize = opts.sectorSize ?? 512;
  checkSize(opts.size, sectorSize);
  let data = Buffer.alloc(opts.size);
  if (opts.contents !== undefined) data.set(opts.contents.subarray(0, opts.size));
  const ro = opts.readonly ?? false;
  let closed = false;

  function check(op: 'read' | 'write' | 'discard', offset: number, length: number): void {
    if (closed) throw new BackendError('RAM disk is closed', op, 'EBADF', offset, length);
    if (op !== 'read' && ro) throw new BackendError('RAM disk is read-only', op, 'EROFS', offset, length);
    if (!(offset >= 0 && length >= 0 && offset + length <= data.length)) {
      throw new BackendError(`${op} of [${offset}, ${offset + length}) is outside the ${data.length}-byte disk`, op, 'EINVAL', offset, length);
    }
  }

  const disk: RamDisk = {
    get description() { return `RAM disk (${data.length} bytes)`; },
    sectorSize,
    physicalSectorSize: sectorSize,
    readonly: ro,
    capabilities: { flush: false, discard: true, discardSecure: true, discardGranularity: sectorSize, discardAlignment: 0 },
    get data() { return data; },
    async size() { return data.length; },
    async read(offset, buffers) {
      let len = 0;
      for (const b of buffers) len += b.byteLength;
      check('read', offset, len);
      let pos = offset;
      for (const b of buffers) { data.copy(b, 0, pos, pos + b.byteLength); pos += b.byteLength; }
    },
    async write(offset, buffers) {
      let len = 0;
      for (const b of buffers) len += b.byteLength;
      check('write', offset, len);
      let pos = offset;
      for (const b of buffers) { data.set(b, pos); pos += b.byteLength; }
    },
    async flush() {
      if (closed) throw new BackendError('RAM disk is closed', 'flush', 'EBADF');
    },
    async discard(offset: number, length: number, _opts: DiscardOptions) {
      check('discard', offset, length);
      data.fill(0, offset, offset + length);
    },
    async close() { closed = true; },
    resize(bytes: number) {
      checkSize(bytes, sectorSize);
      const next = Buffer.alloc(bytes);
      data.copy(next, 0, 0, Math.min(bytes, data.length));
      data = next;
    },
  };
  return disk;
}

function checkSize(size: number, sectorSize: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % sectorSize !== 0) {
    throw new BackendError(`RAM disk size ${size} is not a positive multiple of ${sectorSize}`, 'open', 'EINVAL');
  }
}
