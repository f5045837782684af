// The health check between fuzz batches: a well-behaved client asks questions whose answers
// are known (the fuzzers never name /health or the health domain's home) and every answer must
// be right: the server must keep serving correctly whatever the hostile clients did.
import net from 'node:net';
import { XsMessageReader, XsOp, type XsMessage } from '../../../protocol/xs-wire.ts';
import { frameBytes, FUZZ_DOMIDS, HEALTH_DOMID, LIFECYCLE_DOMIDS } from './generate.ts';

const latin1 = (b: Uint8Array): string => String.fromCharCode(...b);
const bytes = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);

/** `HealthClient` is a sequential request/reply client with a deadline per request. */
export class HealthClient {
  private readonly reader = new XsMessageReader();
  private waiting: ((m: XsMessage | Error) => void) | undefined;
  private reqId = 1;
  /** Watch events received, as `path\0token`. */
  readonly events: string[] = [];
  private closed = false;

  private constructor(private readonly sock: net.Socket, readonly domid: number) {
    sock.on('data', (chunk: Buffer) => {
      let msgs: XsMessage[];
      try {
        msgs = this.reader.feed(chunk);
      } catch (e) {
        this.fail(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      for (const m of msgs) {
        if (m.type === XsOp.WATCH_EVENT) this.events.push(latin1(m.payload).replace(/\0$/, ''));
        else if (this.waiting) {
          const w = this.waiting;
          this.waiting = undefined;
          w(m);
        } else this.fail(new Error(`unsolicited reply type ${m.type}`));
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      this.closed = true;
      this.fail(new Error('server closed the health connection'));
    });
  }

  private fail(e: Error): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.(e);
  }

  /** `connect(path, domid)` is a health client on the socket acting as `domid`. */
  static connect(path: string, domid: number, timeoutMs: number): Promise<HealthClient> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection(path);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`health: connect to ${path} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      sock.once('connect', () => {
        clearTimeout(timer);
        resolve(new HealthClient(sock, domid));
      });
    });
  }

  /** `request(type, args, txId)` is the reply (type, payload as latin1) to one request. */
  request(type: number, payload: string, txId: number, timeoutMs: number): Promise<{ type: number; payload: string }> {
    if (this.closed) return Promise.reject(new Error('health connection closed'));
    const reqId = this.reqId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        reject(new Error(`no reply to type ${type} ${JSON.stringify(payload)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting = (m) => {
        clearTimeout(timer);
        if (m instanceof Error) return reject(m);
        if (m.reqId !== reqId) return reject(new Error(`reply req_id ${m.reqId}, expected ${reqId}`));
        resolve({ type: m.type, payload: latin1(m.payload) });
      };
      this.sock.write(frameBytes(type, reqId, txId, bytes(payload)));
    });
  }

  /** `expect(type, payload, txId, want)` checks that the reply is `want` (`E...` means that XS_ERROR). */
  async expect(type: number, payload: string, want: string, timeoutMs: number, txId = 0): Promise<string> {
    const r = await this.request(type, payload, txId, timeoutMs);
    const got = r.type === XsOp.ERROR ? r.payload.replace(/\0$/, '') : r.payload;
    const wantError = /^E[A-Z0-9]+$/.test(want);
    if ((r.type === XsOp.ERROR) !== wantError || (want !== '*' && got !== want)) {
      throw new Error(`type ${type} ${JSON.stringify(payload)} (domid ${this.domid}): got ${r.type === XsOp.ERROR ? 'XS_ERROR ' : ''}${JSON.stringify(got.slice(0, 200))}, want ${JSON.stringify(want)}`);
    }
    return got;
  }

  close(): void {
    this.closed = true;
    this.sock.destroy();
  }
}

/** `prepareStore(admin, t)` creates /health and the homes of the fuzz and health domains, owned by each domain. */
export async function prepareStore(admin: HealthClient, timeoutMs: number): Promise<void> {
  await admin.expect(XsOp.MKDIR, '/health\0', 'OK\0', timeoutMs);
  for (const d of [...FUZZ_DOMIDS, ...LIFECYCLE_DOMIDS, HEALTH_DOMID]) {
    await admin.expect(XsOp.MKDIR, `/local/domain/${d}\0`, 'OK\0', timeoutMs);
    await admin.expect(XsOp.SET_PERMS, `/local/domain/${d}\0n${d}\0`, 'OK\0', timeoutMs);
  }
}

/**
 * `checkHealth(admin, socketOf, round, t)` runs the known-answer requests of one round: dom0
 * writes, reads, lists, commits a transaction and removes under /health; a fresh connection of
 * the health domain writes and reads its home, is refused /health, and gets its watch event.
 * It throws with the first wrong answer.
 */
export async function checkHealth(admin: HealthClient, socketOf: (domid: number) => string, round: number, timeoutMs: number): Promise<number> {
  let requests = 0;
  const ex = async (c: HealthClient, type: number, payload: string, want: string, txId = 0): Promise<string> => {
    requests++;
    return c.expect(type, payload, want, timeoutMs, txId);
  };
  const key = `/health/r${round}`;
  await ex(admin, XsOp.WRITE, `${key}\0value-${round}`, 'OK\0');
  await ex(admin, XsOp.READ, `${key}\0`, `value-${round}`);
  const dir = await ex(admin, XsOp.DIRECTORY, '/health\0', '*');
  if (!dir.split('\0').includes(`r${round}`)) throw new Error(`DIRECTORY /health lacks r${round}: ${JSON.stringify(dir)}`);
  const tx = Number((await ex(admin, XsOp.TRANSACTION_START, '\0', '*')).replace(/\0$/, ''));
  if (!Number.isInteger(tx) || tx <= 0) throw new Error(`TRANSACTION_START gave ${tx}`);
  await ex(admin, XsOp.WRITE, `/health/tx\0in-tx-${round}`, 'OK\0', tx);
  await ex(admin, XsOp.TRANSACTION_END, 'T\0', 'OK\0', tx);
  await ex(admin, XsOp.READ, '/health/tx\0', `in-tx-${round}`);
  await ex(admin, XsOp.RM, `${key}\0`, 'OK\0');
  await ex(admin, XsOp.READ, `${key}\0`, 'ENOENT');
  await ex(admin, XsOp.GET_DOMAIN_PATH, `${HEALTH_DOMID}\0`, `/local/domain/${HEALTH_DOMID}\0`);
  await ex(admin, XsOp.GET_PERMS, `/local/domain/${HEALTH_DOMID}\0`, `n${HEALTH_DOMID}\0`);

  const guest = await HealthClient.connect(socketOf(HEALTH_DOMID), HEALTH_DOMID, timeoutMs);
  try {
    await ex(guest, XsOp.WRITE, `h\0guest-${round}`, 'OK\0');
    await ex(guest, XsOp.READ, `/local/domain/${HEALTH_DOMID}/h\0`, `guest-${round}`);
    await ex(guest, XsOp.READ, '/health/tx\0', 'EACCES');
    await ex(guest, XsOp.INTRODUCE, '5\x001\x001\0', 'EACCES');
    await ex(guest, XsOp.WATCH, `h\0tok${round}\0`, 'OK\0');
    // The watch fires once on registration (xenstored_watch.c do_watch); a read after it is a barrier.
    await ex(guest, XsOp.READ, 'h\0', `guest-${round}`);
    if (!guest.events.includes(`h\0tok${round}`)) throw new Error(`no watch event for h/tok${round}: ${JSON.stringify(guest.events)}`);
  } finally {
    guest.close();
  }
  return requests;
}
