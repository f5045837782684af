// Errors of the blkfront Block API and handshake. One class, discriminated by `code`, so a
// caller can write `e instanceof BlkfrontError && e.code === 'EROFS'` (Mirage_block's
// `Disconnected` / `Is_read_only` / `Unimplemented` map to ENODEV / EROFS / EOPNOTSUPP).

/**
 * - `EIO`: the backend answered BLKIF_RSP_ERROR (or a status blkif.h does not define).
 * - `EOPNOTSUPP`: the backend does not offer the operation (feature key absent, or it answered
 *   BLKIF_RSP_EOPNOTSUPP).
 * - `EROFS`: a write or discard on a disk whose `info` has VDISK_READONLY.
 * - `EINVAL`: a bad argument (buffer length not a multiple of the sector size, range outside
 *   the disk).
 * - `EPROTO`: the backend broke blkif.h or wrote garbage in XenStore; `key`/`field` and
 *   `value` name what. A ring protocol error disables the device, as Linux blkfront does
 *   (BLKIF_STATE_ERROR).
 * - `ENODEV`: the device is gone (hot-unplugged, disconnected, or never connected).
 * - `ETIMEDOUT`: the backend did not reach the awaited state in time.
 * - `ABORT_ERR`: the caller's AbortSignal fired.
 * - `ENOMEM`: no grant entries or memory left for an I/O buffer.
 * - `EBUSY`: an I/O buffer freed while a request on a ring still uses it.
 */
export type BlkfrontErrorCode = 'EIO' | 'EOPNOTSUPP' | 'EROFS' | 'EINVAL' | 'EPROTO' | 'ENODEV' | 'ETIMEDOUT' | 'ABORT_ERR' | 'ENOMEM' | 'EBUSY';

/** `BlkfrontError` is a failed blkfront operation; `field`/`value` name the input or peer data at fault. */
export class BlkfrontError extends Error {
  override readonly name = 'BlkfrontError';
  constructor(
    readonly code: BlkfrontErrorCode,
    message: string,
    /** The XenStore key (full path) or blkif field that caused the error, when there is one. */
    readonly field?: string,
    /** The offending value as seen (undefined when a key was missing). */
    readonly value?: string | number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** `isBlkfrontError(e, code?)` is whether `e` is a BlkfrontError (with `code`, when given). */
export function isBlkfrontError(e: unknown, code?: BlkfrontErrorCode): e is BlkfrontError {
  return e instanceof BlkfrontError && (code === undefined || e.code === code);
}
