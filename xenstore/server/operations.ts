// One handler per xs_wire.h request type, with xenstored's argument rules (onearg: exactly
// one NUL, at the end; get_strings: NUL-terminated strings, trailing bytes ignored) and its
// replies (READ without NUL, DIRECTORY as NUL-terminated names, acks as "OK\0").
import {
  XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX, XS_PERM_IGNORE, XS_PERM_OWNER, XS_PERM_READ, XS_PERM_WRITE, XsOp,
} from '../../protocol/xs-wire.ts';
import { XsErrno, fail, type NodePerm, type ServerConnection, type ServerState, type Watch } from './state.ts';
import { cAtoi, canonicalize, domainPath, getParent, isValidNodename } from './paths.ts';
import { DOMID_SELF, formatPerm, isUnprivileged, parsePermStrings } from './permissions.ts';
import { childrenBytes, createNode, getNode, rmNode, tryReadNode, writeNode } from './node-store.ts';
import { allocPermRefs, domainConnections, domainEntryDec, domainEntryInc, introduceDomain, setPermsSpecial } from './domains.ts';
import { deleteAllWatches, fireWatches, queueMessage, sendEvent, watchPath } from './watches.ts';
import { deleteAllTransactions, transactionEnd, transactionStart } from './transactions.ts';
import { latin1 } from './latin1.ts';

/** The request being handled: its connection and header fields. */
export interface Request {
  readonly conn: ServerConnection;
  readonly type: number;
  readonly reqId: number;
  readonly txId: number;
  readonly payload: Uint8Array;
}

/** `reply(s, req, payload)` queues the reply to `req`; a reply over XENSTORE_PAYLOAD_MAX becomes E2BIG (send_reply). */
export function reply(s: ServerState, req: Request, payload: Uint8Array, type: number = req.type): void {
  if (payload.length > XENSTORE_PAYLOAD_MAX) {
    replyError(s, req, 'E2BIG');
    return;
  }
  queueMessage(s, req.conn, type, req.reqId, req.txId, payload);
}

/** `replyError(s, req, name)` queues XS_ERROR `name\0`. */
export function replyError(s: ServerState, req: Request, name: string): void {
  queueMessage(s, req.conn, XsOp.ERROR, req.reqId, req.txId, latin1.encode(`${name}\0`));
}

const OK = latin1.encode('OK\0');
function ack(s: ServerState, req: Request): void {
  reply(s, req, OK);
}

/** `onearg(payload)` is the single NUL-terminated argument, or undefined if there is not exactly one NUL, at the end. */
function onearg(payload: Uint8Array): string | undefined {
  if (payload.length === 0 || payload.indexOf(0) !== payload.length - 1) return undefined;
  return latin1.decode(payload.subarray(0, payload.length - 1));
}

/** `strings(payload)` is every NUL-terminated string (bytes after the last NUL are not one). */
function strings(payload: Uint8Array): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < payload.length; i++) {
    if (payload[i] === 0) {
      out.push(latin1.decode(payload.subarray(start, i)));
      start = i + 1;
    }
  }
  return out;
}

/** `implicitPath(conn)` is the directory relative paths of `conn` resolve against. */
export function implicitPath(conn: ServerConnection): string {
  return domainPath(conn.domain ? conn.domain.domid : 0);
}

function childrenBlob(children: readonly string[]): Uint8Array {
  return latin1.encode(children.map((c) => `${c}\0`).join(''));
}

type Handler = (s: ServerState, req: Request) => void;

const doRead: Handler = (s, req) => {
  const node = getNode(s, req.conn, canonicalize(implicitPath(req.conn), onearg(req.payload)), XS_PERM_READ);
  reply(s, req, node.data);
};

const doDirectory: Handler = (s, req) => {
  const node = getNode(s, req.conn, canonicalize(implicitPath(req.conn), onearg(req.payload)), XS_PERM_READ);
  reply(s, req, childrenBlob(node.children));
};

