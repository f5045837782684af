// evtchn/linux-ioctl.ts: request numbers and argument bytes of /dev/xen/evtchn against the
// layouts REFERENCE.md records from xen/sys/evtchn.h (checked against the header with gcc in
// test/conformance/sim-xen-abi.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  IOCTL_EVTCHN_BIND_INTERDOMAIN, IOCTL_EVTCHN_BIND_UNBOUND_PORT, IOCTL_EVTCHN_NOTIFY, IOCTL_EVTCHN_RESET, IOCTL_EVTCHN_UNBIND,
  encodeBindInterdomain, encodeBindUnboundPort, encodePort,
} from '../../evtchn/linux-ioctl.ts';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

test('request numbers are the ones REFERENCE.md lists', () => {
  assert.equal(IOCTL_EVTCHN_BIND_INTERDOMAIN, 0x00084501);
  assert.equal(IOCTL_EVTCHN_BIND_UNBOUND_PORT, 0x00044502);
  assert.equal(IOCTL_EVTCHN_UNBIND, 0x00044503);
  assert.equal(IOCTL_EVTCHN_NOTIFY, 0x00044504);
  assert.equal(IOCTL_EVTCHN_RESET, 0x00004505);
});

test('BIND_INTERDOMAIN {remote_domain, remote_port}, BIND_UNBOUND_PORT {remote_domain}, UNBIND/NOTIFY {port}: u32 LE', () => {
  assert.equal(hex(encodeBindInterdomain(5, 0x1234)), '05000000' + '34120000');
  assert.equal(hex(encodeBindUnboundPort(0x7fef)), 'ef7f0000');
  assert.equal(hex(encodePort(4095)), 'ff0f0000');
});
