// Device numbers against xen-vbd-interface(7) (Xen docs/man/xen-vbd-interface.7.pandoc) and
// the behaviour of libxl 4.17 (libxl_device.c: libxl__device_disk_dev_number, libxl__devid_to_vdev).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  BUS_LIMITS, DeviceNumberError, canonicalName, decodeDeviceNumber, deviceName, deviceNumberOf, diskLetters,
  parseDeviceName, parseDeviceNumber, parseXenstoreKey, resolveDevice, xenstoreKey,
} from '../../protocol/device-number.ts';
import type { DeviceNumberErrorKind, VbdBus, VbdSpec } from '../../protocol/device-number.ts';

// The man page's "Concrete encoding" table, written out row by row as the spec states it.
function specEncoding(bus: VbdBus, disk: number, part: number): number {
  if (bus === 'sd') return (8 << 8) | (disk << 4) | part;
  if (bus === 'hd') return disk <= 1 ? (3 << 8) | (disk << 6) | part : (22 << 8) | ((disk - 2) << 6) | part;
  return disk <= 15 && part <= 15 ? (202 << 8) | (disk << 4) | part : (1 << 28) | (disk << 8) | part;
}

// Which numbers the table assigns: 1<<28 .. (2<<28)-1, majors 202 and 8 (any minor), majors 3
// and 22 with their two 64-minor disks; from 2<<28 on and everything else is reserved.
function assignedBySpec(n: number): boolean {
  if (n >= 2 << 28) return false;
  if (n >= 1 << 28) return true;
  const major = n >> 8;
  const minor = n & 0xff;
  return major === 202 || major === 8 || ((major === 3 || major === 22) && minor < 128);
}

function rejects(fn: () => unknown, input: string, kind: DeviceNumberErrorKind): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof DeviceNumberError, `expected DeviceNumberError, got ${String(err)}`);
    assert.equal(err.input, input);
    assert.equal(err.kind, kind, `${input}: ${err.reason}`);
    assert.ok(err.reason.length > 0);
    assert.ok(err.message.includes(`'${input}'`) && err.message.includes(err.reason), err.message);
    return true;
  });
}

test('the man page examples (Configuration file syntax) decode and encode as its table says', () => {
  // The man page's example table: d0 = d0p0 = xvda (xvd disk 0, whole disk); d1p2 = xvdb2;
  // d536p37 = xvdtq37; sdb3 is SCSI disk 1 partition 3; hdc2 is IDE disk 2 partition 2.
  const rows: [string[], VbdBus, number, number, string][] = [
    [['d0', 'd0p0', 'xvda'], 'xvd', 0, 0, 'xvda'],
    [['d1p2', 'xvdb2'], 'xvd', 1, 2, 'xvdb2'],
    [['d536p37', 'xvdtq37'], 'xvd', 536, 37, 'xvdtq37'],
    [['sdb3'], 'sd', 1, 3, 'sdb3'],
    [['hdc2'], 'hd', 2, 2, 'hdc2'],
  ];
  for (const [names, bus, disk, partition, canonical] of rows) {
    const number = specEncoding(bus, disk, partition);
    for (const name of names) {
      assert.deepEqual(parseDeviceName(name), { bus, disk, partition }, name);
      assert.deepEqual(resolveDevice(name), { number, name: canonical, bus, disk, partition }, name);
    }
    assert.deepEqual(decodeDeviceNumber(number), { number, name: canonical, bus, disk, partition });
  }
  // Literal values: REFERENCE.md (51712 = xvda, 51728 = xvdb) and issue 2 (d536p37 = 268572709).
  assert.equal(deviceNumberOf(parseDeviceName('xvda')), 51712);
  assert.equal(deviceNumberOf(parseDeviceName('xvdb')), 51728);
  assert.equal(canonicalName(51728), 'xvdb');
  assert.equal(deviceNumberOf(parseDeviceName('d536p37')), 268572709);
  assert.equal(canonicalName(268572709), 'xvdtq37');
  assert.equal(xenstoreKey({ bus: 'xvd', disk: 0, partition: 0 }), '51712');
});

