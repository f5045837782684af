// The XenStore client: one connection over any XenstoreTransport, requests multiplexed by
// req_id, watch events routed by token to async-iterable watches (they may arrive between,
// or before, unrelated replies), transactions retried on EAGAIN with bounded backoff, and
// DIRECTORY falling back to DIRECTORY_PART for large directories as libxenstore's
// xs_directory does. Connection loss rejects every pending request and ends every watch
// with an error.
import {
  XENSTORE_PAYLOAD_MAX, XsMessageReader, XsOp, XsWireError, decodeErrorReply, decodePermissions, decodeStringList,
  decodeWatchEvent, encodeMessage, encodePermissions, fromUtf8, joinPayload, nulStrings, splitNul, utf8, xsOpName,
} from '../protocol/xs-wire.ts';
import type { XsMessage, XsPermission } from '../protocol/xs-wire.ts';
import { XenstoreError, isXenstoreError } from './errors.ts';
import type { TransactionOptions, WatchEvent, Xenstore, XenstoreOps, XenstoreWatch } from './xenstore.ts';
import type { XenstoreTransport } from './transport.ts';
import { XENBUS_CLOSE_REQ_ID } from './xenbus-transport.ts';

/** Events a watch may hold unread before it is ended with an error (a stuck consumer must not grow memory without bound). */
const MAX_QUEUED_EVENTS = 65536;

/** `ClientOptions` tune a client. */
export interface ClientOptions {
  /** Backoff between transaction attempts: first delay in ms (default 1), doubling up to `maxBackoffMs` (default 100). */
  readonly backoffMs?: number;
  readonly maxBackoffMs?: number;
}

interface Pending {
  readonly type: number;
  readonly path: string | undefined;
  readonly resolve: (payload: Uint8Array) => void;
  readonly reject: (e: Error) => void;
}

function checkPath(op: number, path: string): void {
  if (path.includes('\0')) throw new XenstoreError('EINVAL', xsOpName(op), path, 'path contains NUL');
}

/** `XenstoreClient` is a Xenstore over one transport. */
export class XenstoreClient implements Xenstore {
  private readonly reader = new XsMessageReader();
  private readonly pending = new Map<number, Pending>();
  private readonly watches = new Map<string, WatchHandle>();
  private nextReqId = 1;
  private nextToken = 1;
  private ended: Error | undefined;
  private closing = false;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;

  constructor(private readonly transport: XenstoreTransport, opts: ClientOptions = {}) {
    this.backoffMs = opts.backoffMs ?? 1;
    this.maxBackoffMs = opts.maxBackoffMs ?? 100;
    transport.start({
      data: (chunk) => this.onData(chunk),
      end: (err) => this.onEnd(err),
    });
  }

  /** `description` says what the client is connected to. */
  get description(): string {
    return this.transport.description;
  }

  private onData(chunk: Uint8Array): void {
    const reader: XsMessageReader = this.reader;
    if (reader.error) return;
    for (const m of reader.feed(chunk)) this.onMessage(m);
    // Re-read: feed() may have set it (TypeScript keeps the narrowing from the check above).
    const err = (reader as { readonly error: Error | undefined }).error;
    if (err) this.fatal(new XenstoreError('EPROTO', 'RECEIVE', undefined, err.message));
  }

  private onMessage(m: XsMessage): void {
    if (m.type === XsOp.WATCH_EVENT) {
      let ev: WatchEvent;
      try {
        ev = decodeWatchEvent(m.payload);
      } catch (e) {
        this.fatal(new XenstoreError('EPROTO', 'WATCH_EVENT', undefined, e instanceof Error ? e.message : String(e)));
        return;
      }
      // Events for a watch already closed (or an UNWATCH in flight) are dropped.
      this.watches.get(ev.token)?.push(ev);
      return;
    }
    if (m.reqId === XENBUS_CLOSE_REQ_ID && this.closing) return;
    const p = this.pending.get(m.reqId);
    if (!p) {
      this.fatal(new XenstoreError('EPROTO', xsOpName(m.type), undefined, `reply with unknown req_id ${m.reqId}`));
      return;
    }
    this.pending.delete(m.reqId);
    if (m.type === XsOp.ERROR) {
      let name: string;
      try {
        name = decodeErrorReply(m.payload);
      } catch (e) {
        p.reject(new XenstoreError('EPROTO', xsOpName(p.type), p.path, e instanceof Error ? e.message : String(e)));
        return;
      }
      p.reject(new XenstoreError(name, xsOpName(p.type), p.path));
    } else if (m.type !== p.type) {
      p.reject(new XenstoreError('EPROTO', xsOpName(p.type), p.path, `reply of type ${xsOpName(m.type)}`));
    } else {
      p.resolve(m.payload);
    }
  }

