// The xenstored under fuzz, in a process of its own so that a crash is seen as a crash: the
// in-memory xenstored (xenstore/server/xenstored.ts, socket front included) listening on one
// Unix socket per domid given (`<dir>/d<domid>.sock`, 0 = privileged). Spawned by
// server-process.ts with an IPC channel: it answers {cmd:'stats'} with the store's size and
// the process's memory after a full GC, and {cmd:'stop'} by closing and exiting. The server's
// diagnostics go to stderr, where the fuzzer looks for internal errors.
import { join } from 'node:path';
import process from 'node:process';
import { createXenstored } from '../../../xenstore/server/xenstored.ts';

/** `ServerStats` is what the child reports about itself. */
export interface ServerStats {
  readonly rss: number;
  readonly heapUsed: number;
  readonly nodes: number;
  readonly connections: number;
  readonly watches: number;
  readonly transactions: number;
  readonly domains: number;
  /** Database records that are transaction copies (`<generation>/<path>`), not nodes. */
  readonly transactionCopies: number;
  /** Broken tree links and wrong per-domain node counts (at most 10), checked like xenstored's check_store. */
  readonly integrity: readonly string[];
}

// What xenstored_core.c check_store verifies, plus the quota accounting of xenstored_domain.c:
// every node but / is listed by its parent, every listed child exists, and each domain's
// nbentry is the number of nodes it owns (only meaningful with no transaction open).
function integrity(state: ReturnType<typeof createXenstored>['core']['state'], checkCounts: boolean): string[] {
  const out: string[] = [];
  const owned = new Map<number, number>();
  for (const [key, node] of state.db) {
    if (!key.startsWith('/')) continue;
    owned.set(node.perms[0]!.id, (owned.get(node.perms[0]!.id) ?? 0) + 1);
    if (key !== '/') {
      const slash = key.lastIndexOf('/');
      const parent = state.db.get(slash === 0 ? '/' : key.slice(0, slash));
      if (parent === undefined) out.push(`${key}: parent missing`);
      else if (!parent.children.includes(key.slice(slash + 1))) out.push(`${key}: not among its parent's children`);
    }
    for (const c of node.children) {
      if (!state.db.has(key === '/' ? `/${c}` : `${key}/${c}`)) out.push(`${key}: lists child '${c}' that does not exist`);
    }
    if (new Set(node.children).size !== node.children.length) out.push(`${key}: duplicate children`);
    if (out.length >= 10) return out;
  }
  if (checkCounts) {
    for (const d of state.domains.values()) {
      if (d.domid === 0) continue;
      const n = owned.get(d.domid) ?? 0;
      if (n !== d.nbentry) out.push(`domain ${d.domid}: nbentry ${d.nbentry}, owns ${n} nodes`);
      if (out.length >= 10) break;
    }
  }
  return out;
}

async function main(): Promise<void> {
  const dir = process.argv[2];
  const domids = (process.argv[3] ?? '').split(',').filter((s) => s !== '').map(Number);
  if (dir === undefined || domids.length === 0 || process.send === undefined) {
    process.stderr.write('usage: server-child.ts <dir> <domid,...> (spawned with an IPC channel)\n');
    process.exit(2);
  }
  const xs = createXenstored({ log: (line) => process.stderr.write(`xenstored: ${line}\n`) });
  for (const domid of domids) await xs.listen(join(dir, `d${domid}.sock`), domid);
  const gc = (globalThis as { gc?: () => void }).gc;

  process.on('message', (msg: { cmd?: string }) => {
    if (msg.cmd === 'stats') {
      gc?.();
      const s = xs.core.state;
      let watches = 0;
      let transactions = 0;
      for (const c of s.connections) {
        watches += c.watches.length;
        transactions += c.transactions.size;
      }
      let transactionCopies = 0;
      for (const key of s.db.keys()) if (!key.startsWith('/') && !key.startsWith('@')) transactionCopies++;
      const mem = process.memoryUsage();
      const stats: ServerStats = {
        rss: mem.rss, heapUsed: mem.heapUsed, nodes: s.db.size, connections: s.connections.size,
        watches, transactions, domains: s.domains.size, transactionCopies, integrity: integrity(s, transactions === 0),
      };
      process.send!({ stats });
    } else if (msg.cmd === 'stop') {
      void xs.close().then(() => process.exit(0));
    }
  });
  // The fuzzer is gone: never outlive it.
  process.on('disconnect', () => process.exit(0));
  process.send({ ready: true });
}

void main();
