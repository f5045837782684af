// The /dev/xen/xenbus character device (Linux xenbus_dev_frontend.c), the way guests and
// driver domains without a xenstored socket reach XenStore. The kernel forwards whole
// xs_wire.h messages to xenstored and gives each reply the caller's req_id and tx_id back.
//
// Reading: the device's read() blocks until a reply or watch event is ready and it has no
// poll support Node could use without a native binding, so the transport keeps exactly one
// blocking read outstanding on libuv's threadpool (one thread per open device; the pool has
// four by default). Writes go through the threadpool too, strictly one after another because
// the kernel assembles a message from consecutive writes. A blocked read cannot be
// interrupted by close(), so close() first sends a harmless request (GET_DOMAIN_PATH 0 with
// a req_id the client never uses) whose reply wakes the read, then closes the descriptor.
//
// One request in flight per open device: Linux's xenbus_dev_frontend.c hands xenstored the
// message from the file's own buffer (xenbus_write_transaction -> xenbus_dev_request_and_reply,
// whose iovec points into that buffer), so a second write() before the first reply can
// overwrite a request xenstored has not read yet: acknowledged writes that never happened were
// seen under real Xen with 300 concurrent writes. libxenstore serialises per handle for the
// same reason. So outgoing messages are cut out of the byte stream and each waits for the reply
// to the previous one (any frame that is not a WATCH_EVENT).
import fs from 'node:fs';
import { XENSTORE_PAYLOAD_MAX, XS_HEADER_SIZE, XsOp, encodeMessage, nulStrings } from '../protocol/xs-wire.ts';
import { XenstoreError } from './errors.ts';
import type { TransportSink, XenstoreTransport } from './transport.ts';

/** The req_id of the wake-up request sent by close(); the client allocates ids below it. */
export const XENBUS_CLOSE_REQ_ID = 0xffffffff;

/** `openXenbusTransport(path)` opens the xenbus character device at `path` (default /dev/xen/xenbus). */
export async function openXenbusTransport(path = '/dev/xen/xenbus'): Promise<XenstoreTransport> {
  let fd: number;
  try {
    fd = await new Promise<number>((resolve, reject) => fs.open(path, fs.constants.O_RDWR, (e, f) => (e ? reject(e) : resolve(f))));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new XenstoreError(err.code ?? 'EIO', 'CONNECT', path, `cannot open xenbus device: ${err.message}`);
  }
  return new XenbusTransport(fd, path);
}

class XenbusTransport implements XenstoreTransport {
  readonly description: string;
  private sink: TransportSink | undefined;
  private writes: Promise<void> = Promise.resolve();
  /** Outgoing bytes not yet cut into whole messages. */
  private outBuf: Uint8Array = new Uint8Array(0);
  /** Whole messages waiting for the reply to the one in flight. */
  private readonly queued: Uint8Array[] = [];
  private inFlight = false;
  /** Incoming framing: bytes of the current frame's header seen, and payload bytes still to come. */
  private readonly inHeader = new Uint8Array(XS_HEADER_SIZE);
  private inHeaderLen = 0;
  private inPayloadLeft = 0;
  private closing = false;
  private fdClosed = false;
  private closed: Promise<void> | undefined;
  private resolveClosed: (() => void) | undefined;

  constructor(private readonly fd: number, path: string) {
    this.description = `xenbus device ${path}`;
  }

  start(sink: TransportSink): void {
    this.sink = sink;
    this.readLoop();
  }

  private readLoop(): void {
    const buf = Buffer.allocUnsafe(XS_HEADER_SIZE + XENSTORE_PAYLOAD_MAX);
    fs.read(this.fd, buf, 0, buf.length, null, (err, n) => {
      if (this.closing) {
        this.finish();
        return;
      }
      if (err || n === 0) {
        this.finish(err ?? new Error(`${this.description}: end of file`));
        return;
      }
      const chunk = buf.subarray(0, n);
      const replies = this.countReplies(chunk);
      this.sink!.data(chunk);
      if (replies > 0) {
        this.inFlight = false;
        this.pump();
      }
      this.readLoop();
    });
  }

  private finish(err?: Error): void {
    if (!this.fdClosed) {
      this.fdClosed = true;
      fs.close(this.fd, () => {});
    }
    const sink = this.sink;
    this.sink = undefined;
    sink?.end(this.closing ? undefined : err);
    this.resolveClosed?.();
  }

  /** `countReplies(chunk)` is how many frames other than WATCH_EVENT end in `chunk`. */
  private countReplies(chunk: Uint8Array): number {
    let replies = 0;
    let i = 0;
    while (i < chunk.length) {
      if (this.inHeaderLen < XS_HEADER_SIZE) {
        const take = Math.min(XS_HEADER_SIZE - this.inHeaderLen, chunk.length - i);
        this.inHeader.set(chunk.subarray(i, i + take), this.inHeaderLen);
        this.inHeaderLen += take;
        i += take;
        if (this.inHeaderLen < XS_HEADER_SIZE) break;
        this.inPayloadLeft = new DataView(this.inHeader.buffer).getUint32(12, true);
      }
      const take = Math.min(this.inPayloadLeft, chunk.length - i);
      this.inPayloadLeft -= take;
      i += take;
      if (this.inPayloadLeft === 0) {
        if (new DataView(this.inHeader.buffer).getUint32(0, true) !== XsOp.WATCH_EVENT) replies++;
        this.inHeaderLen = 0;
      }
    }
    return replies;
  }

  send(bytes: Uint8Array): void {
    const all = new Uint8Array(this.outBuf.length + bytes.length);
    all.set(this.outBuf);
    all.set(bytes, this.outBuf.length);
    let off = 0;
    while (all.length - off >= XS_HEADER_SIZE) {
      const len = XS_HEADER_SIZE + new DataView(all.buffer, off).getUint32(12, true);
      if (all.length - off < len) break;
      this.queued.push(all.slice(off, off + len));
      off += len;
    }
    this.outBuf = all.slice(off);
    this.pump();
  }

  /** `pump()` writes the next queued message when none is awaiting its reply. */
  private pump(): void {
    if (this.inFlight || this.queued.length === 0) return;
    const msg = this.queued.shift()!;
    this.inFlight = true;
    this.writes = this.writes.then(() => this.writeAll(msg)).catch((e: Error) => {
      if (!this.closing) this.finish(e);
    });
  }

  private async writeAll(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length && !this.fdClosed) {
      off += await new Promise<number>((resolve, reject) => fs.write(this.fd, bytes, off, bytes.length - off, null, (e, n) => (e ? reject(e) : resolve(n))));
    }
  }

  close(): Promise<void> {
    if (this.closed) return this.closed;
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    this.closing = true;
    if (this.fdClosed || !this.sink) {
      this.finish();
      return this.closed;
    }
    // Wake the blocked read with a request whose reply we discard.
    this.send(encodeMessage({ type: XsOp.GET_DOMAIN_PATH, reqId: XENBUS_CLOSE_REQ_ID, txId: 0, payload: nulStrings(['0']) }));
    return this.closed;
  }
}