const doDirectoryPart: Handler = (s, req) => {
  const args = strings(req.payload);
  if (args.length !== 2) fail('EINVAL');
  const node = getNode(s, req.conn, canonicalize(implicitPath(req.conn), args[0]), XS_PERM_READ);
  const off = cAtoi(args[1]!) >>> 0;
  const gen = `${node.generation}\0`;
  const blob = childrenBlob(node.children);
  if (off >= childrenBytes(node.children)) {
    reply(s, req, latin1.encode(`${gen}\0`));
    return;
  }
  // As many whole names from `off` as fit beside the generation; a final extra NUL marks the end.
  const maxlen = XENSTORE_PAYLOAD_MAX - gen.length - 1;
  let len = 0;
  for (;;) {
    let end = blob.indexOf(0, off + len);
    if (end < 0) end = blob.length;
    const l = end - (off + len);
    if (!(len + l < maxlen)) break;
    len += l + 1;
    if (off + len === blob.length) break;
  }
  const last = off + len === blob.length;
  reply(s, req, new Uint8Array([...latin1.encode(gen), ...blob.subarray(off, off + len), ...(last ? [0] : [])]));
};

const doGetPerms: Handler = (s, req) => {
  const node = getNode(s, req.conn, canonicalize(implicitPath(req.conn), onearg(req.payload)), XS_PERM_READ);
  const out: string[] = [];
  for (const p of node.perms) {
    const t = formatPerm(p);
    if (t === undefined) fail('EINVAL');
    out.push(`${t}\0`);
  }
  reply(s, req, latin1.encode(out.join('')));
};

const doWrite: Handler = (s, req) => {
  const nul = req.payload.indexOf(0);
  if (nul < 0) fail('EINVAL');
  const data = req.payload.slice(nul + 1);
  const name = canonicalize(implicitPath(req.conn), latin1.decode(req.payload.subarray(0, nul)))!;
  let node = getNodeOrMissing(s, req.conn, name, XS_PERM_WRITE);
  if (node) {
    node.data = data;
    writeNode(s, req.conn, node, false);
  } else {
    node = createNode(s, req.conn, name, data);
  }
  fireWatches(s, req.conn, name, node, false, undefined);
  ack(s, req);
};

function getNodeOrMissing(s: ServerState, conn: ServerConnection, name: string | undefined, perm: number) {
  try {
    return getNode(s, conn, name, perm);
  } catch (e) {
    if (e instanceof XsErrno && e.errno === 'ENOENT') return undefined;
    throw e;
  }
}

const doMkdir: Handler = (s, req) => {
  const name = canonicalize(implicitPath(req.conn), onearg(req.payload));
  const existing = getNodeOrMissing(s, req.conn, name, XS_PERM_WRITE);
  if (!existing) {
    const node = createNode(s, req.conn, name!, new Uint8Array(0));
    fireWatches(s, req.conn, name!, node, false, undefined);
  }
  ack(s, req);
};

const doRm: Handler = (s, req) => {
  const name = canonicalize(implicitPath(req.conn), onearg(req.payload));
  const node = getNodeOrMissing(s, req.conn, name, XS_PERM_WRITE);
  if (!node) {
    // Removing what is already gone is fine as long as the parent exists.
    const parent = tryReadNode(s, req.conn, getParent(name!));
    if (typeof parent !== 'string') {
      ack(s, req);
      return;
    }
    fail(parent === 'ENOMEM' || parent === 'ENOSPC' ? parent : 'ENOENT');
  }
  if (name === '/') fail('EINVAL');
  rmNode(s, req.conn, name!);
  ack(s, req);
};

const doSetPerms: Handler = (s, req) => {
  const args = strings(req.payload);
  if (args.length < 2) fail('EINVAL');
  const n = args.length - 1;
  if (isUnprivileged(req.conn) && n > s.quotas.permsPerNode) fail('ENOSPC');
  const perms = parsePermStrings(args.slice(1));
  if (!perms) fail('EINVAL');
  allocPermRefs(s, perms);
  if (perms[0]!.perms & XS_PERM_IGNORE) fail('ENOENT');
  const first = args[0]!;
  if (first.startsWith('@')) {
    setPermsSpecial(s, req.conn, first, perms);
    ack(s, req);
    return;
  }
  const name = canonicalize(implicitPath(req.conn), first)!;
  const node = getNode(s, req.conn, name, XS_PERM_WRITE | XS_PERM_OWNER);
  if (isUnprivileged(req.conn) && perms[0]!.id !== node.perms[0]!.id) fail('EPERM');
  const oldPerms: NodePerm[] = node.perms;
  domainEntryDec(s, req.conn, node);
  node.perms = perms;
  if (!domainEntryInc(s, req.conn, node)) {
    node.perms = oldPerms;
    domainEntryInc(s, req.conn, node);
    fail('ENOMEM');
  }
  try {
    writeNode(s, req.conn, node, false);
  } catch (e) {
    domainEntryDec(s, req.conn, node);
    node.perms = oldPerms;
    domainEntryInc(s, req.conn, node);
    throw e;
  }
  fireWatches(s, req.conn, name, node, false, oldPerms);
  ack(s, req);
};