test('numbers observed from libxl 4.17 (libxl__device_disk_dev_number, Debian libxenlight.a)', () => {
  // Run at development time against the real library; each is also the man page's formula.
  const observed: [string, number, number, number][] = [
    ['hda', 768, 0, 0], ['hdb', 832, 1, 0], ['hdb63', 895, 1, 63], ['hdc', 5632, 2, 0], ['hdd63', 5759, 3, 63],
    ['sda', 2048, 0, 0], ['sdp15', 2303, 15, 15], ['xvdzz', 268614912, 701, 0], ['xvdaaa', 268615168, 702, 0],
    ['xvdzzz', 273114368, 18277, 0], ['xvdaaaa', 273114624, 18278, 0], ['xvdzzzz', 390100224, 475253, 0],
    ['xvdaaaaa', 390100480, 475254, 0],
  ];
  for (const [name, number, disk, partition] of observed) {
    const spec = parseDeviceName(name);
    assert.deepEqual([spec.disk, spec.partition], [disk, partition], name);
    assert.equal(deviceNumberOf(spec), number, name);
    assert.equal(number, specEncoding(spec.bus, disk, partition), name);
    assert.equal(canonicalName(number), name);
  }
});

test('disk letters are bijective base 26 as libxl__devid_to_vdev names them', () => {
  // libxl__devid_to_vdev((1<<28) | disk<<8 | 255) gave xvd<letters>255 for these disks.
  const observed: [number, string][] = [
    [0, 'a'], [25, 'z'], [26, 'aa'], [27, 'ab'], [51, 'az'], [52, 'ba'], [701, 'zz'], [702, 'aaa'],
    [18277, 'zzz'], [18278, 'aaaa'], [475253, 'zzzz'], [475254, 'aaaaa'], [(1 << 20) - 1, 'bgqcv'],
  ];
  for (const [disk, letters] of observed) {
    assert.equal(diskLetters(disk), letters);
    assert.equal(canonicalName((1 << 28) | (disk << 8) | 255), `xvd${letters}255`);
    assert.equal(parseDeviceName(`xvd${letters}255`).disk, disk);
  }
});

test('the compact/extended boundary and the limits of each bus', () => {
  assert.equal(deviceNumberOf(parseDeviceName('xvdp15')), (202 << 8) | (15 << 4) | 15);
  assert.equal(deviceNumberOf(parseDeviceName('xvdp16')), (1 << 28) | (15 << 8) | 16);
  assert.equal(deviceNumberOf(parseDeviceName('xvdq')), (1 << 28) | (16 << 8));
  assert.equal(deviceNumberOf(parseDeviceName('xvda255')), (1 << 28) | 255);
  assert.equal(deviceNumberOf(parseDeviceName('xvdbgqcv255')), (1 << 29) - 1);
  assert.equal(deviceNumberOf(parseDeviceName('d1048575p255')), (1 << 29) - 1);
  assert.equal(deviceNumberOf(parseDeviceName('hdd63')), (22 << 8) | (1 << 6) | 63);
  assert.deepEqual(BUS_LIMITS, {
    xvd: { maxDisk: (1 << 20) - 1, maxPartition: 255 }, sd: { maxDisk: 15, maxPartition: 15 }, hd: { maxDisk: 3, maxPartition: 63 },
  });
});

test('an extended number for a compact-sized device decodes (as Linux and libxl do) to the compact name', () => {
  // libxl__devid_to_vdev(1<<28) gave xvda; the man page reserves 1<<28 for devices 202<<8 cannot hold.
  const d = decodeDeviceNumber(1 << 28);
  assert.deepEqual(d, { number: 1 << 28, name: 'xvda', bus: 'xvd', disk: 0, partition: 0 });
  assert.equal(deviceNumberOf(d), 51712);
  assert.equal(decodeDeviceNumber((1 << 28) | (3 << 8) | 15).name, 'xvdd15');
});

