// Event channels through Linux's /dev/xen/evtchn (xen/sys/evtchn.h, drivers/xen/evtchn.c).
// The device is pollable: when a bound port fires, the driver masks it and queues its number;
// read() returns the queued ports (u32 each); write() of port numbers unmasks them. Binding,
// notifying and unbinding are ioctls. We watch the fd through the event loop (uv_poll), read
// every queued port, unmask them all in one write, then run the handlers — so a port is always
// unmasked before its handler runs and an event arriving during the handler queues it again.
import type { EventChannel, EventChannels } from './evtchn.ts';
import { EvtchnError, type EvtchnOp } from './error.ts';
import {
  IOCTL_EVTCHN_BIND_INTERDOMAIN, IOCTL_EVTCHN_BIND_UNBOUND_PORT, IOCTL_EVTCHN_NOTIFY, IOCTL_EVTCHN_UNBIND,
  encodeBindInterdomain, encodeBindUnboundPort, encodePort,
} from './linux-ioctl.ts';
import { FdWatch } from '../native/fd-watch.ts';
import { NativeError, O, errno, errnoName, fail, libc } from '../native/libc.ts';
import { ioctl } from '../native/ioctl.ts';
import { addHandler, dispatchEvent } from './dispatch.ts';

const EAGAIN = 11;
const EINTR = 4;

function asEvtchn(e: unknown, op: EvtchnOp, domid?: number, port?: number): EvtchnError {
  if (e instanceof EvtchnError) return e;
  if (e instanceof NativeError) return new EvtchnError(e.code, op, domid, port, e.message);
  return new EvtchnError('EIO', op, domid, port, String(e));
}

class LinuxEventChannel implements EventChannel {
  readonly handlers: (() => void)[] = [];
  undelivered = false;
  open = true;
  private readonly arg: Uint8Array;

  constructor(private readonly owner: LinuxEventChannels, readonly localPort: number, readonly remoteDomid: number) {
    this.arg = encodePort(localPort);
  }

  notify(): void {
    if (!this.open) throw new EvtchnError('EINVAL', 'notify', this.remoteDomid, this.localPort, 'channel is closed');
    try {
      ioctl(this.owner.fd, IOCTL_EVTCHN_NOTIFY, this.arg, 'IOCTL_EVTCHN_NOTIFY');
    } catch (e) {
      throw asEvtchn(e, 'notify', this.remoteDomid, this.localPort);
    }
  }

  onEvent(handler: () => void): void {
    if (!this.open) throw new EvtchnError('EINVAL', 'read', this.remoteDomid, this.localPort, 'channel is closed');
    addHandler(this, handler);
  }

  close(): void {
    this.owner.unbind(this);
  }
}

/** Event channels on real Xen. */
export class LinuxEventChannels implements EventChannels {
  readonly fd: number;
  private readonly watch: FdWatch;
  private readonly channels = new Map<number, LinuxEventChannel>();
  private readonly rbuf = new Uint8Array(4 * 1024);
  private readonly rview = new DataView(this.rbuf.buffer);
  private closed = false;

  /** `new LinuxEventChannels(device)` opens `device` (EvtchnError ENODEV when absent). */
  constructor(device = '/dev/xen/evtchn') {
    const fd = libc.open(device, O.RDWR | O.NONBLOCK | O.CLOEXEC, 0);
    if (fd < 0) {
      const e = fail('open', device);
      throw new EvtchnError(e.code === 'ENOENT' ? 'ENODEV' : e.code, 'open', undefined, undefined, e.message);
    }
    this.fd = fd;
    this.watch = new FdWatch(fd, () => this.onReadable());
    this.watch.unref();
  }

  allocUnbound(remoteDomid: number): EventChannel {
    try {
      const port = ioctl(this.fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT, encodeBindUnboundPort(remoteDomid), 'IOCTL_EVTCHN_BIND_UNBOUND_PORT');
      return this.adopt(port, remoteDomid);
    } catch (e) {
      throw asEvtchn(e, 'allocUnbound', remoteDomid);
    }
  }

  bindInterdomain(remoteDomid: number, remotePort: number): EventChannel {
    try {
      const port = ioctl(this.fd, IOCTL_EVTCHN_BIND_INTERDOMAIN, encodeBindInterdomain(remoteDomid, remotePort), 'IOCTL_EVTCHN_BIND_INTERDOMAIN');
      return this.adopt(port, remoteDomid);
    } catch (e) {
      throw asEvtchn(e, 'bindInterdomain', remoteDomid, remotePort);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const ch of [...this.channels.values()]) {
      try { this.unbind(ch); } catch { /* closing the fd unbinds the rest */ }
    }
    this.watch.close();
    libc.close(this.fd);
  }

  /** `unbind(ch)` is IOCTL_EVTCHN_UNBIND. */
  unbind(ch: LinuxEventChannel): void {
    if (!ch.open) return;
    ch.open = false;
    this.channels.delete(ch.localPort);
    if (this.channels.size === 0) this.watch.unref();
    try {
      ioctl(this.fd, IOCTL_EVTCHN_UNBIND, encodePort(ch.localPort), 'IOCTL_EVTCHN_UNBIND');
    } catch (e) {
      throw asEvtchn(e, 'unbind', ch.remoteDomid, ch.localPort);
    }
  }

  /** `dispatch(ch)` delivers an event to `ch` (see dispatch.ts). */
  dispatch(ch: LinuxEventChannel): void {
    dispatchEvent(ch);
  }

  private adopt(port: number, remoteDomid: number): EventChannel {
    const ch = new LinuxEventChannel(this, port, remoteDomid);
    this.channels.set(port, ch);
    this.watch.ref();
    return ch;
  }

  /** The channels one wake-up fired, reused from wake-up to wake-up. */
  private readonly fired: LinuxEventChannel[] = [];

  private onReadable(): void {
    const fired = this.fired;
    fired.length = 0;
    for (;;) {
      const n = libc.read(this.fd, this.rbuf, this.rbuf.length);
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        if (e === EAGAIN) break;
        throw new EvtchnError(errnoName(e), 'read', undefined, undefined, 'reading /dev/xen/evtchn');
      }
      if (n === 0) break;
      // evtchn.c: writing the ports back unmasks them.
      if (libc.write(this.fd, this.rbuf, n) !== n) throw new EvtchnError(errnoName(errno()), 'unmask', undefined, undefined, 'writing /dev/xen/evtchn');
      for (let off = 0; off + 4 <= n; off += 4) {
        const ch = this.channels.get(this.rview.getUint32(off, true));
        if (ch !== undefined && !fired.includes(ch)) fired.push(ch);
      }
      if (n < this.rbuf.length) break;
    }
    for (const ch of fired) if (ch.open) this.dispatch(ch);
  }
}
