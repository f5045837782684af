// Reading, writing, creating and removing nodes with the exact access pattern of Xen's C
// xenstored (xenstored_core.c read_node / get_node / construct_node / create_node / rm_node /
// walk_node_tree; xenstored_transaction.c access_node). The pattern matters beyond the
// result: every node a transaction reads is recorded for conflict detection, every write
// advances the global generation, and which parents are consulted decides between ENOENT and
// EACCES. Node names are validated ASCII, so a name's length is its byte length.
import { XS_PERM_IGNORE, XS_PERM_NONE } from '../../protocol/xs-wire.ts';
import type { XsErrorName } from '../../protocol/xs-wire.ts';
import {
  NO_GENERATION, XsErrno, errnoOf, fail,
  type AccessedNode, type Node, type NodePerm, type ServerConnection, type ServerState, type StoredNode,
} from './state.ts';
import { basename, childName, getParent, isValidNodename } from './paths.ts';
import { copyPerms, isUnprivileged, permForConn } from './permissions.ts';
import { domainEntry, domainEntryDec, domainEntryInc } from './domains.ts';
import { fireWatches } from './watches.ts';

/** The kinds of node access (xenstored_core.h enum node_access_type). */
export const Access = { Read: 0, Write: 1, Delete: 2 } as const;
export type Access = (typeof Access)[keyof typeof Access];

const EMPTY = new Uint8Array(0);

/** `childrenBytes(children)` is the stored length of a child list: each name plus its NUL. */
export function childrenBytes(children: readonly string[]): number {
  let n = 0;
  for (const c of children) n += c.length + 1;
  return n;
}

/** `recordSize(node)` is sizeof(xs_tdb_record_hdr) + permissions + value + children, the node-size quota's measure. */
export function recordSize(node: { perms: readonly NodePerm[]; data: Uint8Array; children: readonly string[] }): number {
  return 24 + 8 * node.perms.length + node.data.length + childrenBytes(node.children);
}

function canPropagate(errno: XsErrorName): boolean {
  // read_node_can_propagate_errno: memory and quota failures are never hidden.
  return errno === 'ENOMEM' || errno === 'ENOSPC';
}

/**
 * `adjustNodePerms(s, node)` marks ACL entries of domains that are gone, or younger than the
 * node, as ignored, so a new domain reusing a domid does not inherit them (domain_adjust_node_perms).
 */
export function adjustNodePerms(s: ServerState, node: { generation: number; perms: NodePerm[] }): void {
  for (let i = 1; i < node.perms.length; i++) {
    const p = node.perms[i]!;
    if (p.perms & XS_PERM_IGNORE) continue;
    const d = s.domains.get(p.id);
    if (!(d !== undefined && d.generation <= node.generation)) p.perms |= XS_PERM_IGNORE;
  }
}

function transactionKey(conn: ServerConnection | null, name: string): string {
  const a = conn?.transaction?.accessed.get(name);
  return a ? a.transName : name;
}

function store(s: ServerState, key: string, node: Node): void {
  const rec: StoredNode = { generation: node.generation, perms: copyPerms(node.perms), data: node.data, children: [...node.children] };
  s.db.set(key, rec);
}

/**
 * `accessNode(s, conn, node, type)` records an access: writes and deletes take a new
 * generation; inside a transaction the first access of a node is remembered (a read keeps a
 * private copy and the generation to check at commit). Returns the database key to use, or
 * undefined for a delete of a node the transaction never saw (nothing private to delete).
 */
export function accessNode(s: ServerState, conn: ServerConnection | null, node: Node, type: Access): string | undefined {
  if (type !== Access.Read) node.generation = ++s.generation;
  const trans = conn?.transaction;
  if (!trans) return node.name;
  let i = trans.accessed.get(node.name);
  let introduce = false;
  if (!i) {
    if (trans.nodes >= s.quotas.transactionNodes && isUnprivileged(conn)) {
      trans.fail = true;
      fail('ENOSPC');
    }
    i = {
      transName: `${trans.generation}/${node.name}`,
      generation: 0,
      perms: node.generation !== NO_GENERATION && node.perms.length > 0 ? copyPerms(node.perms) : undefined,
      checkGen: false, modified: false, taNode: false, fireWatch: false, watchExact: false,
    } satisfies AccessedNode;
    introduce = true;
    if (type === Access.Read) {
      i.generation = node.generation;
      i.checkGen = true;
      if (node.generation !== NO_GENERATION) {
        store(s, i.transName, node);
        i.taNode = true;
      }
    }
    trans.nodes++;
    trans.accessed.set(node.name, i);
  }
  if (type !== Access.Read) i.modified = true;
  if (introduce && type === Access.Delete) return undefined;
  if (type === Access.Write) i.taNode = true;
  if (type === Access.Delete) i.taNode = false;
  return i.transName;
}