test('exhaustively below 2^16, exactly the numbers the spec table assigns decode, and round-trip', () => {
  let assigned = 0;
  for (let n = 0; n < 1 << 16; n++) {
    if (assignedBySpec(n)) {
      assigned++;
      const d = decodeDeviceNumber(n);
      assert.equal(deviceNumberOf(d), n);
      assert.equal(specEncoding(d.bus, d.disk, d.partition), n);
      assert.equal(deviceNumberOf(parseDeviceName(d.name)), n);
    } else {
      assert.throws(() => decodeDeviceNumber(n), DeviceNumberError, String(n));
    }
  }
  // 256 xvd (202) + 256 sd (8) + 2 x 128 hd (3, 22).
  assert.equal(assigned, 768);
});

test('names are refused with the reason', () => {
  const cases: [string, DeviceNumberErrorKind][] = [
    ['', 'empty'], ['foo', 'junk'], ['vda', 'junk'], ['XVDA', 'junk'], ['d', 'junk'], ['dp1', 'junk'], ['d1p', 'junk'],
    ['d-1p0', 'junk'], ['d0x10p1', 'junk'], ['d+1p2', 'junk'], ['d1p2p3', 'junk'], ['d 1', 'junk'],
    ['xvd', 'bad-letters'], ['xvd1', 'bad-letters'], ['sd', 'bad-letters'], ['hd', 'bad-letters'], ['xvdA', 'bad-letters'], ['sdB2', 'bad-letters'],
    ['xvda0', 'leading-zero'], ['xvda01', 'leading-zero'], ['hda00', 'leading-zero'], ['d010p1', 'leading-zero'], ['d1p010', 'leading-zero'], ['d00', 'leading-zero'],
    ['xvda+1', 'junk'], ['xvda-1', 'junk'], ['xvda 1', 'junk'], ['xvda1x', 'junk'], ['xvda1.5', 'junk'], ['xvdé', 'bad-letters'], ['xvdаб', 'bad-letters'],
    ['xvda256', 'partition-range'], ['xvda99999999999999999999', 'partition-range'], ['sda16', 'partition-range'], ['hda64', 'partition-range'], ['d0p256', 'partition-range'],
    ['xvdbgqcw', 'disk-range'], ['xvdzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz', 'disk-range'], ['sdq', 'disk-range'], ['hde', 'disk-range'], ['d1048576', 'disk-range'],
  ];
  for (const [name, kind] of cases) rejects(() => parseDeviceName(name), name, kind);
});

test('numbers are refused with the reason', () => {
  const cases: [string, DeviceNumberErrorKind][] = [
    ['', 'empty'], ['-5', 'negative'], ['-0', 'negative'], ['012', 'leading-zero'], ['051712', 'leading-zero'],
    ['1x', 'junk'], ['0x', 'junk'], ['51712 ', 'junk'], ['1.5', 'junk'], ['1e5', 'junk'], ['0b1', 'junk'],
    ['0', 'reserved'], ['1', 'reserved'], [String(2 << 28), 'reserved'], ['99999999999999999999', 'reserved'], ['0x20000000', 'reserved'],
    [String(203 << 8), 'reserved'], [String((3 << 8) | 128), 'reserved'], [String((22 << 8) | 255), 'reserved'],
    [String(65 << 8), 'deprecated'], [String((71 << 8) | 255), 'deprecated'], [String((128 << 8) | 5), 'deprecated'], [String(135 << 8), 'deprecated'],
  ];
  for (const [text, kind] of cases) {
    rejects(() => parseDeviceNumber(text), text, kind);
    if (text !== '') rejects(() => resolveDevice(text), text, kind);
  }
  rejects(() => resolveDevice(''), '', 'empty');
  rejects(() => decodeDeviceNumber(-1), '-1', 'negative');
  rejects(() => decodeDeviceNumber(1.5), '1.5', 'junk');
  rejects(() => decodeDeviceNumber(Number.NaN), 'NaN', 'junk');
  rejects(() => decodeDeviceNumber(Infinity), 'Infinity', 'junk');
  assert.equal(parseDeviceNumber('0xca00'), 51712);
  assert.equal(parseDeviceNumber('0XCA00'), 51712);
  // The xenstore key is canonical decimal only.
  assert.equal(parseXenstoreKey('51712').name, 'xvda');
  rejects(() => parseXenstoreKey('0xca00'), '0xca00', 'leading-zero');
  rejects(() => parseXenstoreKey('051712'), '051712', 'leading-zero');
  rejects(() => parseXenstoreKey('-1'), '-1', 'negative');
  rejects(() => parseXenstoreKey('xvda'), 'xvda', 'junk');
  rejects(() => parseXenstoreKey(''), '', 'empty');
});