  private onEnd(err: Error | undefined): void {
    const e = err
      ? new XenstoreError('ECONNRESET', 'RECEIVE', undefined, `connection to xenstored lost (${this.transport.description}): ${err.message}`)
      : new XenstoreError('ECONNRESET', 'RECEIVE', undefined, 'connection closed');
    this.ended ??= e;
    for (const p of this.pending.values()) p.reject(new XenstoreError('ECONNRESET', xsOpName(p.type), p.path, this.ended.message));
    this.pending.clear();
    for (const w of this.watches.values()) w.end(this.closing ? undefined : this.ended);
    this.watches.clear();
  }

  private fatal(e: XenstoreError): void {
    // A peer that breaks framing cannot be trusted with the rest of the stream.
    this.ended ??= e;
    void this.transport.close();
    this.onEnd(e);
  }

  private allocReqId(): number {
    for (;;) {
      const id = this.nextReqId;
      this.nextReqId = this.nextReqId >= 0x7fffffff ? 1 : this.nextReqId + 1;
      if (!this.pending.has(id)) return id;
    }
  }

  /** `request(type, txId, payload, path)` sends one request and is its reply payload; XenstoreError on XS_ERROR. */
  request(type: number, txId: number, payload: Uint8Array, path?: string): Promise<Uint8Array> {
    if (this.ended) return Promise.reject(new XenstoreError('ECONNRESET', xsOpName(type), path, this.ended.message));
    if (payload.length > XENSTORE_PAYLOAD_MAX) {
      return Promise.reject(new XenstoreError('E2BIG', xsOpName(type), path, `request payload of ${payload.length} bytes exceeds ${XENSTORE_PAYLOAD_MAX}`));
    }
    const reqId = this.allocReqId();
    return new Promise<Uint8Array>((resolve, reject) => {
      this.pending.set(reqId, { type, path, resolve, reject });
      try {
        this.transport.send(encodeMessage({ type, reqId, txId, payload }));
      } catch (e) {
        this.pending.delete(reqId);
        reject(e instanceof XsWireError ? new XenstoreError('EINVAL', xsOpName(type), path, e.message) : e);
      }
    });
  }

  private async pathOp(type: number, txId: number, path: string, extra?: Uint8Array): Promise<Uint8Array> {
    checkPath(type, path);
    return this.request(type, txId, extra ? joinPayload([path, new Uint8Array(1), extra]) : nulStrings([path]), path);
  }

  /** `ops(txId)` is the XenstoreOps bound to transaction `txId` (0 = none). */
  private ops(txId: number): XenstoreOps {
    const c = this;
    return {
      async read(path) {
        return fromUtf8(await c.pathOp(XsOp.READ, txId, path));
      },
      async tryRead(path) {
        try {
          return fromUtf8(await c.pathOp(XsOp.READ, txId, path));
        } catch (e) {
          if (isXenstoreError(e, 'ENOENT')) return undefined;
          throw e;
        }
      },
      async write(path, value: string | Uint8Array) {
        await c.pathOp(XsOp.WRITE, txId, path, typeof value === 'string' ? utf8(value) : value);
      },
      async mkdir(path) {
        await c.pathOp(XsOp.MKDIR, txId, path);
      },
      async rm(path) {
        await c.pathOp(XsOp.RM, txId, path);
      },
      async directory(path) {
        try {
          return decodeStringList(await c.pathOp(XsOp.DIRECTORY, txId, path));
        } catch (e) {
          if (!isXenstoreError(e, 'E2BIG')) throw e;
          return c.directoryPart(txId, path);
        }
      },
      async getPermissions(path) {
        const payload = await c.pathOp(XsOp.GET_PERMS, txId, path);
        try {
          return decodePermissions(payload);
        } catch (e) {
          throw new XenstoreError('EPROTO', 'GET_PERMS', path, e instanceof Error ? e.message : String(e));
        }
      },
      async setPermissions(path, perms: readonly XsPermission[]) {
        let list: Uint8Array;
        try {
          list = encodePermissions(perms);
        } catch (e) {
          throw new XenstoreError('EINVAL', 'SET_PERMS', path, e instanceof Error ? e.message : String(e));
        }
        await c.pathOp(XsOp.SET_PERMS, txId, path, list);
      },
    };
  }