/** `readNode(s, conn, name)` is the node as `conn` (and its transaction) sees it; ENOENT when absent. */
export function readNode(s: ServerState, conn: ServerConnection | null, name: string): Node {
  const rec = s.db.get(transactionKey(conn, name));
  if (!rec) {
    const ghost: Node = { name, generation: NO_GENERATION, perms: [], data: EMPTY, children: [] };
    accessNode(s, conn, ghost, Access.Read);
    fail('ENOENT');
  }
  const node: Node = { name, generation: rec.generation, perms: copyPerms(rec.perms), data: rec.data, children: [...rec.children] };
  adjustNodePerms(s, node);
  accessNode(s, conn, node, Access.Read);
  return node;
}

/** `tryReadNode(s, conn, name)` is readNode, with the error returned instead of thrown. */
export function tryReadNode(s: ServerState, conn: ServerConnection | null, name: string): Node | XsErrorName {
  try {
    return readNode(s, conn, name);
  } catch (e) {
    return errnoOf(e);
  }
}

/** `writeNodeRaw(s, conn, key, node, noQuotaCheck)` stores `node` under `key`, enforcing the node-size quota. */
export function writeNodeRaw(s: ServerState, conn: ServerConnection | null, key: string, node: Node, noQuotaCheck: boolean): void {
  adjustNodePerms(s, node);
  if (!noQuotaCheck && isUnprivileged(conn) && recordSize(node) >= s.quotas.nodeSize) fail('ENOSPC');
  store(s, key, node);
}

/** `writeNode(s, conn, node, noQuotaCheck)` records a write access and stores the node. */
export function writeNode(s: ServerState, conn: ServerConnection | null, node: Node, noQuotaCheck: boolean): void {
  const key = accessNode(s, conn, node, Access.Write)!;
  node.key = key;
  try {
    writeNodeRaw(s, conn, key, node, noQuotaCheck);
  } catch (e) {
    // A failed write cannot be undone inside a transaction: the transaction fails instead.
    if (conn?.transaction) conn.transaction.fail = true;
    throw e;
  }
}

/** `askParents(s, conn, name)` is `conn`'s rights on the nearest existing ancestor of `name`. */
function askParents(s: ServerState, conn: ServerConnection | null, name: string): number {
  let node: Node | undefined;
  do {
    name = getParent(name);
    const r = tryReadNode(s, conn, name);
    if (typeof r !== 'string') {
      node = r;
      break;
    }
    if (canPropagate(r)) fail(r);
  } while (name !== '/');
  return node ? permForConn(conn, node.perms) : XS_PERM_NONE;
}

/** `errnoFromParents` hides whether a node exists from a caller the parent does not admit (EACCES). */
function errnoFromParents(s: ServerState, conn: ServerConnection | null, name: string, errnum: XsErrorName, perm: number): XsErrorName {
  if (errnum === 'ENOMEM') return errnum;
  let parentPerm: number;
  try {
    parentPerm = askParents(s, conn, name);
  } catch (e) {
    return errnoOf(e);
  }
  return parentPerm & perm ? errnum : 'EACCES';
}

/** `getNode(s, conn, name, perm)` is the node if `conn` has every right in `perm`; EINVAL/ENOENT/EACCES otherwise. */
export function getNode(s: ServerState, conn: ServerConnection | null, name: string | undefined, perm: number): Node {
  if (name === undefined || !isValidNodename(name, s.quotas.pathMax)) fail('EINVAL');
  let err: XsErrorName;
  const r = tryReadNode(s, conn, name);
  if (typeof r !== 'string') {
    if ((permForConn(conn, r.perms) & perm) === perm) return r;
    err = 'EACCES';
  } else {
    err = r;
  }
  if (!canPropagate(err)) err = errnoFromParents(s, conn, name, err, perm);
  throw new XsErrno(err);
}

/** `constructNode(s, conn, name)` builds `name` and its missing ancestors in memory, inheriting the nearest parent's permissions. */
function constructNode(s: ServerState, conn: ServerConnection | null, name: string): Node {
  const names: string[] = [];
  let parentName = name;
  let parent: Node | undefined;
  while (!parent) {
    names.push(parentName);
    parentName = getParent(parentName);
    const r = tryReadNode(s, conn, parentName);
    if (typeof r === 'string') {
      if (r !== 'ENOENT' || parentName === '/') fail(r);
    } else {
      parent = r;
    }
  }
  let node = parent;
  for (let level = names.length; level > 0; level--) {
    const nodeName = names[level - 1]!;
    parent.children.push(basename(nodeName));
    const perms = copyPerms(parent.perms);
    // Unprivileged domains own what they create; everything else is inherited.
    if (isUnprivileged(conn)) perms[0]!.id = conn!.id;
    node = { name: nodeName, generation: NO_GENERATION, perms, data: EMPTY, children: [], parent };
    parent = node;
  }
  return node;
}

function destroyNode(s: ServerState, conn: ServerConnection | null, node: Node): void {
  if (node.key !== undefined) s.db.delete(node.key);
  domainEntryDec(s, conn, node);
  if (conn?.transaction) conn.transaction.fail = true;
}

