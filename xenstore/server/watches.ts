// Watches (xenstored_watch.c): which watches an event reaches, what path the watcher sees, and
// who may see it. A change fires every watch on the node or an ancestor; a removed subtree
// fires each descendant's exact watches; inside a transaction events are queued and fire at
// commit. An unprivileged watcher only hears about nodes it (or the parent) can read, judged
// on the old permissions too when permissions change.
import { XsOp, XENSTORE_PAYLOAD_MAX, XS_PERM_READ } from '../../protocol/xs-wire.ts';
import type { Node, NodePerm, ServerConnection, ServerState, Watch } from './state.ts';
import { getParent, isChild } from './paths.ts';
import { permForConn } from './permissions.ts';
import { readNode } from './node-store.ts';
import { latin1 } from './latin1.ts';

/** `queueMessage(s, conn, msg)` appends a message to `conn`'s output, flushed after the request. */
export function queueMessage(s: ServerState, conn: ServerConnection, type: number, reqId: number, txId: number, payload: Uint8Array): void {
  if (conn.closed) return;
  conn.out.push({ type, reqId, txId, payload });
  s.dirty.add(conn);
}

/**
 * `sendEvent(s, conn, path, token)` queues a WATCH_EVENT. Over-long events are dropped, and an
 * event identical to one still queued for the same connection is dropped (special @ events
 * excepted), as xenstored's send_event does.
 */
export function sendEvent(s: ServerState, conn: ServerConnection, path: string, token: string): void {
  const payload = latin1.encode(`${path}\0${token}\0`);
  if (payload.length > XENSTORE_PAYLOAD_MAX) return;
  if (!path.startsWith('@')) {
    for (const m of conn.out) {
      if (m.type === XsOp.WATCH_EVENT && m.payload.length === payload.length && m.payload.every((b, i) => b === payload[i])) return;
    }
  }
  queueMessage(s, conn, XsOp.WATCH_EVENT, 0, 0, payload);
}

/** `watchPath(w, name)` is the event path the watcher sees: relative when it registered relative. */
export function watchPath(w: Watch, name: string): string {
  if (w.relativePath === undefined) return name;
  let p = name.slice(w.relativePath.length);
  if (p.startsWith('/')) p = p.slice(1);
  return p;
}

function watchPermitted(s: ServerState, watcher: ServerConnection, name: string, node: Node | undefined, oldPerms: NodePerm[] | undefined): boolean {
  if (oldPerms && permForConn(watcher, oldPerms) & XS_PERM_READ) return true;
  if (!node) {
    try {
      node = readNode(s, watcher, name);
    } catch {
      return false;
    }
  }
  if (permForConn(watcher, node.perms) & XS_PERM_READ) return true;
  let parent = node.parent;
  if (!parent) {
    try {
      parent = readNode(s, watcher, getParent(node.name));
    } catch {
      return false;
    }
  }
  return (permForConn(watcher, parent.perms) & XS_PERM_READ) !== 0;
}

/** `checkPermsSpecial(s, name, conn)` is whether `conn` may hear special event `name`. */
export function checkPermsSpecial(s: ServerState, name: string, conn: ServerConnection): boolean {
  const p = s.specialPerms.get(name);
  return p !== undefined && (permForConn(conn, p) & XS_PERM_READ) !== 0;
}

/**
 * `fireWatches(s, conn, name, node, exact, oldPerms)` sends the events a change of `name` by
 * `conn` causes; inside `conn`'s transaction it only marks the node for firing at commit.
 */
export function fireWatches(s: ServerState, conn: ServerConnection | null, name: string, node: Node | undefined, exact: boolean, oldPerms: NodePerm[] | undefined): void {
  if (conn?.transaction) {
    queueWatches(conn, name, exact);
    return;
  }
  const special = name.startsWith('@');
  for (const i of s.connections) {
    if (i.closed) continue;
    if (special ? !checkPermsSpecial(s, name, i) : !watchPermitted(s, i, name, node, oldPerms)) continue;
    for (const w of i.watches) {
      if (exact ? name === w.node : isChild(name, w.node)) sendEvent(s, i, watchPath(w, name), w.token);
    }
  }
}

/** `queueWatches(conn, name, exact)` remembers that a transaction changed `name`; a subtree event overrides an exact one. */
export function queueWatches(conn: ServerConnection, name: string, exact: boolean): void {
  const trans = conn.transaction!;
  const i = trans.accessed.get(name);
  if (!i) {
    trans.fail = true;
    return;
  }
  if (!i.fireWatch) {
    i.fireWatch = true;
    i.watchExact = exact;
  } else if (!exact) {
    i.watchExact = false;
  }
}

/** `deleteAllWatches(conn)` drops every watch of `conn` (connection end, RESET_WATCHES, re-INTRODUCE). */
export function deleteAllWatches(conn: ServerConnection): void {
  if (conn.domain) conn.domain.nbwatch = Math.max(0, conn.domain.nbwatch - conn.watches.length);
  conn.watches.length = 0;
}