  /** Reads a large directory in parts, restarting if it changes in between (xs.c xs_directory_part). */
  private async directoryPart(txId: number, path: string): Promise<string[]> {
    for (let restarts = 0; restarts < 64; restarts++) {
      let gen: string | undefined;
      const parts: Uint8Array[] = [];
      let off = 0;
      let changed = false;
      for (;;) {
        let reply: Uint8Array;
        try {
          reply = await this.request(XsOp.DIRECTORY_PART, txId, nulStrings([path, String(off)]), path);
        } catch (e) {
          if (isXenstoreError(e, 'ENOSYS')) throw new XenstoreError('E2BIG', 'DIRECTORY', path, 'directory too large and DIRECTORY_PART unsupported');
          throw e;
        }
        const nul = reply.indexOf(0);
        if (nul < 0) throw new XenstoreError('EPROTO', 'DIRECTORY_PART', path, 'reply without generation');
        const g = fromUtf8(reply.subarray(0, nul));
        if (gen === undefined) gen = g;
        else if (g !== gen) {
          changed = true;
          break;
        }
        parts.push(reply.subarray(nul + 1));
        const all = joinPayload(parts);
        off = all.length;
        // Done when the accumulated list ends with an extra NUL (an empty name), as xs.c checks.
        if (off <= 1 || all[off - 2] === 0) break;
      }
      if (changed) continue;
      const all = joinPayload(parts);
      const { strings } = splitNul(all);
      return strings.filter((s) => s.length > 0).map(fromUtf8);
    }
    throw new XenstoreError('EAGAIN', 'DIRECTORY_PART', path, 'directory kept changing');
  }

  read(path: string): Promise<string> {
    return this.ops(0).read(path);
  }
  tryRead(path: string): Promise<string | undefined> {
    return this.ops(0).tryRead(path);
  }
  write(path: string, value: string): Promise<void> {
    return this.ops(0).write(path, value);
  }
  mkdir(path: string): Promise<void> {
    return this.ops(0).mkdir(path);
  }
  rm(path: string): Promise<void> {
    return this.ops(0).rm(path);
  }
  directory(path: string): Promise<string[]> {
    return this.ops(0).directory(path);
  }
  getPermissions(path: string): Promise<XsPermission[]> {
    return this.ops(0).getPermissions(path);
  }
  setPermissions(path: string, perms: readonly XsPermission[]): Promise<void> {
    return this.ops(0).setPermissions(path, perms);
  }

  /** `transactionStart()` is the id of a new transaction (prefer transaction()). */
  async transactionStart(): Promise<number> {
    const reply = await this.request(XsOp.TRANSACTION_START, 0, nulStrings(['']));
    const id = Number(fromUtf8(reply.subarray(0, Math.max(0, reply.indexOf(0)))));
    if (!Number.isInteger(id) || id <= 0 || id > 0xffffffff) throw new XenstoreError('EPROTO', 'TRANSACTION_START', undefined, `bad transaction id ${fromUtf8(reply)}`);
    return id;
  }

  /** `transactionEnd(id, commit)` commits or aborts transaction `id`; EAGAIN when a commit conflicts. */
  async transactionEnd(id: number, commit: boolean): Promise<void> {
    await this.request(XsOp.TRANSACTION_END, id, nulStrings([commit ? 'T' : 'F']));
  }

  /** `transactionOps(id)` is the operations bound to an open transaction. */
  transactionOps(id: number): XenstoreOps {
    return this.ops(id);
  }

