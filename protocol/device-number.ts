// Virtual block device numbers: the `virtual-device` value a toolstack writes for a VBD
// (blkif.h: a uint32_t), which is also the xenstore key of the device directory
// (`device/vbd/<number>`), and the names users write for them (`xvda`, `sdb3`, `hdc2`, `d536p37`).
//
// Encodings, from xen-vbd-interface(7) (docs/man/xen-vbd-interface.7.pandoc, "Concrete encoding"):
//   xvd, disk <= 15 and partition <= 15   202 << 8 | disk << 4 | partition   (compact)
//   xvd, otherwise                        1 << 28 | disk << 8 | partition    (extended;
//                                         disk <= 2^20-1, partition <= 255)
//   sd, disk <= 15, partition <= 15       8 << 8 | disk << 4 | partition
//   hd, disk 0..1, partition <= 63        3 << 8 | disk << 6 | partition
//   hd, disk 2..3, partition <= 63        22 << 8 | (disk - 2) << 6 | partition
//   from 2 << 28 on: reserved; any other value below 1 << 28: deprecated or reserved.
// The extended form is meant only for devices the compact one cannot hold.
//
// Decisions (where the man page, libxl and Linux differ, and why):
// - Names. `xvd`/`sd`/`hd` + disk letters in bijective base 26 (a..z = 0..25, aa = 26, ...)
//   + an optional partition with no leading zero (libxl_device.c device_virtdisk_matches refuses
//   a partition starting with '0', so `xvda0` is rejected too: the whole disk has no number).
//   Letters are a-z only, as libxl decodes them.
//   Limits per bus are the man page's table, which are also libxl's (xvd: disk <= 2^20-1,
//   partition <= 255; sd: disk <= 15, partition <= 15; hd: disk <= 3, partition <= 63).
// - `dNpM` and `dN` name Xen virtual disk N partition M (the man page's examples `d0 d0p0 xvda`,
//   `d536p37 xvdtq37`). libxl parses this form with sscanf("d%ip%i"), which also takes signs,
//   hex and octal (`d010p1` is disk 8, `d-1p0` disk -1) and requires the `p`; we accept exactly
//   decimal without leading zeros, and `dN` alone as the man page lists it.
// - Where libxl's parser is lax we are strict: it reads `xvd`/`sd`/`hd` with no letters as
//   disk -1, and lets strtoul skip a sign or blanks before a partition (`xvda+1`, `xvda 1`).
// - Numbers are encoded as libxl__device_disk_dev_number does: xvd uses 202<<8 when disk <= 15
//   and partition <= 15, the extended 1<<28 form otherwise.
// - The canonical name of a number is its bus's name (`xvd...`, `sd...`, `hd...`), never `dNpM`:
//   51712 -> xvda, 268572709 -> xvdtq37. An extended number whose disk and partition would fit
//   202<<8 (e.g. 1<<28 = 268435456) is still accepted and named (`xvda`), as Linux blkfront
//   (xen-blkfront.c xlvbd_alloc_gendisk) and libxl__devid_to_vdev both decode it; its
//   canonical number is the compact one. (Linux also refuses extended disks >= 4096, whose
//   minor would pass its 20 bits; the spec allows them and so do we.)
// - SCSI beyond disk 15 (Linux majors 65..71 and 128..135, blkif.h XEN_SCSI_DISK1..15_MAJOR)
//   and every other value below 1<<28 are rejected: the man page calls them deprecated, libxl
//   accepts no name for them (sd max index 15), and accepting them would break
//   name <-> number round trips.
// - Number text is canonical decimal (the xenstore form) or 0x-hex (the man page allows hex in
//   config files). A decimal with a leading zero is rejected: libxl's strtoul(..., 0) would read
//   it as octal, a silent surprise.

/** `VbdBus` is the nominal disk type a device number encodes: Xen virtual, SCSI or IDE. */
export type VbdBus = 'xvd' | 'sd' | 'hd';

