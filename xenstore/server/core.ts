// The in-memory xenstored as a library: connections attach as a domid, feed it framed
// requests, and receive replies and watch events through a callback. No sockets here (see
// xenstored.ts for the Unix-socket front), so every rule is testable in-process.
//
// Request processing follows xenstored_core.c process_message: unknown type -> ENOSYS,
// privileged type from a domain -> EACCES, unknown tx_id -> ENOENT, then the handler; the
// reply and any watch events are queued per connection in the order they arise and
// delivered when the request is done.
import type { XsMessage } from '../../protocol/xs-wire.ts';
import { XsErrno, type Domain, type ServerConnection, type ServerState } from './state.ts';
import { resolveQuotas, type XenstoredQuotas } from './quotas.ts';
import { isUnprivileged } from './permissions.ts';
import { allocDomain, destroyDomain, domainConnections, introduceDomain } from './domains.ts';
import { deleteAllWatches } from './watches.ts';
import { deleteAllTransactions, lookupTransaction } from './transactions.ts';
import { opTable, replyError, type OpEntry, type Request } from './operations.ts';

/** `CoreOptions` configure an in-memory xenstored. */
export interface CoreOptions {
  readonly quotas?: Partial<XenstoredQuotas>;
  /** Whether a domain exists, for permissions naming it (default: every domid exists). */
  readonly isDomainAlive?: (domid: number) => boolean;
  /** Called when a handler throws something that is not a xenstored error (a bug); the client gets EIO. */
  readonly onInternalError?: (err: unknown) => void;
}

/** `CoreConnectionIo` is how the core reaches a client: deliver messages, or drop the connection. */
export interface CoreConnectionIo {
  send(msgs: XsMessage[]): void;
  drop(reason: string): void;
}

/** `CoreConnection` is one attached client. */
export interface CoreConnection {
  readonly domid: number;
  /** `receive(msg)` processes one request from this client. */
  receive(msg: XsMessage): void;
  /** `close()` ends the connection: its watches and transactions are dropped. */
  close(): void;
  readonly closed: boolean;
}

/** xenstored's type count for Xen 4.17: GET_FEATURE and later are ENOSYS. */
const TYPE_COUNT = 23;

/** `XenstoredCore` is the store, transactions, watches, permissions, quotas and domains, without I/O. */
export class XenstoredCore {
  readonly state: ServerState;
  private readonly ops: Map<number, OpEntry>;
  private readonly onInternalError: (err: unknown) => void;

  constructor(opts: CoreOptions = {}) {
    this.state = {
      db: new Map(),
      generation: 0,
      quotas: resolveQuotas(opts.quotas),
      domains: new Map(),
      connections: new Set(),
      specialPerms: new Map([
        ['@releaseDomain', [{ id: 0, perms: 0 }]],
        ['@introduceDomain', [{ id: 0, perms: 0 }]],
      ]),
      isDomainAlive: opts.isDomainAlive ?? (() => true),
      dirty: new Set(),
    };
    this.onInternalError = opts.onInternalError ?? ((e) => { process.emitWarning(`xenstored internal error: ${String(e)}`); });
    this.ops = opTable({ release: (domid) => this.release(domid) });
    // dom0 exists from the start, then the initial tree of setup_structure: / -> tool -> xenstored.
    const dom0 = allocDomain(this.state, 0);
    dom0.introduced = true;
    const none = () => [{ id: 0, perms: 0 }];
    const s = this.state;
    s.db.set('/', { generation: ++s.generation, perms: none(), data: new Uint8Array(0), children: ['tool'] });
    s.db.set('/tool', { generation: ++s.generation, perms: none(), data: new Uint8Array(0), children: ['xenstored'] });
    s.db.set('/tool/xenstored', { generation: ++s.generation, perms: none(), data: new Uint8Array(0), children: [] });
    dom0.nbentry += 3;
  }

  /**
   * `connect(domid, io)` attaches a client acting as `domid`: 0 is privileged dom0 (like the
   * daemon's socket clients), any other domid is that domain, as if on its ring.
   */
  connect(domid: number, io: CoreConnectionIo): CoreConnection {
    // xen.h: DOMID_FIRST_RESERVED (0x7ff0) and above are not domains.
    if (!Number.isInteger(domid) || domid < 0 || domid >= 0x7ff0) throw new RangeError(`xenstored: domid ${domid} out of range`);
    const s = this.state;
    let domain: Domain | undefined;
    if (domid !== 0) domain = s.domains.get(domid) ?? allocDomain(s, domid);
    const conn: ServerConnection = {
      id: domid, domain, watches: [], transactions: new Map(), transaction: undefined, nextTransactionId: 0,
      out: [], closed: false, send: (m) => io.send(m), drop: (r) => io.drop(r),
    };
    s.connections.add(conn);
    return {
      domid,
      receive: (msg) => this.receive(conn, msg),
      close: () => this.disconnect(conn),
      get closed() {
        return conn.closed;
      },
    };
  }

  /** `introduceDomain(domid)` marks `domid` introduced (toolstack side) and fires @introduceDomain the first time. */
  introduceDomain(domid: number): void {
    introduceDomain(this.state, domid);
    this.flush();
  }

  /** `releaseDomain(domid)` ends the domain: its connections close, the nodes it owns go, @releaseDomain fires. */
  releaseDomain(domid: number): void {
    this.release(domid);
    this.flush();
  }

  /** `isIntroduced(domid)` is whether `domid` is currently introduced. */
  isIntroduced(domid: number): boolean {
    return this.state.domains.get(domid)?.introduced === true;
  }

  private release(domid: number): void {
    const s = this.state;
    for (const c of domainConnections(s, domid)) {
      this.disconnect(c);
      c.drop(`domain ${domid} released`);
    }
    const d = s.domains.get(domid);
    if (d && domid !== 0) destroyDomain(s, d);
  }

  private disconnect(conn: ServerConnection): void {
    if (conn.closed) return;
    deleteAllWatches(conn);
    deleteAllTransactions(this.state, conn);
    conn.closed = true;
    conn.out.length = 0;
    this.state.connections.delete(conn);
  }

  private receive(conn: ServerConnection, msg: XsMessage): void {
    if (conn.closed) return;
    try {
      this.process(conn, msg);
    } finally {
      this.flush();
    }
  }

  private process(conn: ServerConnection, msg: XsMessage): void {
    const s = this.state;
    const req: Request = { conn, type: msg.type, reqId: msg.reqId, txId: msg.txId, payload: msg.payload };
    const op = msg.type < TYPE_COUNT ? this.ops.get(msg.type) : undefined;
    if (!op) return replyError(s, req, 'ENOSYS');
    if (op.priv && isUnprivileged(conn)) return replyError(s, req, 'EACCES');
    try {
      conn.transaction = op.notid ? undefined : lookupTransaction(conn, msg.txId);
      op.handler(s, req);
    } catch (e) {
      if (e instanceof XsErrno) {
        replyError(s, req, e.errno);
      } else {
        this.onInternalError(e);
        replyError(s, req, 'EIO');
      }
    } finally {
      conn.transaction = undefined;
    }
  }

  /** Delivers every queued message, connection by connection. */
  private flush(): void {
    const s = this.state;
    for (const c of s.dirty) {
      if (c.closed || c.out.length === 0) continue;
      const msgs = c.out.splice(0);
      c.send(msgs);
    }
    s.dirty.clear();
  }
}