  async transaction<T>(fn: (tx: XenstoreOps) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
    const max = opts.maxAttempts ?? 16;
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`transaction maxAttempts ${max} must be a positive integer`);
    for (let attempt = 1; ; attempt++) {
      const id = await this.transactionStart();
      let result: T;
      try {
        result = await fn(this.ops(id));
      } catch (e) {
        await this.transactionEnd(id, false).catch(() => {});
        if (isXenstoreError(e, 'EAGAIN') && attempt < max) {
          await this.backoff(attempt);
          continue;
        }
        throw e;
      }
      try {
        await this.transactionEnd(id, true);
        return result;
      } catch (e) {
        if (!isXenstoreError(e, 'EAGAIN')) throw e;
        if (attempt >= max) throw new XenstoreError('EAGAIN', 'TRANSACTION_END', undefined, `transaction still conflicting after ${max} attempts`);
        await this.backoff(attempt);
      }
    }
  }

  private backoff(attempt: number): Promise<void> {
    const ms = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
    return new Promise((r) => setTimeout(r, ms));
  }

  watch(path: string, token?: string): XenstoreWatch {
    const tok = token ?? `xenblk:${this.nextToken++}`;
    const w: WatchHandle = new WatchHandle(path, tok, (): Promise<void> => this.unwatch(w));
    if (this.ended) {
      w.end(new XenstoreError('ECONNRESET', 'WATCH', path, this.ended.message));
      return w;
    }
    if (path.includes('\0') || tok.includes('\0')) {
      w.end(new XenstoreError('EINVAL', 'WATCH', path, 'path or token contains NUL'));
      return w;
    }
    if (this.watches.has(tok)) {
      // Events are routed by token, so two live watches may not share one.
      w.end(new XenstoreError('EEXIST', 'WATCH', path, `token ${JSON.stringify(tok)} already in use on this connection`));
      return w;
    }
    this.watches.set(tok, w);
    this.request(XsOp.WATCH, 0, nulStrings([path, tok]), path).then(
      () => w.registered(),
      (e: Error) => {
        if (this.watches.get(tok) === w) this.watches.delete(tok);
        w.end(e);
      },
    );
    return w;
  }

  private async unwatch(w: WatchHandle): Promise<void> {
    if (this.watches.get(w.token) !== w) return;
    this.watches.delete(w.token);
    w.end(undefined);
    if (this.ended) return;
    try {
      await w.ready;
      await this.request(XsOp.UNWATCH, 0, nulStrings([w.path, w.token]), w.path);
    } catch (e) {
      // Already gone on the server (registration failed, RESET_WATCHES, connection end) is fine.
      if (!isXenstoreError(e)) throw e;
    }
  }

  async getDomainPath(domid: number): Promise<string> {
    const r = await this.request(XsOp.GET_DOMAIN_PATH, 0, nulStrings([String(domid)]));
    return fromUtf8(r.subarray(0, r.indexOf(0) < 0 ? r.length : r.indexOf(0)));
  }

  async introduceDomain(domid: number, mfn: bigint, port: number): Promise<void> {
    await this.request(XsOp.INTRODUCE, 0, nulStrings([String(domid), String(mfn), String(port)]));
  }

  async releaseDomain(domid: number): Promise<void> {
    await this.request(XsOp.RELEASE, 0, nulStrings([String(domid)]));
  }

  async isDomainIntroduced(domid: number): Promise<boolean> {
    const r = fromUtf8(await this.request(XsOp.IS_DOMAIN_INTRODUCED, 0, nulStrings([String(domid)])));
    if (r !== 'T\0' && r !== 'F\0') throw new XenstoreError('EPROTO', 'IS_DOMAIN_INTRODUCED', undefined, `reply ${JSON.stringify(r)}`);
    return r === 'T\0';
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await this.transport.close();
    this.onEnd(undefined);
  }
}

/** `WatchHandle` is a registered watch: an async iterable of events, initial event first. */
export class WatchHandle implements XenstoreWatch {
  private readonly queue: WatchEvent[] = [];
  private waiter: { resolve: (r: IteratorResult<WatchEvent>) => void; reject: (e: Error) => void } | undefined;
  private done = false;
  private error: Error | undefined;
  private resolveReady!: () => void;
  private rejectReady!: (e: Error) => void;
  /** `ready` settles when xenstored accepted (or refused) the watch. */
  readonly ready: Promise<void>;

  constructor(readonly path: string, readonly token: string, private readonly onClose: () => Promise<void>) {
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {});
  }

  /** Called when xenstored acknowledged the WATCH. */
  registered(): void {
    this.resolveReady();
  }

  /** Delivers one event. */
  push(ev: WatchEvent): void {
    if (this.done) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: ev, done: false });
      return;
    }
    if (this.queue.length >= MAX_QUEUED_EVENTS) {
      this.end(new XenstoreError('ENOSPC', 'WATCH_EVENT', this.path, `more than ${MAX_QUEUED_EVENTS} unread events`));
      return;
    }
    this.queue.push(ev);
  }

  /** Ends the iteration, with an error when the watch broke. */
  end(err: Error | undefined): void {
    if (this.done) return;
    this.done = true;
    this.error = err;
    if (err) this.rejectReady(err);
    else this.resolveReady();
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      if (err && this.queue.length === 0) w.reject(err);
      else w.resolve({ value: undefined, done: true });
    }
  }

  /** `next()` is the next event; queued events are delivered before an end or error. */
  next(): Promise<IteratorResult<WatchEvent>> {
    const ev = this.queue.shift();
    if (ev) return Promise.resolve({ value: ev, done: false });
    if (this.done) {
      if (this.error) {
        const e = this.error;
        this.error = undefined;
        return Promise.reject(e);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    return {
      next: () => this.next(),
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }

  close(): Promise<void> {
    return this.onClose();
  }
}