/** `VbdSpec` is a device as xen-vbd-interface(7) describes it: a bus, a disk and a partition. */
export interface VbdSpec {
  readonly bus: VbdBus;
  readonly disk: number;
  readonly partition: number;
}

/** `VbdDevice` is a spec with its device number (the xenstore key) and canonical name. */
export interface VbdDevice extends VbdSpec {
  readonly number: number;
  readonly name: string;
}

/** `DeviceNumberErrorKind` classifies why a name or number was refused. */
export type DeviceNumberErrorKind =
  | 'empty' // nothing given
  | 'junk' // not a name or number of any form
  | 'negative' // a negative number
  | 'leading-zero' // a number or partition written with a leading zero
  | 'bad-letters' // disk letters missing or outside a-z
  | 'disk-range' // disk over the bus limit
  | 'partition-range' // partition over the bus limit
  | 'reserved' // a number no xen-vbd-interface(7) form assigns
  | 'deprecated'; // a Linux-specific SCSI encoding the man page deprecates

/** `DeviceNumberError` is a refused device name or number, with the input and the reason. */
export class DeviceNumberError extends Error {
  override readonly name = 'DeviceNumberError';
  constructor(
    readonly input: string,
    readonly kind: DeviceNumberErrorKind,
    readonly reason: string,
  ) {
    super(`invalid virtual device '${input}': ${reason}`);
  }
}

/** `XENVBD_MAJOR` is the major of the compact xvd form (202 << 8). */
export const XENVBD_MAJOR = 202;
/** `XEN_SCSI_DISK0_MAJOR` is the major of the sd form (blkif.h). */
export const XEN_SCSI_DISK0_MAJOR = 8;
/** `XEN_IDE0_MAJOR` is the major of hd disks 0..1 (blkif.h). */
export const XEN_IDE0_MAJOR = 3;
/** `XEN_IDE1_MAJOR` is the major of hd disks 2..3 (blkif.h). */
export const XEN_IDE1_MAJOR = 22;
/** `VDEV_EXTENDED` is the flag of the extended xvd form (1 << 28). */
export const VDEV_EXTENDED = 1 << 28;
/** `VDEV_RESERVED` is the first number reserved for future use (2 << 28). */
export const VDEV_RESERVED = 2 << 28;

/** `BUS_LIMITS` are the largest disk and partition each bus can name (xen-vbd-interface(7)). */
export const BUS_LIMITS: Readonly<Record<VbdBus, { readonly maxDisk: number; readonly maxPartition: number }>> = {
  xvd: { maxDisk: (1 << 20) - 1, maxPartition: 255 },
  sd: { maxDisk: 15, maxPartition: 15 },
  hd: { maxDisk: 3, maxPartition: 63 },
};

/** `COMPACT_LIMIT` is the largest disk and partition the compact 202<<8 xvd form holds. */
export const COMPACT_LIMIT = 15;

// Blkif.h XEN_SCSI_DISK1..7_MAJOR (65..71) and XEN_SCSI_DISK8..15_MAJOR (128..135).
function isLinuxScsiMajor(major: number): boolean {
  return (major >= 65 && major <= 71) || (major >= 128 && major <= 135);
}

/** `diskLetters(disk)` is `disk` in bijective base 26: 0 -> a, 25 -> z, 26 -> aa, 701 -> zz. */
export function diskLetters(disk: number): string {
  if (!Number.isSafeInteger(disk) || disk < 0) {
    throw new DeviceNumberError(String(disk), disk < 0 ? 'negative' : 'junk', 'a disk index is a non-negative integer');
  }
  let out = '';
  // Each step peels off the last letter; the `- 1` is what makes the base bijective (no zero digit).
  for (let d = disk; d >= 0; d = Math.floor(d / 26) - 1) out = String.fromCharCode(97 + (d % 26)) + out;
  return out;
}