/** `createNode(s, conn, name, data)` creates `name` (and missing ancestors) holding `data`, bottom up, within the node quota. */
export function createNode(s: ServerState, conn: ServerConnection | null, name: string, data: Uint8Array): Node {
  const node = constructNode(s, conn, name);
  if (conn?.transaction) conn.transaction.nodeCreated = true;
  node.data = data;
  const done: Node[] = [];
  for (let i: Node | undefined = node; i; i = i.parent) {
    try {
      if (i.parent && domainEntry(conn) >= s.quotas.nodesPerDomain) fail('ENOSPC');
      writeNode(s, conn, i, false);
    } catch (e) {
      for (const j of done) destroyNode(s, conn, j);
      throw e;
    }
    if (i.parent) {
      if (!domainEntryInc(s, conn, i)) {
        if (i.key !== undefined) s.db.delete(i.key);
        fail('ENOMEM');
      }
      done.push(i);
    }
  }
  return node;
}

/** Results of a tree-walk callback (xenstored_core.h WALK_TREE_*). */
export const Walk = { SuccessStop: -100, ErrorStop: -1, Ok: 0, SkipChildren: 1, RmChildEntry: 2 } as const;
export type Walk = (typeof Walk)[keyof typeof Walk];

/** `rmFromParent` drops the child just visited from its parent's list and rewrites the parent. */
function rmFromParent(s: ServerState, conn: ServerConnection | null, parent: Node): Walk {
  const at = parent.childoff! - 1;
  parent.children.splice(at, 1);
  try {
    writeNode(s, conn, parent, true);
  } catch {
    return Walk.ErrorStop;
  }
  parent.childoff = at;
  return Walk.Ok;
}

/** `WalkFuncs` are the callbacks of walkNodeTree, before and after a node's children. */
export interface WalkFuncs {
  enter?: (node: Node) => Walk;
  exit?: (node: Node) => Walk;
}

/**
 * `walkNodeTree(s, conn, root, funcs)` visits `root` and its descendants depth first, in child
 * order: `enter` before a node's children, `exit` after. A callback returning RmChildEntry has
 * its node removed from the parent's child list.
 */
export function walkNodeTree(s: ServerState, conn: ServerConnection | null, root: string, funcs: WalkFuncs): Walk {
  let ret: Walk = Walk.Ok;
  let node: Node | undefined;
  let parent: Node | undefined;
  let name = root;
  const call = (fn: ((n: Node) => Walk) | undefined, n: Node, p: Node | undefined): Walk => {
    if (!fn) return Walk.Ok;
    const r = fn(n);
    return r === Walk.RmChildEntry && p ? rmFromParent(s, conn, p) : r;
  };
  while (ret >= 0) {
    if (node) {
      if (ret !== Walk.Ok || node.childoff! >= node.children.length) {
        parent = node.parent;
        ret = call(funcs.exit, node, parent);
        if (!parent) break;
        node = parent;
        continue;
      }
      name = childName(node.name, node.children[node.childoff!]!);
      node.childoff!++;
      parent = node;
    }
    const r = tryReadNode(s, conn, name);
    if (typeof r === 'string') {
      // A child listed but not stored: the C daemon reports corruption; stop here.
      ret = Walk.ErrorStop;
      break;
    }
    node = r;
    node.parent = parent;
    node.childoff = 0;
    ret = call(funcs.enter, node, parent);
  }
  return ret < 0 ? ret : Walk.Ok;
}

/** `deleteChild` removes `child` from `parent`'s list and rewrites the parent (no quota: it shrinks). */
function deleteChild(s: ServerState, conn: ServerConnection | null, parent: Node, child: string): void {
  const at = parent.children.indexOf(child);
  if (at < 0) fail('EIO');
  parent.children.splice(at, 1);
  try {
    writeNode(s, conn, parent, true);
  } catch {
    fail('EIO');
  }
}

/** `rmNode(s, conn, name)` deletes `name` and its subtree, firing watches while the permissions are still visible. */
export function rmNode(s: ServerState, conn: ServerConnection | null, name: string): void {
  const parentName = getParent(name);
  const parent = tryReadNode(s, conn, parentName);
  if (typeof parent === 'string') fail(canPropagate(parent) ? parent : 'EINVAL');
  let stopErr: XsErrorName | undefined;
  const ret = walkNodeTree(s, conn, name, {
    exit: (node) => {
      let key: string | undefined;
      try {
        key = accessNode(s, conn, node, Access.Delete);
      } catch (e) {
        stopErr = errnoOf(e);
        return Walk.SuccessStop;
      }
      if (key !== undefined) s.db.delete(key);
      // Descendants fire only their exact watches; the removed root fires its ancestors' too.
      fireWatches(s, conn, node.name, node, node.name !== name, undefined);
      domainEntryDec(s, conn, node);
      return Walk.RmChildEntry;
    },
  });
  if (ret < 0) fail(ret === Walk.ErrorStop ? 'EIO' : stopErr ?? 'EIO');
  deleteChild(s, conn, parent, basename(name));
}