const doWatch: Handler = (s, req) => {
  const args = strings(req.payload);
  if (args.length !== 2) fail('EINVAL');
  let path = args[0]!;
  const token = args[1]!;
  let relative = false;
  if (path.startsWith('@')) {
    if (path.length > XENSTORE_REL_PATH_MAX) fail('EINVAL');
  } else {
    relative = !path.startsWith('/');
    path = canonicalize(implicitPath(req.conn), path)!;
    if (!isValidNodename(path, s.quotas.pathMax)) fail('EINVAL');
  }
  const conn = req.conn;
  if (conn.watches.some((w) => w.node === path && w.token === token)) fail('EEXIST');
  if ((isUnprivileged(conn) ? conn.domain!.nbwatch : 0) > s.quotas.watchesPerDomain) fail('E2BIG');
  const w: Watch = { node: path, token, relativePath: relative ? implicitPath(conn) : undefined };
  conn.watches.push(w);
  if (conn.domain) conn.domain.nbwatch++;
  ack(s, req);
  // Every watch fires once at registration, whether or not the path exists.
  sendEvent(s, conn, watchPath(w, w.node), w.token);
};

const doUnwatch: Handler = (s, req) => {
  const args = strings(req.payload);
  if (args.length !== 2) fail('EINVAL');
  const node = canonicalize(implicitPath(req.conn), args[0]);
  const conn = req.conn;
  const at = conn.watches.findIndex((w) => w.node === node && w.token === args[1]);
  if (at < 0) fail('ENOENT');
  conn.watches.splice(at, 1);
  if (conn.domain && conn.domain.nbwatch > 0) conn.domain.nbwatch--;
  ack(s, req);
};

const doResetWatches: Handler = (s, req) => {
  deleteAllWatches(req.conn);
  deleteAllTransactions(s, req.conn);
  ack(s, req);
};

const doTransactionStart: Handler = (s, req) => transactionStart(s, req.conn, req.reqId, req.txId);

const doTransactionEnd: Handler = (s, req) => {
  transactionEnd(s, req.conn, onearg(req.payload));
  ack(s, req);
};

/** Connections reset when their domain is (re)introduced: watches and transactions go. */
function resetDomainConnections(s: ServerState, domid: number): void {
  for (const c of domainConnections(s, domid)) {
    deleteAllWatches(c);
    deleteAllTransactions(s, c);
  }
}

const doIntroduce: Handler = (s, req) => {
  const args = strings(req.payload);
  if (args.length < 3) fail('EINVAL');
  const domid = cAtoi(args[0]!) >>> 0;
  // The frame number is of no use without shared memory; the port must be non-zero.
  if ((cAtoi(args[2]!) >>> 0) === 0) fail('EINVAL');
  introduceDomain(s, domid);
  resetDomainConnections(s, domid);
  ack(s, req);
};

/** `connectedDomain(s, domid)` is the introduced domain `domid` (ENOENT otherwise). */
function connectedDomain(s: ServerState, domid: number) {
  const d = s.domains.get(domid);
  if (!d || !d.introduced) fail('ENOENT');
  return d;
}

function oneargDomain(s: ServerState, req: Request) {
  const arg = onearg(req.payload);
  if (arg === undefined) fail('EINVAL');
  const domid = cAtoi(arg) >>> 0;
  if (domid === 0) fail('EINVAL');
  return connectedDomain(s, domid);
}

/** Hook the socket front installs: end a domain's connections and forget it. */
export interface DomainLifecycle {
  release(domid: number): void;
}