// Decodes a-z letters as bijective base 26, refusing as soon as the value passes maxDisk so
// that a long string cannot overflow.
function lettersToDisk(input: string, bus: VbdBus, letters: string): number {
  if (letters.length === 0) throw new DeviceNumberError(input, 'bad-letters', `no disk letters after '${bus}'`);
  const max = BUS_LIMITS[bus].maxDisk;
  let n = 0;
  for (let i = 0; i < letters.length; i++) {
    const c = letters.charCodeAt(i);
    if (c < 97 || c > 122) {
      throw new DeviceNumberError(input, 'bad-letters', `disk letters '${letters}' must be a-z`);
    }
    n = n * 26 + (c - 96);
    if (n - 1 > max) {
      const why = bus === 'sd' ? '; Linux SCSI majors 65..71 for further sd disks are deprecated' : '';
      throw new DeviceNumberError(input, 'disk-range', `${bus} disk '${letters}' is over the limit ${max} (${bus}${diskLetters(max)})${why}`);
    }
  }
  return n - 1;
}

// A decimal field with no sign, no leading zero (except "0" itself when allowed) and a bound.
function decimalField(input: string, what: string, text: string, max: number, bus: VbdBus | 'd'): number {
  if (!/^[0-9]+$/.test(text)) throw new DeviceNumberError(input, 'junk', `${what} '${text}' is not a decimal number`);
  if (text.length > 1 && text[0] === '0') {
    throw new DeviceNumberError(input, 'leading-zero', `${what} '${text}' has a leading zero (libxl rejects them)`);
  }
  const v = text.length > 15 ? Infinity : Number(text);
  if (v > max) {
    const kind = what === 'partition' ? 'partition-range' : 'disk-range';
    throw new DeviceNumberError(input, kind, `${what} ${text} is over the ${bus === 'd' ? 'xvd' : bus} limit ${max}`);
  }
  return v;
}

/**
 * `checkSpec(spec, input)` is `spec` when its bus is known and its disk and partition are
 * integers within the bus's limits, or throws a `DeviceNumberError` naming `input`.
 */
export function checkSpec(spec: VbdSpec, input: string = specText(spec)): VbdSpec {
  const limits = (BUS_LIMITS as Record<string, { maxDisk: number; maxPartition: number } | undefined>)[spec.bus];
  if (limits === undefined) throw new DeviceNumberError(input, 'junk', `unknown bus '${String(spec.bus)}' (xvd, sd or hd)`);
  for (const [what, v, max] of [['disk', spec.disk, limits.maxDisk], ['partition', spec.partition, limits.maxPartition]] as const) {
    if (!Number.isSafeInteger(v)) throw new DeviceNumberError(input, 'junk', `${what} ${String(v)} is not an integer`);
    if (v < 0) throw new DeviceNumberError(input, 'negative', `${what} ${v} is negative`);
    if (v > max) {
      throw new DeviceNumberError(input, what === 'disk' ? 'disk-range' : 'partition-range', `${what} ${v} is over the ${spec.bus} limit ${max}`);
    }
  }
  return spec;
}

function specText(spec: VbdSpec): string {
  return `${String(spec.bus)} disk ${String(spec.disk)} partition ${String(spec.partition)}`;
}

/** `deviceNumberOf(spec)` is the device number (virtual-device value) libxl writes for `spec`. */
export function deviceNumberOf(spec: VbdSpec): number {
  const { bus, disk, partition } = checkSpec(spec);
  switch (bus) {
    case 'xvd':
      return disk <= COMPACT_LIMIT && partition <= COMPACT_LIMIT
        ? (XENVBD_MAJOR << 8) | (disk << 4) | partition
        : VDEV_EXTENDED | (disk << 8) | partition;
    case 'sd':
      return (XEN_SCSI_DISK0_MAJOR << 8) | (disk << 4) | partition;
    case 'hd':
      return disk < 2
        ? (XEN_IDE0_MAJOR << 8) | (disk << 6) | partition
        : (XEN_IDE1_MAJOR << 8) | ((disk - 2) << 6) | partition;
  }
}

