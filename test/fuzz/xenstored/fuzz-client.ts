// One hostile xenstore client: writes planned frames to the server's socket (split at random
// points so the server sees partial headers and payloads), and checks everything that comes
// back against xs_wire.h and xenstored_core.c:
// - every frame the server sends is well formed (len <= XENSTORE_PAYLOAD_MAX);
// - every whole request gets exactly one reply, in order, with its req_id and tx_id, whose
//   type is the request's or XS_ERROR, and whose payload has the shape xs_wire.h gives that
//   type (`OK\0`, a transaction id, `T\0`/`F\0`, permission strings, a known error name...);
// - the errors process_message decides before any handler are the ones it gives: ENOSYS for
//   unknown types, EACCES for privileged types from a domain, ENOENT for a tx_id never opened;
// - a WATCH_EVENT is `path\0token\0` with a token this connection registered;
// - the server hangs up only when it has a reason (a header over XENSTORE_PAYLOAD_MAX, lost
//   framing, an unprivileged client not reading, its domain released), and does hang up after
//   an oversize header.
import net from 'node:net';
import { XS_ERRORS, XsMessageReader, XsOp, type XsMessage } from '../../../protocol/xs-wire.ts';
import type { Rng } from '../fuzzer.ts';
import { KNOWN_TYPES, NOTID_TYPES, PRIV_TYPES, splitPoints, type Frame } from './generate.ts';

const latin1 = (b: Uint8Array): string => String.fromCharCode(...b);
const TRANSCRIPT_MAX = 400;

/** `ClientCounters` are per-client tallies the fuzzer sums up. */
export interface ClientCounters {
  sent: number;
  replies: number;
  errors: number;
  events: number;
}

/** NUL-terminated strings of `payload` and whether bytes follow the last NUL. */
function nulStrings(payload: Uint8Array): { strings: string[]; rest: number } {
  const strings: string[] = [];
  let start = 0;
  for (let i = 0; i < payload.length; i++) {
    if (payload[i] === 0) {
      strings.push(latin1(payload.subarray(start, i)));
      start = i + 1;
    }
  }
  return { strings, rest: payload.length - start };
}

