// The in-memory xenstored behind Unix sockets: each listening socket stands for one domid
// (0 = privileged dom0, as the C daemon's socket; N = domain N, as if on its ring), so a
// simulator can give every simulated domain its own socket. Framing errors (a header
// announcing more than XENSTORE_PAYLOAD_MAX) drop the client, as xenstored does.
import net from 'node:net';
import fs from 'node:fs';
import { XsMessageReader, encodeMessage } from '../../protocol/xs-wire.ts';
import { XenstoredCore, type CoreConnection } from './core.ts';
import type { XenstoredQuotas } from './quotas.ts';

export type { XenstoredQuotas } from './quotas.ts';
export { DEFAULT_QUOTAS } from './quotas.ts';
export { XenstoredCore } from './core.ts';
export { inProcessTransport } from './in-process-transport.ts';

/** Bytes an unprivileged client may leave unread before it is dropped (xenstored's memory quota is 2.5 MB). */
const MAX_UNREAD_UNPRIVILEGED = 4 * 1024 * 1024;

/** `Xenstored` is a running in-memory xenstored. */
export interface Xenstored {
  /** accept connections on a Unix socket; every connection on it acts as `domid` (0 = privileged dom0) */
  listen(socketPath: string, domid: number): Promise<void>;
  /** toolstack-side domain lifecycle; fires @introduceDomain / @releaseDomain; release drops the domain's connections, watches, transactions */
  introduceDomain(domid: number): void;
  releaseDomain(domid: number): void;
  close(): Promise<void>;
  /** The store itself, for in-process inspection and tests. */
  readonly core: XenstoredCore;
}

/** `XenstoredOptions` configure createXenstored. */
export interface XenstoredOptions {
  readonly quotas?: Partial<XenstoredQuotas>;
  /** Whether a domain exists, for permissions naming it (default: every domid exists). */
  readonly isDomainAlive?: (domid: number) => boolean;
  /** Diagnostics (dropped clients, internal errors); default: silent. */
  readonly log?: (line: string) => void;
}

/** `createXenstored(opts)` is a new in-memory xenstored with no sockets yet. */
export function createXenstored(opts: XenstoredOptions = {}): Xenstored {
  const log = opts.log ?? (() => {});
  const core = new XenstoredCore({
    ...(opts.quotas ? { quotas: opts.quotas } : {}),
    ...(opts.isDomainAlive ? { isDomainAlive: opts.isDomainAlive } : {}),
    onInternalError: (e) => log(`internal error: ${e instanceof Error ? e.stack ?? e.message : String(e)}`),
  });
  const servers = new Map<string, net.Server>();
  const sockets = new Set<net.Socket>();
  let closed = false;

  function attach(sock: net.Socket, domid: number): void {
    sockets.add(sock);
    const reader = new XsMessageReader();
    let conn: CoreConnection | undefined;
    const drop = (reason: string): void => {
      log(`dropping domid ${domid} client: ${reason}`);
      conn?.close();
      sock.destroy();
    };
    conn = core.connect(domid, {
      send: (msgs) => {
        if (sock.destroyed) return;
        for (const m of msgs) sock.write(encodeMessage(m));
        if (domid !== 0 && sock.writableLength > MAX_UNREAD_UNPRIVILEGED) drop('too much unread output');
      },
      drop: (reason) => {
        // Released by the toolstack: flush what is queued, then hang up.
        log(`closing domid ${domid} client: ${reason}`);
        sock.end();
      },
    });
    sock.on('data', (chunk: Buffer) => {
      if (reader.error) return;
      // Requests completed before a bad frame in the same chunk are still served, as the C
      // daemon (which reads one message at a time) serves them.
      for (const m of reader.feed(chunk)) {
        if (conn!.closed) break;
        conn!.receive(m);
      }
      // Re-read: feed() may have set it (TypeScript keeps the narrowing from the check above).
      const err = (reader as { readonly error: Error | undefined }).error;
      if (err) drop(err.message);
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      sockets.delete(sock);
      conn!.close();
    });
  }

  return {
    core,
    listen(socketPath, domid) {
      if (closed) return Promise.reject(new Error('xenstored: closed'));
      if (!Number.isInteger(domid) || domid < 0 || domid >= 0x7ff0) return Promise.reject(new RangeError(`xenstored: domid ${domid} out of range`));
      if (servers.has(socketPath)) return Promise.reject(new Error(`xenstored: already listening on ${socketPath}`));
      // Like xenstored's init_sockets: a stale socket file from a dead daemon is replaced.
      try {
        if (fs.lstatSync(socketPath).isSocket()) fs.unlinkSync(socketPath);
      } catch {
        // absent: fine
      }
      const server = net.createServer((sock) => attach(sock, domid));
      servers.set(socketPath, server);
      return new Promise<void>((resolve, reject) => {
        server.once('error', (e) => {
          servers.delete(socketPath);
          reject(e);
        });
        server.listen(socketPath, () => {
          try {
            fs.chmodSync(socketPath, 0o600);
          } catch {
            // best effort, as the socket may already be gone in a racing close()
          }
          resolve();
        });
      });
    },
    introduceDomain(domid) {
      core.introduceDomain(domid);
    },
    releaseDomain(domid) {
      core.releaseDomain(domid);
    },
    async close() {
      closed = true;
      const waits = [...servers.entries()].map(([path, srv]) => new Promise<void>((resolve) => {
        srv.close(() => resolve());
        try {
          fs.unlinkSync(path);
        } catch {
          // already gone
        }
      }));
      servers.clear();
      for (const s of sockets) s.destroy();
      sockets.clear();
      await Promise.all(waits);
    },
  };
}
