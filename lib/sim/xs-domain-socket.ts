// A simulated domain's own XenStore socket: every connection on it acts as that domain (as if
// it came over the domain's xenstore ring). Built on the in-memory xenstored's public core API
// because the simulator must also stop listening when the domain dies, which
// Xenstored.listen() offers no way to do (it would leak one listening socket per dead domain);
// the per-connection behaviour mirrors xenstore/server/xenstored.ts: xs_wire.h framing, a
// framing error or too much unread output drops the client, a released domain is hung up on.
import fs from 'node:fs';
import net from 'node:net';
import { XsMessageReader, encodeMessage } from '../../protocol/xs-wire.ts';
import type { XenstoredCore, CoreConnection } from '../../xenstore/server/core.ts';

/** Bytes a domain may leave unread before it is dropped (as xenstored.ts). */
const MAX_UNREAD = 4 * 1024 * 1024;

/** A listening domain socket. */
export interface DomainSocket {
  /** `close()` stops listening, removes the socket file and hangs up on every client. */
  close(): Promise<void>;
}

/** `listenDomainSocket(core, socketPath, domid)` serves `core` to domain `domid` on `socketPath`. */
export async function listenDomainSocket(core: XenstoredCore, socketPath: string, domid: number): Promise<DomainSocket> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    const reader = new XsMessageReader();
    let conn: CoreConnection | undefined;
    const drop = (): void => {
      conn?.close();
      sock.destroy();
    };
    conn = core.connect(domid, {
      send: (msgs) => {
        if (sock.destroyed) return;
        for (const m of msgs) sock.write(encodeMessage(m));
        if (sock.writableLength > MAX_UNREAD) drop();
      },
      drop: () => { sock.end(); },
    });
    sock.on('data', (chunk: Buffer) => {
      let msgs;
      try {
        msgs = reader.feed(chunk);
      } catch {
        drop();
        return;
      }
      for (const m of msgs) {
        if (conn!.closed) break;
        conn!.receive(m);
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      sockets.delete(sock);
      conn!.close();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  fs.chmodSync(socketPath, 0o600);
  return {
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      fs.rmSync(socketPath, { force: true });
      for (const s of sockets) s.destroy();
      sockets.clear();
    }),
  };
}
