// The in-memory xenstored's state: a flat database of nodes keyed by path (as the C daemon's
// TDB is), transaction-private copies keyed "<transaction generation>/<path>", the global
// generation counter that conflict detection and DIRECTORY_PART rely on, domains and
// connections. The operations live in the sibling files; this file only holds the data.
import type { XsErrorName, XsMessage } from '../../protocol/xs-wire.ts';
import type { XenstoredQuotas } from './quotas.ts';

/** `XsErrno` is an operation failing with a xenstored error name; the dispatcher turns it into XS_ERROR. */
export class XsErrno extends Error {
  constructor(readonly errno: XsErrorName) {
    super(errno);
  }
}

/** `fail(errno)` throws the xenstored error `errno`. */
export function fail(errno: XsErrorName): never {
  throw new XsErrno(errno);
}

/** `errnoOf(e)` is the xenstored error name carried by `e`; anything else is a bug and is rethrown. */
export function errnoOf(e: unknown): XsErrorName {
  if (e instanceof XsErrno) return e.errno;
  throw e;
}

/** xenstored_core.h NO_GENERATION: the generation recorded for a node that does not exist. */
export const NO_GENERATION = -1;

/** One permission entry as stored: XS_PERM_* bits (IGNORE included) and a domid (unsigned int). */
export interface NodePerm {
  id: number;
  perms: number;
}

/** `StoredNode` is one database record (struct xs_tdb_record_hdr + data + children). */
export interface StoredNode {
  generation: number;
  perms: NodePerm[];
  data: Uint8Array;
  children: string[];
}

/** `Node` is a node read into memory for one operation (struct node). */
export interface Node {
  name: string;
  generation: number;
  perms: NodePerm[];
  data: Uint8Array;
  children: string[];
  /** Set for nodes created by this operation and during tree walks. */
  parent?: Node | undefined;
  /** The database key the last write/delete access resolved to. */
  key?: string;
  /** Tree walk cursor: index of the next child to visit. */
  childoff?: number;
}

/** `AccessedNode` is a transaction's record of one node it touched (struct accessed_node). */
export interface AccessedNode {
  transName: string;
  generation: number;
  perms: NodePerm[] | undefined;
  checkGen: boolean;
  modified: boolean;
  taNode: boolean;
  fireWatch: boolean;
  watchExact: boolean;
}

/** `Transaction` is one open transaction of a connection. */
export interface Transaction {
  readonly id: number;
  readonly generation: number;
  /** Accessed nodes in first-access order (the order watches fire at commit). */
  readonly accessed: Map<string, AccessedNode>;
  /** Change in node count per owning domain, applied at commit. */
  readonly changedDomains: Map<number, number>;
  nodes: number;
  nodeCreated: boolean;
  fail: boolean;
}

/** `Watch` is one registered watch. */
export interface Watch {
  /** Absolute path, or a special @name. */
  readonly node: string;
  readonly token: string;
  /** The implicit path stripped from event paths when the watch was registered relative. */
  readonly relativePath: string | undefined;
}

/** `Domain` is what xenstored knows about a domain (struct domain). */
export interface Domain {
  readonly domid: number;
  /** Generation at the time this record was created: permissions older than the domain are ignored. */
  readonly generation: number;
  introduced: boolean;
  nbentry: number;
  nbwatch: number;
  /** SET_TARGET: the domain this one acts for (a device model for its guest). */
  target: number | undefined;
  /**
   * Domains whose SET_TARGET named this one, most recent first. xenstored implements the
   * target link as a talloc reference on this domain's connection, so each RELEASE of this
   * domain while references remain only drops the most recent reference.
   */
  refs: number[];
}

/** `ServerConnection` is one client connection and what it owns. */
export interface ServerConnection {
  /** The domid the connection acts as (conn->id). */
  readonly id: number;
  /** Set for connections of a domain (conn->domain); dom0 sockets have none, like xenstored's sockets. */
  readonly domain: Domain | undefined;
  readonly watches: Watch[];
  readonly transactions: Map<number, Transaction>;
  /** The transaction of the request being processed (conn->transaction). */
  transaction: Transaction | undefined;
  nextTransactionId: number;
  /** Messages queued for the client in order; flushed after each request. */
  readonly out: XsMessage[];
  closed: boolean;
  /** Delivers queued messages to the transport. */
  readonly send: (msgs: XsMessage[]) => void;
  /** Asks the transport to drop the connection. */
  readonly drop: (reason: string) => void;
}

/** `ServerState` is everything the operations read and change. */
export interface ServerState {
  readonly db: Map<string, StoredNode>;
  generation: number;
  readonly quotas: XenstoredQuotas;
  readonly domains: Map<number, Domain>;
  readonly connections: Set<ServerConnection>;
  /** Permission lists of the special watch paths @introduceDomain and @releaseDomain. */
  readonly specialPerms: Map<string, NodePerm[]>;
  /** Whether a domain exists (xc_domain_getinfo); permissions naming a dead domain are ignored. */
  readonly isDomainAlive: (domid: number) => boolean;
  /** Connections with output queued by the current request. */
  readonly dirty: Set<ServerConnection>;
}
