// Transactions (xenstored_transaction.c). Not snapshots: a transaction sees the live store
// until it first touches a node, then its private copy. Every node it read is checked at
// commit against the store's generation and any difference fails the commit with EAGAIN;
// nodes it only wrote are not checked (last writer wins). Ending a transaction, committed or
// not, always frees it.
import { XsOp } from '../../protocol/xs-wire.ts';
import { NO_GENERATION, fail, type ServerConnection, type ServerState, type Transaction } from './state.ts';
import { isUnprivileged } from './permissions.ts';
import { transactionFixDomains } from './domains.ts';
import { fireWatches, queueMessage } from './watches.ts';
import { latin1 } from './latin1.ts';

/** `lookupTransaction(conn, id)` is the open transaction `id` (undefined for 0); ENOENT when unknown. */
export function lookupTransaction(conn: ServerConnection, id: number): Transaction | undefined {
  if (id === 0) return undefined;
  const t = conn.transactions.get(id);
  if (!t) fail('ENOENT');
  return t;
}

/** `transactionStart(s, conn, reqId, txId)` opens a transaction and replies with its id. */
export function transactionStart(s: ServerState, conn: ServerConnection, reqId: number, txId: number): void {
  // No nesting: a TRANSACTION_START sent inside a transaction is refused.
  if (conn.transaction) fail('EBUSY');
  if (isUnprivileged(conn) && conn.transactions.size > s.quotas.transactionsPerConnection) fail('ENOSPC');
  let id: number;
  do {
    id = conn.nextTransactionId;
    conn.nextTransactionId = (conn.nextTransactionId + 1) >>> 0;
  } while (id === 0 || conn.transactions.has(id));
  const t: Transaction = {
    id, generation: ++s.generation, accessed: new Map(), changedDomains: new Map(), nodes: 0, nodeCreated: false, fail: false,
  };
  conn.transactions.set(id, t);
  queueMessage(s, conn, XsOp.TRANSACTION_START, reqId, txId, latin1.encode(`${id}\0`));
}

/** `destroyTransaction(s, conn, t)` forgets `t` and its private copies. */
export function destroyTransaction(s: ServerState, conn: ServerConnection, t: Transaction): void {
  for (const i of t.accessed.values()) if (i.taNode) s.db.delete(i.transName);
  t.accessed.clear();
  conn.transactions.delete(t.id);
}

/** `deleteAllTransactions(s, conn)` aborts every open transaction of `conn`. */
export function deleteAllTransactions(s: ServerState, conn: ServerConnection): void {
  for (const t of [...conn.transactions.values()]) destroyTransaction(s, conn, t);
  conn.transaction = undefined;
}

function finalize(s: ServerState, conn: ServerConnection, t: Transaction): void {
  for (const [name, i] of t.accessed) {
    if (i.checkGen) {
      const rec = s.db.get(name);
      if (i.generation !== (rec ? rec.generation : NO_GENERATION)) fail('EAGAIN');
    }
    if (!i.modified) {
      if (i.taNode) s.db.delete(i.transName);
      t.accessed.delete(name);
    }
  }
  for (const [name, i] of t.accessed) {
    if (i.taNode) {
      const rec = s.db.get(i.transName);
      if (rec) {
        rec.generation = ++s.generation;
        s.db.set(name, rec);
        s.db.delete(i.transName);
      }
    } else if (i.generation !== NO_GENERATION) {
      s.db.delete(name);
    }
    if (i.fireWatch) fireWatches(s, conn, name, undefined, i.watchExact, i.perms);
    t.accessed.delete(name);
  }
}

/** `transactionEnd(s, conn, commit)` ends the request's transaction: commit (`T`) or abort (`F`). */
export function transactionEnd(s: ServerState, conn: ServerConnection, arg: string | undefined): void {
  if (arg !== 'T' && arg !== 'F') fail('EINVAL');
  const t = conn.transaction;
  if (!t) fail('ENOENT');
  conn.transaction = undefined;
  const checkQuota = t.nodeCreated && isUnprivileged(conn);
  try {
    if (arg === 'T') {
      if (t.fail) fail('ENOMEM');
      transactionFixDomains(s, t.changedDomains, checkQuota, false);
      finalize(s, conn, t);
      transactionFixDomains(s, t.changedDomains, false, true);
    }
  } finally {
    destroyTransaction(s, conn, t);
  }
}
