// The XenStore client contract every layer above codes against. One implementation
// (xenstore/client.ts) runs over any XenstoreTransport: the xenstored Unix socket, the
// /dev/xen/xenbus device, or a simulated domain's socket.
import type { XsPermission } from '../protocol/xs-wire.ts';

/** `WatchEvent` is one firing of a watch: the path that changed and the watch's token. */
export interface WatchEvent {
  readonly path: string;
  readonly token: string;
}

/** Operations valid both outside and inside a transaction. Paths are absolute or relative to the caller's domain path. */
export interface XenstoreOps {
  /** `read(path)` is the value at `path`; XenstoreError ENOENT when absent. */
  read(path: string): Promise<string>;
  /** `tryRead(path)` is the value at `path`, or undefined when it does not exist. */
  tryRead(path: string): Promise<string | undefined>;
  /** `write(path, value)` stores `value`, creating missing parents as xenstored does. */
  write(path: string, value: string): Promise<void>;
  mkdir(path: string): Promise<void>;
  /** `rm(path)` removes `path` and everything below it. */
  rm(path: string): Promise<void>;
  /** `directory(path)` is the names of the children of `path` (DIRECTORY_PART when large). */
  directory(path: string): Promise<string[]>;
  getPermissions(path: string): Promise<XsPermission[]>;
  setPermissions(path: string, perms: readonly XsPermission[]): Promise<void>;
}

/** A registered watch; iterate it for events (the initial event first). `close()` unwatches. */
export interface XenstoreWatch extends AsyncIterable<WatchEvent> {
  readonly path: string;
  readonly token: string;
  close(): Promise<void>;
}

export interface TransactionOptions {
  /** Attempts before giving up on repeated EAGAIN (default 16). */
  readonly maxAttempts?: number;
}

/** A connection to xenstored. */
export interface Xenstore extends XenstoreOps {
  /** `transaction(fn)` runs `fn` in a transaction, retrying on EAGAIN with bounded backoff. */
  transaction<T>(fn: (tx: XenstoreOps) => Promise<T>, opts?: TransactionOptions): Promise<T>;
  /** `watch(path, token?)` registers a watch on `path` and its descendants. */
  watch(path: string, token?: string): XenstoreWatch;
  getDomainPath(domid: number): Promise<string>;
  introduceDomain(domid: number, mfn: bigint, port: number): Promise<void>;
  releaseDomain(domid: number): Promise<void>;
  isDomainIntroduced(domid: number): Promise<boolean>;
  /** `close()` ends the connection: pending requests reject, watches end. */
  close(): Promise<void>;
}