test('specs outside a bus are refused', () => {
  const bad: [VbdSpec, DeviceNumberErrorKind][] = [
    [{ bus: 'xvd', disk: -1, partition: 0 }, 'negative'], [{ bus: 'xvd', disk: 0, partition: -1 }, 'negative'],
    [{ bus: 'xvd', disk: 1 << 20, partition: 0 }, 'disk-range'], [{ bus: 'xvd', disk: 0, partition: 256 }, 'partition-range'],
    [{ bus: 'sd', disk: 16, partition: 0 }, 'disk-range'], [{ bus: 'sd', disk: 0, partition: 16 }, 'partition-range'],
    [{ bus: 'hd', disk: 4, partition: 0 }, 'disk-range'], [{ bus: 'hd', disk: 0, partition: 64 }, 'partition-range'],
    [{ bus: 'xvd', disk: 1.5, partition: 0 }, 'junk'], [{ bus: 'nvme' as VbdBus, disk: 0, partition: 0 }, 'junk'],
  ];
  for (const [spec, kind] of bad) {
    const input = `${spec.bus} disk ${spec.disk} partition ${spec.partition}`;
    rejects(() => deviceNumberOf(spec), input, kind);
    rejects(() => deviceName(spec), input, kind);
  }
  rejects(() => diskLetters(-1), '-1', 'negative');
});

const BUSES: VbdBus[] = ['xvd', 'sd', 'hd'];
const specArb: fc.Arbitrary<VbdSpec> = fc.constantFrom(...BUSES).chain((bus) =>
  fc.record({
    bus: fc.constant(bus),
    disk: fc.oneof(fc.integer({ min: 0, max: Math.min(40, BUS_LIMITS[bus].maxDisk) }), fc.integer({ min: 0, max: BUS_LIMITS[bus].maxDisk })),
    partition: fc.integer({ min: 0, max: BUS_LIMITS[bus].maxPartition }),
  }).map((r) => ({ bus: r.bus, disk: r.disk, partition: r.partition })));

test('property: spec -> name -> spec and spec -> number -> device over every valid space', () => {
  fc.assert(fc.property(specArb, (spec) => {
    const name = deviceName(spec);
    const number = deviceNumberOf(spec);
    assert.equal(number, specEncoding(spec.bus, spec.disk, spec.partition));
    assert.deepEqual(parseDeviceName(name), spec);
    assert.deepEqual(decodeDeviceNumber(number), { number, name, ...spec });
    assert.equal(canonicalName(number), name);
    assert.deepEqual(resolveDevice(name), { number, name, ...spec });
    assert.deepEqual(resolveDevice(String(number)), { number, name, ...spec });
    assert.deepEqual(parseXenstoreKey(xenstoreKey(spec)), { number, name, ...spec });
    if (spec.bus === 'xvd') {
      assert.deepEqual(parseDeviceName(`d${spec.disk}p${spec.partition}`), spec);
      if (spec.partition === 0) assert.deepEqual(parseDeviceName(`d${spec.disk}`), spec);
    }
  }), { numRuns: 2000 });
});