/** `deviceName(spec)` is the canonical name of `spec`: bus, disk letters, partition unless 0. */
export function deviceName(spec: VbdSpec): string {
  const { bus, disk, partition } = checkSpec(spec);
  return `${bus}${diskLetters(disk)}${partition === 0 ? '' : String(partition)}`;
}

/**
 * `parseDeviceName(name)` is the spec named by `name` in any xen-vbd-interface(7) name form
 * (`xvda`, `xvdtq37`, `sdb3`, `hdc2`, `d536p37`, `d0`), or throws a `DeviceNumberError`.
 */
export function parseDeviceName(name: string): VbdSpec {
  if (name.length === 0) throw new DeviceNumberError(name, 'empty', 'empty device name');
  const bus: VbdBus | undefined = name.startsWith('xvd') ? 'xvd' : name.startsWith('sd') ? 'sd' : name.startsWith('hd') ? 'hd' : undefined;
  if (bus === undefined) {
    const dp = /^d([^p]*)(?:p(.*))?$/.exec(name);
    if (dp === null) {
      throw new DeviceNumberError(name, 'junk', 'not a device name (xvd<letters>[N], sd<letters>[N], hd<letters>[N] or d<N>[p<M>])');
    }
    const disk = decimalField(name, 'disk', dp[1]!, BUS_LIMITS.xvd.maxDisk, 'd');
    const partition = dp[2] === undefined ? 0 : decimalField(name, 'partition', dp[2], BUS_LIMITS.xvd.maxPartition, 'd');
    return { bus: 'xvd', disk, partition };
  }
  const rest = name.slice(bus.length);
  const m = /^(\p{L}*)(.*)$/su.exec(rest)!; // any letter, so that `xvdA` or `xvdé` reads as bad letters
  const disk = lettersToDisk(name, bus, m[1]!);
  const tail = m[2]!;
  if (tail === '') return { bus, disk, partition: 0 };
  if (tail[0] === '0') {
    throw new DeviceNumberError(name, 'leading-zero', `partition '${tail}' has a leading zero (libxl rejects them; the whole disk has no number)`);
  }
  return { bus, disk, partition: decimalField(name, 'partition', tail, BUS_LIMITS[bus].maxPartition, bus) };
}

/**
 * `decodeDeviceNumber(n)` is the device that number `n` encodes (its `number` is `n`), or
 * throws a `DeviceNumberError` for numbers no xen-vbd-interface(7) form assigns.
 */
export function decodeDeviceNumber(n: number): VbdDevice {
  const input = String(n);
  if (!Number.isSafeInteger(n)) throw new DeviceNumberError(input, 'junk', 'a device number is an integer');
  if (n < 0) throw new DeviceNumberError(input, 'negative', 'a device number is not negative');
  if (n >= VDEV_RESERVED) throw new DeviceNumberError(input, 'reserved', 'numbers from 2<<28 on are reserved for future use');
  let spec: VbdSpec;
  if (n >= VDEV_EXTENDED) {
    spec = { bus: 'xvd', disk: (n >>> 8) & 0xfffff, partition: n & 0xff };
  } else {
    const major = n >>> 8;
    const minor = n & 0xff;
    if (major === XENVBD_MAJOR) {
      spec = { bus: 'xvd', disk: minor >>> 4, partition: minor & 15 };
    } else if (major === XEN_SCSI_DISK0_MAJOR) {
      spec = { bus: 'sd', disk: minor >>> 4, partition: minor & 15 };
    } else if (major === XEN_IDE0_MAJOR || major === XEN_IDE1_MAJOR) {
      // Each IDE major holds two disks of 64 minors; minors 128..255 name no disk.
      if (minor >= 128) {
        throw new DeviceNumberError(input, 'reserved', `IDE major ${major} minor ${minor} names no hd disk (two disks of 64 minors per major)`);
      }
      spec = { bus: 'hd', disk: (major === XEN_IDE0_MAJOR ? 0 : 2) + (minor >>> 6), partition: minor & 63 };
    } else if (isLinuxScsiMajor(major)) {
      throw new DeviceNumberError(input, 'deprecated', `Linux SCSI major ${major} (sd disks beyond 15) is deprecated by xen-vbd-interface(7) and has no name libxl accepts`);
    } else {
      throw new DeviceNumberError(input, 'reserved', `major ${major} is no xen-vbd-interface(7) form (values below 1<<28 other than majors 202, 8, 3, 22 are deprecated/reserved)`);
    }
  }
  return { number: n, name: deviceName(spec), ...spec };
}

