// ioctl request numbers and the call itself. Encoding per asm-generic/ioctl.h (x86_64, arm64):
// bits 0-7 nr, 8-15 type, 16-29 argument size, 30-31 direction (_IOC_NONE 0, _IOC_WRITE 1,
// _IOC_READ 2). Xen's device headers (xen/sys/gntdev.h, gntalloc.h, evtchn.h) declare every
// request with _IOC_NONE and the size of their argument struct.
import { fail, libc } from './libc.ts';

/** asm-generic/ioctl.h directions. */
export const IOC_NONE = 0;
export const IOC_WRITE = 1;
export const IOC_READ = 2;

/** `ioc(dir, type, nr, size)` is the request number _IOC(dir, type, nr, size) builds. */
export function ioc(dir: number, type: string, nr: number, size: number): number {
  if (type.length !== 1 || nr < 0 || nr > 0xff || size < 0 || size >= 1 << 14 || dir < 0 || dir > 3) {
    throw new RangeError(`_IOC(${dir}, '${type}', ${nr}, ${size}) out of range`);
  }
  return ((dir << 30) | (size << 16) | (type.charCodeAt(0) << 8) | nr) >>> 0;
}

/**
 * `ioctl(fd, request, arg, name)` performs the call and is its non-negative result; throws
 * NativeError('ioctl', errno, ..., name) on failure.
 */
export function ioctl(fd: number, request: number, arg: Uint8Array | null, name: string): number {
  const r = libc.ioctl(fd, request, arg);
  if (r < 0) throw fail('ioctl', name);
  return r;
}