/** `FuzzClient` is one connection to the server under fuzz. */
export class FuzzClient {
  /** Oracle violations seen on this connection. */
  readonly problems: string[] = [];
  /** What was sent and received, for a finding's evidence. */
  readonly transcript: string[] = [];
  readonly counters: ClientCounters = { sent: 0, replies: 0, errors: 0, events: 0 };
  /** Rare but legitimate outcomes worth a log line (EIO: xenstored found its store inconsistent). */
  readonly notes: string[] = [];
  /** XS_ERROR replies by error name. */
  readonly errorNames = new Map<string, number>();
  readonly openTx: number[] = [];
  readonly watches: [string, string][] = [];
  private readonly everTx = new Set<number>();
  private readonly tokens = new Set<string>();
  private readonly outstanding: Frame[] = [];
  private readonly reader = new XsMessageReader();
  private sock: net.Socket | undefined;
  private closeWaiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];
  /** Who closed the connection, once closed. */
  closedBy: 'server' | 'client' | undefined;
  /** Set after an oversize header: the server must hang up. */
  expectDrop = false;
  /** Set after a frame whose len lies: replies can no longer be matched, and a hang-up is allowed. */
  chaos = false;
  /** Set while deliberately not reading: an unprivileged client may be dropped for unread output. */
  mayBeDropped = false;
  /** Set for a connection of a domain that fuzzers may release: the server hangs up on release. */
  mayBeReleased = false;
  /** Requests left unanswered when the server dropped us after an oversize header. */
  lostBeforeDrop = 0;

  constructor(
    private readonly socketPath: string,
    readonly domid: number,
    readonly name: string,
  ) {}

  get privileged(): boolean {
    return this.domid === 0;
  }

  get closed(): boolean {
    return this.closedBy !== undefined;
  }

  /** `pending` is how many replies are still owed. */
  get pending(): number {
    return this.outstanding.length;
  }

  private note(line: string): void {
    // Keep the end: the lines before a violation are the ones that explain it.
    this.transcript.push(line);
    if (this.transcript.length > TRANSCRIPT_MAX) this.transcript.splice(0, this.transcript.length - TRANSCRIPT_MAX);
  }

  /** `flag(what)` records an oracle violation on this connection. */
  flag(what: string): void {
    this.problems.push(what);
    this.note(`!! ${what}`);
  }

  /** `open()` connects to the socket. */
  open(): Promise<void> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection(this.socketPath);
      this.sock = sock;
      const failed = (e: Error): void => reject(e);
      sock.once('error', failed);
      sock.once('connect', () => {
        sock.off('error', failed);
        sock.on('close', () => this.onClose());
        resolve();
      });
      sock.on('error', () => {}); // a reset shows as 'close'
      sock.on('data', (chunk: Buffer) => this.onData(chunk));
    });
  }

  private onClose(): void {
    if (this.closedBy === undefined) {
      this.closedBy = 'server';
      this.note('<< server closed the connection');
      if (this.expectDrop) {
        this.lostBeforeDrop = this.outstanding.length;
      } else if (!this.chaos && !this.mayBeReleased && !(this.mayBeDropped && !this.privileged)) {
        this.flag(`server closed the connection with no reason (${this.outstanding.length} replies owed)`);
      }
    }
    this.outstanding.length = 0;
    for (const w of this.closeWaiters.splice(0)) w();
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private onData(chunk: Buffer): void {
    let msgs: XsMessage[];
    try {
      msgs = this.reader.feed(chunk);
    } catch (e) {
      this.flag(`server sent a malformed frame: ${e instanceof Error ? e.message : String(e)}`);
      this.destroy();
      return;
    }
    for (const m of msgs) this.onMessage(m);
    if (this.outstanding.length === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  private onMessage(m: XsMessage): void {
    const payload = latin1(m.payload);
    if (m.type === XsOp.WATCH_EVENT) {
      this.counters.events++;
      const { strings, rest } = nulStrings(m.payload);
      if (strings.length !== 2 || rest !== 0 || strings[0] === '') {
        this.flag(`WATCH_EVENT payload ${JSON.stringify(payload.slice(0, 200))} is not path\\0token\\0`);
      } else if (!this.tokens.has(strings[1]!)) {
        this.flag(`WATCH_EVENT for token ${JSON.stringify(strings[1]!.slice(0, 100))} this connection never registered (path ${strings[0]!.slice(0, 100)})`);
      }
      return;
    }
    this.counters.replies++;
    if (this.chaos) return; // framing lost: replies cannot be matched to requests any more
    const req = this.outstanding.shift();
    if (req === undefined) {
      this.flag(`reply type ${m.type} req_id ${m.reqId} with no request outstanding`);
      return;
    }
    const what = `reply to ${req.label} (req_id ${req.reqId})`;
    this.note(`<< ${m.type === XsOp.ERROR ? `ERROR ${payload.replace(/\0$/, '')}` : `type ${m.type} len ${m.payload.length}`} for req_id ${m.reqId}`);
    if (m.reqId !== req.reqId) this.flag(`${what}: req_id ${m.reqId}, not the oldest outstanding request's`);
    if (m.txId !== req.txId) this.flag(`${what}: tx_id ${m.txId}, request had ${req.txId}`);
    const expected = this.expectedError(req);
    if (m.type === XsOp.ERROR) {
      this.counters.errors++;
      const name = payload.endsWith('\0') ? payload.slice(0, -1) : undefined;
      if (name !== undefined) this.errorNames.set(name, (this.errorNames.get(name) ?? 0) + 1);
      if (name === 'EIO') this.notes.push(`EIO for ${req.label}${this.openTx.includes(req.txId) ? ' (in an open transaction)' : ''}`);
      if (name === undefined || !(XS_ERRORS as readonly string[]).includes(name)) {
        this.flag(`${what}: XS_ERROR payload ${JSON.stringify(payload)} is not a known E<NAME>\\0`);
      } else if (expected !== undefined && name !== expected) {
        this.flag(`${what}: ${name}, xenstored_core.c process_message gives ${expected}`);
      }
      if (req.type === XsOp.TRANSACTION_END && name !== 'EINVAL' && req.txId !== 0) this.forgetTx(req.txId);
      req.onReply?.(m.type, payload);
      return;
    }
    if (m.type !== req.type) {
      this.flag(`${what}: type ${m.type}, neither the request's nor XS_ERROR`);
      return;
    }
    if (expected !== undefined) this.flag(`${what}: succeeded, xenstored_core.c process_message gives ${expected}`);
    this.checkSuccess(req, payload, what);
    req.onReply?.(m.type, payload);
  }

  /** The error process_message gives before any handler runs, if it gives one. */
  private expectedError(req: Frame): string | undefined {
    if (!KNOWN_TYPES.has(req.type)) return 'ENOSYS';
    if (PRIV_TYPES.has(req.type) && !this.privileged) return 'EACCES';
    if (!NOTID_TYPES.has(req.type) && req.txId !== 0 && !this.everTx.has(req.txId)) return 'ENOENT';
    return undefined;
  }

  private forgetTx(id: number): void {
    const i = this.openTx.indexOf(id);
    if (i >= 0) this.openTx.splice(i, 1);
  }

  private checkSuccess(req: Frame, payload: string, what: string): void {
    const shape = (re: RegExp, name: string): void => {
      if (!re.test(payload)) this.flag(`${what}: payload ${JSON.stringify(payload.slice(0, 200))} is not ${name}`);
    };
    switch (req.type) {
      case XsOp.WRITE: case XsOp.MKDIR: case XsOp.RM: case XsOp.SET_PERMS: case XsOp.UNWATCH: case XsOp.RESET_WATCHES:
      case XsOp.INTRODUCE: case XsOp.RELEASE: case XsOp.RESUME: case XsOp.SET_TARGET:
        shape(/^OK\0$/, 'OK\\0');
        break;
      case XsOp.WATCH: {
        shape(/^OK\0$/, 'OK\\0');
        const { strings } = nulStrings(req.bytes.subarray(16));
        if (strings.length >= 2) this.watches.push([strings[0]!, strings[1]!]);
        break;
      }
      case XsOp.TRANSACTION_START: {
        shape(/^[1-9][0-9]*\0$/, 'a transaction id');
        const id = Number(payload.slice(0, -1));
        if (Number.isInteger(id) && id > 0) {
          this.openTx.push(id);
          this.everTx.add(id);
        }
        break;
      }
      case XsOp.TRANSACTION_END:
        shape(/^OK\0$/, 'OK\\0');
        this.forgetTx(req.txId);
        break;
      case XsOp.GET_DOMAIN_PATH:
        shape(/^\/local\/domain\/[0-9]+\0$/, '/local/domain/<id>\\0');
        break;
      case XsOp.IS_DOMAIN_INTRODUCED:
        shape(/^[TF]\0$/, 'T\\0 or F\\0');
        break;
      case XsOp.GET_PERMS:
        shape(/^([nrwb]-?[0-9]+\0)+$/, 'a permission list (xs_perm_to_string prints the domid with %i)');
        break;
      case XsOp.DIRECTORY:
        shape(/^([^\0]+\0)*$/, 'NUL-terminated child names');
        break;
      case XsOp.DIRECTORY_PART:
        shape(/^-?[0-9]+\0([^\0]*\0)*$/, 'generation\\0 then NUL-terminated strings');
        break;
      case XsOp.CONTROL:
        shape(/\0$/, 'NUL-terminated');
        break;
      default:
        break; // READ: any bytes
    }
  }

  /** `send(frames, rng)` writes `frames` as one byte stream cut at random points. */
  async send(frames: readonly Frame[], rng: Rng): Promise<void> {
    const sock = this.sock;
    if (sock === undefined || this.closed || frames.length === 0) return;
    for (const f of frames) {
      this.counters.sent++;
      if (f.watchToken !== undefined) this.tokens.add(f.watchToken);
      if (f.kind === 'request' && !this.chaos && !this.expectDrop) this.outstanding.push(f);
      if (f.kind === 'oversize') this.expectDrop = true;
      if (f.kind === 'desync') this.chaos = true;
      this.note(`>> ${f.label} req_id ${f.reqId}: ${Buffer.from(f.bytes.subarray(0, 96)).toString('hex')}${f.bytes.length > 96 ? '...' : ''}`);
    }
    const all = Buffer.concat(frames.map((f) => f.bytes));
    const cuts = splitPoints(rng, all.length);
    const slow = rng.chance(0.2);
    let at = 0;
    for (const cut of [...cuts, all.length]) {
      if (this.closed) return;
      sock.write(all.subarray(at, cut));
      at = cut;
      // Let the server read what we wrote so far before the rest arrives.
      if (cut !== all.length && slow) await new Promise((r) => setImmediate(r));
    }
  }

  /** `writeRaw(bytes)` writes bytes that are no frame of their own (a partial header or payload). */
  writeRaw(bytes: Uint8Array): void {
    this.note(`>> raw ${Buffer.from(bytes.subarray(0, 64)).toString('hex')} (${bytes.length} bytes)`);
    if (!this.closed) this.sock?.write(bytes);
  }

  /** `pauseReading()` / `resumeReading()` stop and restart reading replies (a slow client). */
  pauseReading(): void {
    this.mayBeDropped = true;
    this.sock?.pause();
  }

  resumeReading(): void {
    this.sock?.resume();
  }

  /** `idle(timeoutMs)` is true once every reply owed has arrived (or the connection closed), false on timeout. */
  idle(timeoutMs: number): Promise<boolean> {
    if (this.outstanding.length === 0 || this.closed || this.chaos) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const i = this.idleWaiters.indexOf(done);
        if (i >= 0) this.idleWaiters.splice(i, 1);
        resolve(false);
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.idleWaiters.push(done);
    });
  }

  /** `closedWithin(timeoutMs)` is true once the connection is closed, false on timeout. */
  closedWithin(timeoutMs: number): Promise<boolean> {
    if (this.closed) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.closeWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** `destroy()` hangs up now, whatever is in flight (an abrupt disconnect). */
  destroy(): void {
    if (this.closedBy === undefined) this.closedBy = 'client';
    this.sock?.destroy();
  }
}
