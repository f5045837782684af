// Domains as xenstored tracks them (xenstored_domain.c): node ownership counts for the quota,
// the generation at which a domain record appeared (permissions older than a domid's current
// incarnation are ignored), introduction and release, and the special @introduceDomain /
// @releaseDomain watch paths with their own permission lists.
import { XS_PERM_IGNORE, XS_PERM_OWNER, XS_PERM_WRITE } from '../../protocol/xs-wire.ts';
import type { Domain, Node, NodePerm, ServerConnection, ServerState } from './state.ts';
import { fail } from './state.ts';
import { domidIsUnprivileged, isUnprivileged, permForConn } from './permissions.ts';
import { Walk, rmNode, walkNodeTree } from './node-store.ts';
import { fireWatches } from './watches.ts';

/** `allocDomain(s, domid)` records a domain, stamped with the current generation. */
export function allocDomain(s: ServerState, domid: number): Domain {
  const d: Domain = { domid, generation: s.generation, introduced: false, nbentry: 0, nbwatch: 0, target: undefined, refs: [] };
  s.domains.set(domid, d);
  return d;
}

/** `findOrAllocExistingDomain(s, domid)` is the record of `domid`, created if the domain is alive. */
export function findOrAllocExistingDomain(s: ServerState, domid: number): Domain | undefined {
  return s.domains.get(domid) ?? (s.isDomainAlive(domid) ? allocDomain(s, domid) : undefined);
}

/** `domainEntry(conn)` is the number of nodes `conn`'s domain owns, 0 for dom0 (never limited). */
export function domainEntry(conn: ServerConnection | null): number {
  return isUnprivileged(conn) ? conn!.domain!.nbentry : 0;
}

/** `domainEntryInc(s, conn, node)` counts `node` for its owner (deferred to commit in a transaction); false if the owner cannot be recorded. */
export function domainEntryInc(s: ServerState, conn: ServerConnection | null, node: Node): boolean {
  const domid = node.perms[0]!.id;
  if (conn?.transaction) {
    const m = conn.transaction.changedDomains;
    m.set(domid, (m.get(domid) ?? 0) + 1);
    return true;
  }
  const d = conn && domid === conn.id && conn.domain ? conn.domain : findOrAllocExistingDomain(s, domid);
  if (!d) return false;
  d.nbentry++;
  return true;
}

/** `domainEntryDec(s, conn, node)` uncounts `node` from its owner. */
export function domainEntryDec(s: ServerState, conn: ServerConnection | null, node: Node): void {
  const domid = node.perms[0]!.id;
  if (conn?.transaction) {
    const m = conn.transaction.changedDomains;
    m.set(domid, (m.get(domid) ?? 0) - 1);
    return;
  }
  const d = conn && domid === conn.id && conn.domain ? conn.domain : s.domains.get(domid);
  if (d) d.nbentry--;
}

/**
 * `transactionFixDomains(s, changes, checkQuota, update)` checks (update=false) or applies
 * (update=true) a transaction's node-count changes: ENOSPC when an unprivileged owner would
 * reach the node quota, ENOMEM when an owner cannot be recorded.
 */
export function transactionFixDomains(s: ServerState, changes: Map<number, number>, checkQuota: boolean, update: boolean): void {
  for (const [domid, delta] of changes) {
    const d = update ? s.domains.get(domid) : findOrAllocExistingDomain(s, domid);
    if (!d) {
      if (!update) fail('ENOMEM');
      continue;
    }
    let cnt = d.nbentry + delta;
    if (update) {
      d.nbentry = Math.max(0, cnt);
      continue;
    }
    // A node added/removed both inside and outside the transaction can make this negative;
    // the commit then fails on the conflict anyway.
    if (cnt < 0) cnt = 0;
    const counted = domidIsUnprivileged(domid) ? cnt : 0;
    if (checkQuota && counted >= s.quotas.nodesPerDomain) fail('ENOSPC');
  }
}

/** `allocPermRefs(s, perms)` creates records for the live domains `perms` names and marks dead ones ignored. */
export function allocPermRefs(s: ServerState, perms: NodePerm[]): void {
  for (const p of perms) {
    if (s.domains.has(p.id)) continue;
    if (!s.isDomainAlive(p.id)) p.perms |= XS_PERM_IGNORE;
    else allocDomain(s, p.id);
  }
}

/** `setPermsSpecial(s, conn, name, perms)` replaces the permissions of @introduceDomain or @releaseDomain. */
export function setPermsSpecial(s: ServerState, conn: ServerConnection, name: string, perms: NodePerm[]): void {
  const p = s.specialPerms.get(name);
  if (!p) fail('EINVAL');
  if ((permForConn(conn, p) & (XS_PERM_WRITE | XS_PERM_OWNER)) !== (XS_PERM_WRITE | XS_PERM_OWNER)) fail('EACCES');
  s.specialPerms.set(name, perms);
}

/** `domainConnections(s, domid)` is every open connection acting as `domid`'s domain record. */
export function domainConnections(s: ServerState, domid: number): ServerConnection[] {
  return [...s.connections].filter((c) => c.domain !== undefined && c.domain.domid === domid);
}

/**
 * `introduceDomain(s, domid)` marks `domid` introduced; the first introduction fires
 * @introduceDomain (dom0 is introduced at start-up without an event). Returns whether the
 * domain was new.
 */
export function introduceDomain(s: ServerState, domid: number): boolean {
  const d = s.domains.get(domid) ?? allocDomain(s, domid);
  if (d.introduced) return false;
  d.introduced = true;
  if (domid !== 0) fireWatches(s, null, '@introduceDomain', undefined, true, undefined);
  return true;
}

function removeDomidFromPerms(perms: NodePerm[], domid: number): NodePerm[] {
  const owner = perms[0]!;
  const out = [{ id: owner.id === domid ? 0 : owner.id, perms: owner.perms }];
  for (const p of perms.slice(1)) if (p.id !== domid) out.push(p);
  return out;
}

/**
 * `destroyDomain(s, d)` forgets domain `d` after its connections are gone: nodes it owns are
 * removed (watches fire), its entries leave the special permission lists, and an introduced
 * domain's end fires @releaseDomain.
 */
export function destroyDomain(s: ServerState, d: Domain): void {
  if (d.nbentry > 0) {
    walkNodeTree(s, null, '/', {
      enter: (node) => {
        if (node.perms[0]!.id !== d.domid) return Walk.Ok;
        try {
          rmNode(s, null, node.name);
        } catch {
          // Keep going: the rest of the domain's nodes must still go.
        }
        return d.nbentry > 0 ? Walk.SkipChildren : Walk.SuccessStop;
      },
    });
  }
  for (const name of [...s.specialPerms.keys()]) s.specialPerms.set(name, removeDomidFromPerms(s.specialPerms.get(name)!, d.domid));
  s.domains.delete(d.domid);
  // Its connection is gone, and with it the references it held on its targets.
  for (const other of s.domains.values()) {
    other.refs = other.refs.filter((h) => h !== d.domid);
    // A device model whose guest is gone acts for nobody (a new domain may reuse the domid).
    if (other.target === d.domid) other.target = undefined;
  }
  if (d.introduced) fireWatches(s, null, '@releaseDomain', undefined, true, undefined);
}
