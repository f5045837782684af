// Argument layouts and request numbers of Linux's grant devices, x86_64 (and every LP64 ABI):
// /dev/xen/gntdev (xen/sys/gntdev.h) and /dev/xen/gntalloc (xen/sys/gntalloc.h). Pure
// encoders and decoders over bytes; test/unit/gnttab-linux-ioctl.test.ts checks them against
// REFERENCE.md and test/conformance/gnttab-linux-abi.test.ts against the headers via gcc.
import { IOC_NONE, ioc } from '../native/ioctl.ts';

/** sizeof of each argument struct as the header declares it (variable arrays counted once). */
export const GNTDEV_SIZES = {
  grant_ref: 8,
  map_grant_ref: 24,
  unmap_grant_ref: 16,
  unmap_notify: 16,
  grant_copy: 16,
  grant_copy_segment: 24,
} as const;
export const GNTALLOC_SIZES = {
  alloc_gref: 24,
  dealloc_gref: 16,
  unmap_notify: 16,
} as const;

/** Request numbers: _IOC(_IOC_NONE, 'G', nr, sizeof(arg)). */
export const IOCTL_GNTDEV_MAP_GRANT_REF = ioc(IOC_NONE, 'G', 0, GNTDEV_SIZES.map_grant_ref);
export const IOCTL_GNTDEV_UNMAP_GRANT_REF = ioc(IOC_NONE, 'G', 1, GNTDEV_SIZES.unmap_grant_ref);
export const IOCTL_GNTDEV_SET_UNMAP_NOTIFY = ioc(IOC_NONE, 'G', 7, GNTDEV_SIZES.unmap_notify);
export const IOCTL_GNTDEV_GRANT_COPY = ioc(IOC_NONE, 'G', 8, GNTDEV_SIZES.grant_copy);
export const IOCTL_GNTALLOC_ALLOC_GREF = ioc(IOC_NONE, 'G', 5, GNTALLOC_SIZES.alloc_gref);
export const IOCTL_GNTALLOC_DEALLOC_GREF = ioc(IOC_NONE, 'G', 6, GNTALLOC_SIZES.dealloc_gref);
export const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY = ioc(IOC_NONE, 'G', 7, GNTALLOC_SIZES.unmap_notify);

/** grant_table.h GNTCOPY_source_gref / GNTCOPY_dest_gref: which side of a copy is a grant. */
export const GNTCOPY_SOURCE_GREF = 1 << 0;
export const GNTCOPY_DEST_GREF = 1 << 1;

/** grant_table.h GNTST_* statuses a grant copy reports per segment, by name. */
export const GNTST_NAMES: Readonly<Record<number, string>> = {
  0: 'GNTST_okay', [-1]: 'GNTST_general_error', [-2]: 'GNTST_bad_domain', [-3]: 'GNTST_bad_gntref',
  [-4]: 'GNTST_bad_handle', [-5]: 'GNTST_bad_virt_addr', [-6]: 'GNTST_bad_dev_addr', [-7]: 'GNTST_no_device_space',
  [-8]: 'GNTST_permission_denied', [-9]: 'GNTST_bad_page', [-10]: 'GNTST_bad_copy_arg', [-11]: 'GNTST_address_too_big',
  [-12]: 'GNTST_eagain', [-13]: 'GNTST_no_space',
};

/** `gntstErrno(status)` is the errno name GnttabError uses for a GNTST_* status (error.ts's table). */
export function gntstErrno(status: number): string {
  switch (status) {
    case -2: return 'ESRCH';
    case -3: case -10: return 'EINVAL';
    case -8: case -1: return 'EPERM';
    case -12: return 'EAGAIN';
    case -13: return 'ENOSPC';
    default: return 'EIO';
  }
}

/** gntalloc.h GNTALLOC_FLAG_WRITABLE. */
export const GNTALLOC_FLAG_WRITABLE = 1;

/**
 * `encodeMapGrantRef(domid, refs)` is struct ioctl_gntdev_map_grant_ref for `refs` of `domid`:
 * count@0 u32, pad@4, index@8 u64 (out), refs[]@16 of {domid u32, ref u32}.
 */
export function encodeMapGrantRef(domid: number, refs: readonly number[]): Uint8Array {
  const b = new Uint8Array(Math.max(GNTDEV_SIZES.map_grant_ref, 16 + 8 * refs.length));
  const v = new DataView(b.buffer);
  v.setUint32(0, refs.length, true);
  for (let i = 0; i < refs.length; i++) {
    v.setUint32(16 + 8 * i, domid, true);
    v.setUint32(20 + 8 * i, refs[i]!, true);
  }
  return b;
}

