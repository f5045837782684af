// The xenstored Unix socket (dom0 and driver domains with a socket, and every simulated domain).
import net from 'node:net';
import { XenstoreError } from './errors.ts';
import type { TransportSink, XenstoreTransport } from './transport.ts';

/** `openSocketTransport(path)` connects to xenstored's Unix socket at `path`. */
export function openSocketTransport(path: string): Promise<XenstoreTransport> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(path);
    const onError = (e: NodeJS.ErrnoException): void => {
      reject(new XenstoreError(e.code ?? 'EIO', 'CONNECT', path, `cannot connect to xenstored socket: ${e.message}`));
    };
    sock.once('error', onError);
    sock.once('connect', () => {
      sock.off('error', onError);
      resolve(new SocketTransport(sock, path));
    });
  });
}

class SocketTransport implements XenstoreTransport {
  readonly description: string;
  private closing = false;

  constructor(private readonly sock: net.Socket, path: string) {
    this.description = `socket ${path}`;
    sock.setNoDelay?.(true);
  }

  start(sink: TransportSink): void {
    let ended = false;
    const end = (err?: Error): void => {
      if (ended) return;
      ended = true;
      sink.end(err);
    };
    this.sock.on('data', (chunk: Buffer) => sink.data(chunk));
    this.sock.on('error', (e) => end(this.closing ? undefined : e));
    this.sock.on('close', () => end(this.closing ? undefined : new Error(`xenstored closed the connection (${this.description})`)));
  }

  send(bytes: Uint8Array): void {
    if (!this.sock.destroyed) this.sock.write(bytes);
  }

  close(): Promise<void> {
    this.closing = true;
    if (this.sock.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      this.sock.once('close', () => resolve());
      this.sock.destroy();
    });
  }
}
