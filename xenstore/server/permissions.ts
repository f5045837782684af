// Permission checks and the permission string codec as xenstored applies them
// (xenstored_core.c perm_for_conn, xs_lib.c xs_strings_to_perms / xs_perm_to_string).
import {
  XS_PERM_IGNORE, XS_PERM_NONE, XS_PERM_OWNER, XS_PERM_READ, XS_PERM_WRITE,
} from '../../protocol/xs-wire.ts';
import type { NodePerm, ServerConnection } from './state.ts';
import { cStrtolBase0 } from './paths.ts';

/** DOMID_SELF (xen.h), always "introduced" to IS_DOMAIN_INTRODUCED. */
export const DOMID_SELF = 0x7ff0;

/** `isUnprivileged(conn)` is whether `conn` is a domain other than dom0 (domain_is_unprivileged). */
export function isUnprivileged(conn: ServerConnection | null): boolean {
  return conn !== null && conn.domain !== undefined && conn.domain.domid !== 0;
}

/** `domidIsUnprivileged(domid)` is whether `domid` is not dom0. */
export function domidIsUnprivileged(domid: number): boolean {
  return domid !== 0;
}

/**
 * `permForConn(conn, perms)` is the XS_PERM_READ/WRITE/OWNER rights of `conn` on a node: dom0,
 * the owner and the owner's device model get everything; otherwise the first ACL entry naming
 * the domain (or its target) that is not ignored; otherwise the owner entry's default.
 */
export function permForConn(conn: ServerConnection | null, perms: readonly NodePerm[]): number {
  const all = XS_PERM_READ | XS_PERM_WRITE | XS_PERM_OWNER;
  const owner = perms[0]!;
  const target = conn?.domain?.target;
  if (!isUnprivileged(conn) || owner.id === conn!.id || (target !== undefined && owner.id === target)) return all;
  for (let i = 1; i < perms.length; i++) {
    const p = perms[i]!;
    if (!(p.perms & XS_PERM_IGNORE) && (p.id === conn!.id || (target !== undefined && p.id === target))) return p.perms & all;
  }
  return owner.perms & all;
}

/**
 * `parsePermStrings(strings)` is the stored form of SET_PERMS entries, or undefined where
 * xs_strings_to_perms fails: a letter n/r/w/b then a strtol(base 0) number filling the rest.
 */
export function parsePermStrings(strings: readonly string[]): NodePerm[] | undefined {
  const out: NodePerm[] = [];
  for (const s of strings) {
    const letter = s.charAt(0);
    const bits = letter === 'r' ? XS_PERM_READ : letter === 'w' ? XS_PERM_WRITE
      : letter === 'b' ? XS_PERM_READ | XS_PERM_WRITE : letter === 'n' ? XS_PERM_NONE : -1;
    if (bits < 0) return undefined;
    const rest = s.slice(1);
    if (rest === '') return undefined;
    const { value, end } = cStrtolBase0(rest);
    // strtol leaves end at the start when nothing parsed: then *end is the first char (non-NUL).
    if (end === 0 || end !== rest.length) return undefined;
    out.push({ perms: bits, id: Number(BigInt.asUintN(32, value)) });
  }
  return out;
}

/** `formatPerm(p)` is one entry as GET_PERMS returns it (the id printed as a signed int, as %i does). */
export function formatPerm(p: NodePerm): string | undefined {
  const rw = p.perms & ~XS_PERM_IGNORE;
  const letter = rw === XS_PERM_WRITE ? 'w' : rw === XS_PERM_READ ? 'r' : rw === (XS_PERM_READ | XS_PERM_WRITE) ? 'b' : rw === XS_PERM_NONE ? 'n' : undefined;
  if (letter === undefined) return undefined;
  return `${letter}${p.id | 0}`;
}

/** `copyPerms(perms)` is a deep copy (entries are mutated when ownership changes). */
export function copyPerms(perms: readonly NodePerm[]): NodePerm[] {
  return perms.map((p) => ({ id: p.id, perms: p.perms }));
}