/** `decodeIndex(arg)` is the u64 `index` the kernel wrote at offset 8 (map_grant_ref, alloc_gref). */
export function decodeIndex(arg: Uint8Array): number {
  const v = new DataView(arg.buffer, arg.byteOffset, arg.byteLength);
  const big = v.getBigUint64(8, true);
  if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`mmap index ${big} beyond 2^53`);
  return Number(big);
}

/** `encodeUnmapGrantRef(index, count)` is struct ioctl_gntdev_unmap_grant_ref: index@0 u64, count@8 u32, pad@12. */
export function encodeUnmapGrantRef(index: number, count: number): Uint8Array {
  const b = new Uint8Array(GNTDEV_SIZES.unmap_grant_ref);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(index), true);
  v.setUint32(8, count, true);
  return b;
}

/** `encodeUnmapNotify(index, action, port)` is struct ioctl_gntdev_unmap_notify (= gntalloc's): index@0 u64, action@8, event_channel_port@12. */
export function encodeUnmapNotify(index: number, action: number, port: number): Uint8Array {
  const b = new Uint8Array(GNTDEV_SIZES.unmap_notify);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(index), true);
  v.setUint32(8, action, true);
  v.setUint32(12, port, true);
  return b;
}

/**
 * `encodeAllocGref(domid, flags, count)` is struct ioctl_gntalloc_alloc_gref: domid@0 u16,
 * flags@2 u16, count@4 u32, index@8 u64 (out), gref_ids[count]@16 u32 (out).
 */
export function encodeAllocGref(domid: number, flags: number, count: number): Uint8Array {
  const b = new Uint8Array(Math.max(GNTALLOC_SIZES.alloc_gref, 16 + 4 * count));
  const v = new DataView(b.buffer);
  v.setUint16(0, domid, true);
  v.setUint16(2, flags, true);
  v.setUint32(4, count, true);
  return b;
}

/** `decodeGrefIds(arg, count)` is the gref_ids the kernel wrote into an alloc_gref argument. */
export function decodeGrefIds(arg: Uint8Array, count: number): number[] {
  const v = new DataView(arg.buffer, arg.byteOffset, arg.byteLength);
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(v.getUint32(16 + 4 * i, true));
  return out;
}

/** `encodeDeallocGref(index, count)` is struct ioctl_gntalloc_dealloc_gref: index@0 u64, count@8 u32. */
export function encodeDeallocGref(index: number, count: number): Uint8Array {
  const b = new Uint8Array(GNTALLOC_SIZES.dealloc_gref);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(index), true);
  v.setUint32(8, count, true);
  return b;
}

/**
 * `encodeGrantCopy(arg, segmentsAddress, count)` fills struct ioctl_gntdev_grant_copy in `arg`
 * (16 bytes): count@0 u32, pad@4, segments@8 pointer.
 */
export function encodeGrantCopy(arg: DataView, segmentsAddress: number, count: number): void {
  arg.setUint32(0, count, true);
  arg.setUint32(4, 0, true);
  arg.setBigUint64(8, BigInt(segmentsAddress), true);
}

/**
 * `encodeGrantCopySegment(v, i, localAddress, domid, ref, offset, len, toForeign)` fills the
 * i-th struct ioctl_gntdev_grant_copy_segment (24 bytes each): source@0 and dest@8 are each
 * either a user address (u64) or {ref u32, offset u16, domid u16}; len@16 u16, flags@18 u16,
 * status@20 s16 (out, zeroed here).
 */
export function encodeGrantCopySegment(
  v: DataView, i: number, localAddress: number, domid: number, ref: number, offset: number, len: number, toForeign: boolean,
): void {
  const at = i * GNTDEV_SIZES.grant_copy_segment;
  const local = toForeign ? at : at + 8;
  const foreign = toForeign ? at + 8 : at;
  // A user address below 2^53 (x86-64 user space is 47 bits): split into two u32 to stay in Number.
  v.setUint32(local, localAddress % 0x100000000, true);
  v.setUint32(local + 4, Math.floor(localAddress / 0x100000000), true);
  v.setUint32(foreign, ref, true);
  v.setUint16(foreign + 4, offset, true);
  v.setUint16(foreign + 6, domid, true);
  v.setUint16(at + 16, len, true);
  v.setUint16(at + 18, toForeign ? GNTCOPY_DEST_GREF : GNTCOPY_SOURCE_GREF, true);
  v.setInt16(at + 20, 0, true);
  v.setUint16(at + 22, 0, true);
}

/** `grantCopyStatus(v, i)` is the GNTST_* status the kernel wrote into segment i. */
export function grantCopyStatus(v: DataView, i: number): number {
  return v.getInt16(i * GNTDEV_SIZES.grant_copy_segment + 20, true);
}