/** `canonicalName(n)` is the canonical name of device number `n` (51712 -> `xvda`). */
export function canonicalName(n: number): string {
  return decodeDeviceNumber(n).name;
}

/**
 * `parseDeviceNumber(text)` is the device number written as canonical decimal or 0x-hex in
 * `text`, checked to encode a device, or throws a `DeviceNumberError`.
 */
export function parseDeviceNumber(text: string): number {
  if (text.length === 0) throw new DeviceNumberError(text, 'empty', 'empty device number');
  if (/^-[0-9]+$/.test(text)) throw new DeviceNumberError(text, 'negative', 'a device number is not negative');
  let n: number;
  if (/^0[xX][0-9a-fA-F]+$/.test(text)) {
    n = text.length > 15 ? Infinity : Number.parseInt(text.slice(2), 16);
  } else if (/^[0-9]+$/.test(text)) {
    if (text.length > 1 && text[0] === '0') {
      throw new DeviceNumberError(text, 'leading-zero', 'leading zero in a decimal number (libxl would read it as octal)');
    }
    n = text.length > 15 ? Infinity : Number(text);
  } else {
    throw new DeviceNumberError(text, 'junk', 'not a decimal or 0x-hex number');
  }
  if (n >= VDEV_RESERVED) throw new DeviceNumberError(text, 'reserved', 'numbers from 2<<28 on are reserved for future use');
  decodeDeviceNumber(n);
  return n;
}

/** `xenstoreKey(spec)` is the key of the device's xenstore directory: its number in decimal. */
export function xenstoreKey(spec: VbdSpec): string {
  return String(deviceNumberOf(spec));
}

/**
 * `parseXenstoreKey(key)` is the device a `device/vbd/<key>` directory names: `key` must be
 * the canonical decimal form, the only one xen-vbd-interface(7) puts in xenstore.
 */
export function parseXenstoreKey(key: string): VbdDevice {
  if (!/^(0|[1-9][0-9]*)$/.test(key)) {
    if (key.length === 0) throw new DeviceNumberError(key, 'empty', 'empty xenstore key');
    throw new DeviceNumberError(key, key[0] === '0' ? 'leading-zero' : key[0] === '-' ? 'negative' : 'junk', 'a vbd xenstore key is a canonical decimal number');
  }
  return decodeDeviceNumber(parseDeviceNumber(key));
}

/** `isNumberInput(input)` is whether `resolveDevice` reads `input` as a number (it starts with a digit or '-'). */
export function isNumberInput(input: string): boolean {
  return /^[-0-9]/.test(input);
}

/**
 * `resolveDevice(input)` is the device `input` denotes, read as a number when
 * `isNumberInput(input)` and as a name otherwise; a name resolves to its canonical number and name.
 */
export function resolveDevice(input: string): VbdDevice {
  if (isNumberInput(input)) return decodeDeviceNumber(parseDeviceNumber(input));
  const spec = parseDeviceName(input);
  return { number: deviceNumberOf(spec), name: deviceName(spec), bus: spec.bus, disk: spec.disk, partition: spec.partition };
}
