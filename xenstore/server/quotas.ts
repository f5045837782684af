// The limits xenstored enforces on unprivileged domains, with the defaults of Xen 4.17's C
// xenstored (xenstored_core.c: quota_nb_entry_per_domain ... quota_max_path_len) and the error
// each one gives when exceeded.

/** `XenstoredQuotas` are the per-domain/per-connection limits; dom0 is exempt from all but path length. */
export interface XenstoredQuotas {
  /** Nodes owned by one domain (`-E`, default 1000): ENOSPC when creating one more. */
  readonly nodesPerDomain: number;
  /** Watches of one domain (`-W`, default 128): E2BIG once exceeded. */
  readonly watchesPerDomain: number;
  /** Stored size of one node: 24-byte header + 8 per permission + value + child names (`-S`, default 2048): ENOSPC. */
  readonly nodeSize: number;
  /** Open transactions per connection (`-t`, default 10): ENOSPC once exceeded. */
  readonly transactionsPerConnection: number;
  /** Entries in one node's permission list (`-A`, default 5): ENOSPC. */
  readonly permsPerNode: number;
  /** Distinct nodes one transaction may touch (`-Q transaction-nodes`, default 1024): ENOSPC. */
  readonly transactionNodes: number;
  /** Path length below /local/domain/<id>/ or from / (`-M`, default and maximum 2048): EINVAL. Applies to dom0 too. */
  readonly pathMax: number;
}

/** `DEFAULT_QUOTAS` are Xen 4.17 xenstored's defaults. */
export const DEFAULT_QUOTAS: XenstoredQuotas = {
  nodesPerDomain: 1000,
  watchesPerDomain: 128,
  nodeSize: 2048,
  transactionsPerConnection: 10,
  permsPerNode: 5,
  transactionNodes: 1024,
  pathMax: 2048,
};

/** `resolveQuotas(partial)` is the defaults overridden by `partial`; every value must be a non-negative integer. */
export function resolveQuotas(partial: Partial<XenstoredQuotas> = {}): XenstoredQuotas {
  const q = { ...DEFAULT_QUOTAS, ...partial };
  for (const [k, v] of Object.entries(q)) {
    if (!Number.isInteger(v) || v < 0) throw new RangeError(`xenstored quota ${k}=${String(v)} is not a non-negative integer`);
  }
  // xenstored_core.c: -M is clamped to XENSTORE_REL_PATH_MAX.
  return { ...q, pathMax: Math.min(q.pathMax, 2048) };
}