function makeRelease(life: DomainLifecycle): Handler {
  return (s, req) => {
    const d = oneargDomain(s, req);
    // talloc_free of a referenced connection only drops the newest reference (see Domain.refs).
    if (d.refs.length > 0) d.refs.shift();
    else life.release(d.domid);
    ack(s, req);
  };
}

const doResume: Handler = (s, req) => {
  oneargDomain(s, req);
  ack(s, req);
};

const doSetTarget: Handler = (s, req) => {
  const args = strings(req.payload);
  if (args.length < 2) fail('EINVAL');
  const d = connectedDomain(s, cAtoi(args[0]!) >>> 0);
  const t = connectedDomain(s, cAtoi(args[1]!) >>> 0);
  d.target = t.domid;
  t.refs.unshift(d.domid);
  ack(s, req);
};

const doIsDomainIntroduced: Handler = (s, req) => {
  const arg = onearg(req.payload);
  if (arg === undefined) fail('EINVAL');
  const domid = cAtoi(arg) >>> 0;
  const yes = domid === DOMID_SELF || s.domains.get(domid)?.introduced === true;
  reply(s, req, latin1.encode(yes ? 'T\0' : 'F\0'));
};

const doGetDomainPath: Handler = (s, req) => {
  const arg = onearg(req.payload);
  if (arg === undefined) fail('EINVAL');
  reply(s, req, latin1.encode(`${domainPath(cAtoi(arg))}\0`));
};

const CONTROL_HELP = 'check\nprint <string>\nquota\nhelp\n';

const doControl: Handler = (s, req) => {
  const args = strings(req.payload);
  const [cmd, ...rest] = args;
  if (cmd === 'check' && rest.length === 0) return ack(s, req);
  if (cmd === 'print' && rest.length === 1) return ack(s, req);
  if (cmd === 'help' && rest.length === 0) return reply(s, req, latin1.encode(`${CONTROL_HELP}\0`));
  if (cmd === 'quota' && rest.length === 0) {
    const q = Object.entries(s.quotas).map(([k, v]) => `${k.padEnd(28)}: ${v}\n`).join('');
    return reply(s, req, latin1.encode(`${q}\0`));
  }
  fail('EINVAL');
};

/** `XS_FLAG_PRIV` request types: dom0 only (EACCES for others). `XS_FLAG_NOTID`: the tx_id is ignored. */
export interface OpEntry {
  readonly handler: Handler;
  readonly priv?: boolean;
  readonly notid?: boolean;
}

/** `opTable(life)` is the request types a Xen 4.17 xenstored serves, keyed by type. */
export function opTable(life: DomainLifecycle): Map<number, OpEntry> {
  return new Map<number, OpEntry>([
    [XsOp.CONTROL, { handler: doControl, priv: true }],
    [XsOp.DIRECTORY, { handler: doDirectory }],
    [XsOp.READ, { handler: doRead }],
    [XsOp.GET_PERMS, { handler: doGetPerms }],
    [XsOp.WATCH, { handler: doWatch, notid: true }],
    [XsOp.UNWATCH, { handler: doUnwatch, notid: true }],
    [XsOp.TRANSACTION_START, { handler: doTransactionStart }],
    [XsOp.TRANSACTION_END, { handler: doTransactionEnd }],
    [XsOp.INTRODUCE, { handler: doIntroduce, priv: true }],
    [XsOp.RELEASE, { handler: makeRelease(life), priv: true }],
    [XsOp.GET_DOMAIN_PATH, { handler: doGetDomainPath }],
    [XsOp.WRITE, { handler: doWrite }],
    [XsOp.MKDIR, { handler: doMkdir }],
    [XsOp.RM, { handler: doRm }],
    [XsOp.SET_PERMS, { handler: doSetPerms }],
    [XsOp.IS_DOMAIN_INTRODUCED, { handler: doIsDomainIntroduced, priv: true }],
    [XsOp.RESUME, { handler: doResume, priv: true }],
    [XsOp.SET_TARGET, { handler: doSetTarget, priv: true }],
    [XsOp.RESET_WATCHES, { handler: doResetWatches }],
    [XsOp.DIRECTORY_PART, { handler: doDirectoryPart }],
  ]);
}
