// fallocate(2) through koffi: Node has no binding for it, and discard on a raw file is
// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) (as Linux's loop driver does for a
// discard on a file-backed device). Kept here, tiny, until native/ grows the same call.
//
// The call runs on koffi's worker thread so a large punch does not stall the event loop.
// koffi does not carry errno across an asynchronous call, so a failed call is repeated
// synchronously to read errno: punching a hole is idempotent, so the repeat is harmless.
import { constants } from 'node:os';
import koffi from 'koffi';

/** linux/falloc.h FALLOC_FL_KEEP_SIZE: do not change the file size. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
/** linux/falloc.h FALLOC_FL_PUNCH_HOLE: deallocate the range (must be or'd with KEEP_SIZE). */
export const FALLOC_FL_PUNCH_HOLE = 0x02;

/** A failed fallocate(2): `code` is the errno name (EOPNOTSUPP when the filesystem cannot punch holes). */
export class FallocateError extends Error {
  override readonly name = 'FallocateError';
  constructor(message: string, readonly code: string, readonly offset: number, readonly length: number) {
    super(message);
  }
}

type FallocateFn = ((fd: number, mode: number, offset: number, len: number) => number) & {
  async(fd: number, mode: number, offset: number, len: number, cb: (err: unknown, res: number) => void): void;
};

let fn: FallocateFn | undefined;

function binding(): FallocateFn {
  if (fn === undefined) {
    const libc = koffi.load('libc.so.6');
    fn = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as FallocateFn;
  }
  return fn;
}

function errnoName(n: number): string {
  for (const [name, value] of Object.entries(constants.errno)) if (value === n) return name;
  return `errno ${n}`;
}

/** `punchHole(fd, offset, length)` deallocates [offset, offset+length) of `fd`, keeping its size; reads of the range return zeros. */
export function punchHole(fd: number, offset: number, length: number): Promise<void> {
  const f = binding();
  const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  return new Promise((resolve, reject) => {
    f.async(fd, mode, offset, length, (err, res) => {
      if (err !== null && err !== undefined) { reject(err); return; }
      if (res === 0) { resolve(); return; }
      const again = f(fd, mode, offset, length);
      if (again === 0) { resolve(); return; }
      const code = errnoName(koffi.errno());
      reject(new FallocateError(`fallocate(PUNCH_HOLE) of [${offset}, ${offset + length}) failed: ${code}`, code, offset, length));
    });
  });
}
