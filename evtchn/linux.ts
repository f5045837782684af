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
import { NativeError, O, fail, libc } from '../native/libc.ts';
import { ioctl } from '../native/ioctl.ts';
import { addHandler, dispatchEvent } from './dispatch.ts';

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
    // The watch reads the queued ports into rbuf and writes them back (unmasking them) before
    // calling onReadable, in the addon without a JavaScript-to-native call per wake-up. One read
    // per wake-up: if more ports were queued than rbuf holds, the fd stays readable and we come
    // back on the next turn.
    this.watch = new FdWatch(fd, (n) => this.onReadable(n), { buffer: this.rbuf, echo: true }, (e) => {
      throw new EvtchnError(e.code, 'read', undefined, undefined, `reading or unmasking ports of /dev/xen/evtchn: ${e.message}`);
    });
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

  /** Dispatches the `n` bytes of ports the watch read (already unmasked), each port once. */
  private onReadable(n: number): void {
    const fired = this.fired;
    fired.length = 0;
    for (let off = 0; off + 4 <= n; off += 4) {
      const ch = this.channels.get(this.rview.getUint32(off, true));
      if (ch !== undefined && !fired.includes(ch)) fired.push(ch);
    }
    for (const ch of fired) if (ch.open) this.dispatch(ch);
  }
}
