// Argument layouts and request numbers of Linux's /dev/xen/evtchn (xen/sys/evtchn.h):
// _IOC(_IOC_NONE, 'E', nr, sizeof(arg)); every argument is one or two `unsigned int`s (u32),
// except RESTRICT_DOMID's domid_t (u16). Pure encoders, checked in test/unit and, against the
// header compiled with gcc, in test/conformance.
import { IOC_NONE, ioc } from '../native/ioctl.ts';

/** sizeof of each argument struct. */
export const EVTCHN_SIZES = {
  bind_virq: 4,
  bind_interdomain: 8,
  bind_unbound_port: 4,
  unbind: 4,
  notify: 4,
  restrict_domid: 2,
} as const;

export const IOCTL_EVTCHN_BIND_VIRQ = ioc(IOC_NONE, 'E', 0, EVTCHN_SIZES.bind_virq);
export const IOCTL_EVTCHN_BIND_INTERDOMAIN = ioc(IOC_NONE, 'E', 1, EVTCHN_SIZES.bind_interdomain);
export const IOCTL_EVTCHN_BIND_UNBOUND_PORT = ioc(IOC_NONE, 'E', 2, EVTCHN_SIZES.bind_unbound_port);
export const IOCTL_EVTCHN_UNBIND = ioc(IOC_NONE, 'E', 3, EVTCHN_SIZES.unbind);
export const IOCTL_EVTCHN_NOTIFY = ioc(IOC_NONE, 'E', 4, EVTCHN_SIZES.notify);
export const IOCTL_EVTCHN_RESET = ioc(IOC_NONE, 'E', 5, 0);
export const IOCTL_EVTCHN_RESTRICT_DOMID = ioc(IOC_NONE, 'E', 6, EVTCHN_SIZES.restrict_domid);

/** `encodeU32s(...values)` is an argument made of consecutive little-endian u32 fields. */
export function encodeU32s(...values: number[]): Uint8Array {
  const b = new Uint8Array(4 * values.length);
  const v = new DataView(b.buffer);
  values.forEach((x, i) => v.setUint32(4 * i, x, true));
  return b;
}

/** `encodeBindInterdomain(domid, port)` is struct ioctl_evtchn_bind_interdomain: remote_domain@0, remote_port@4. */
export function encodeBindInterdomain(remoteDomain: number, remotePort: number): Uint8Array {
  return encodeU32s(remoteDomain, remotePort);
}

/** `encodeBindUnboundPort(domid)` is struct ioctl_evtchn_bind_unbound_port: remote_domain@0. */
export function encodeBindUnboundPort(remoteDomain: number): Uint8Array {
  return encodeU32s(remoteDomain);
}

/** `encodePort(port)` is struct ioctl_evtchn_unbind / ioctl_evtchn_notify: port@0. */
export function encodePort(port: number): Uint8Array {
  return encodeU32s(port);
}

/** `encodeRestrictDomid(domid)` is struct ioctl_evtchn_restrict_domid: domid@0 u16. */
export function encodeRestrictDomid(domid: number): Uint8Array {
  const b = new Uint8Array(EVTCHN_SIZES.restrict_domid);
  new DataView(b.buffer).setUint16(0, domid, true);
  return b;
}