test('property: every number decodes exactly when the spec assigns it, and number -> device -> number', () => {
  const numberArb = fc.oneof(
    fc.integer({ min: 0, max: (1 << 16) - 1 }),
    fc.integer({ min: 0, max: (2 << 28) - 1 }),
    fc.integer({ min: 1 << 28, max: (2 << 28) - 1 }),
    fc.integer({ min: (1 << 28) - 256, max: (1 << 28) + 4096 }),
    fc.integer({ min: 0, max: 0xffffffff }),
  );
  fc.assert(fc.property(numberArb, (n) => {
    if (!assignedBySpec(n)) {
      assert.throws(() => decodeDeviceNumber(n), DeviceNumberError);
      assert.throws(() => parseDeviceNumber(String(n)), DeviceNumberError);
      return;
    }
    const d = decodeDeviceNumber(n);
    assert.equal(d.number, n);
    assert.equal(parseDeviceNumber(String(n)), n);
    assert.equal(parseDeviceNumber(`0x${n.toString(16)}`), n);
    const back = deviceNumberOf(d);
    const compactSized = d.bus === 'xvd' && d.disk <= 15 && d.partition <= 15;
    // The one many-to-one case: an extended number for a compact-sized disk canonicalises to 202<<8.
    assert.equal(back, n >= 1 << 28 && compactSized ? (202 << 8) | (d.disk << 4) | d.partition : n);
    assert.equal(deviceNumberOf(parseDeviceName(d.name)), back);
  }), { numRuns: 3000 });
});

test('property: out-of-limit disks and partitions, leading zeros, bad letters and negatives are refused', () => {
  const busArb = fc.constantFrom(...BUSES);
  fc.assert(fc.property(busArb, fc.integer({ min: 0, max: 2 ** 40 }), (bus, extra) => {
    const disk = BUS_LIMITS[bus].maxDisk + 1 + extra;
    const name = `${bus}${diskLetters(disk)}`;
    rejects(() => parseDeviceName(name), name, 'disk-range');
    if (bus === 'xvd') rejects(() => parseDeviceName(`d${disk}`), `d${disk}`, 'disk-range');
  }));
  fc.assert(fc.property(specArb, fc.integer({ min: 1, max: 1e9 }), (spec, extra) => {
    const p = BUS_LIMITS[spec.bus].maxPartition + extra;
    const name = `${spec.bus}${diskLetters(spec.disk)}${p}`;
    rejects(() => parseDeviceName(name), name, 'partition-range');
  }));
  fc.assert(fc.property(specArb, fc.integer({ min: 0, max: 300 }), (spec, p) => {
    const name = `${spec.bus}${diskLetters(spec.disk)}0${p}`;
    rejects(() => parseDeviceName(name), name, 'leading-zero');
  }));
  fc.assert(fc.property(specArb, fc.nat(), fc.constantFrom(...'ABCXYZ'), (spec, at, upper) => {
    const letters = diskLetters(spec.disk);
    const i = at % (letters.length + 1);
    const name = `${spec.bus}${letters.slice(0, i)}${upper}${letters.slice(i)}`;
    rejects(() => parseDeviceName(name), name, 'bad-letters');
  }));
  fc.assert(fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (n) => {
    rejects(() => resolveDevice(`-${n}`), `-${n}`, 'negative');
  }));
});

test('property: arbitrary text either resolves consistently or is refused with a DeviceNumberError', () => {
  const textArb = fc.oneof(
    fc.string({ maxLength: 12 }),
    fc.tuple(fc.constantFrom('xvd', 'sd', 'hd', 'd', ''), fc.stringMatching(/^[a-z0-9p]{0,6}$/)).map(([a, b]) => a + b),
  );
  fc.assert(fc.property(textArb, (text) => {
    let d;
    try {
      d = resolveDevice(text);
    } catch (err) {
      assert.ok(err instanceof DeviceNumberError, String(err));
      assert.equal(err.input, text);
      return;
    }
    const again = resolveDevice(d.name);
    assert.deepEqual([again.bus, again.disk, again.partition], [d.bus, d.disk, d.partition]);
    assert.equal(again.name, d.name);
  }), { numRuns: 3000 });
});
