// Opening a XenStore connection the way Xen's own tools do (libxenstore xs_open): the
// xenstored socket first (XENSTORED_PATH, else $XENSTORED_RUNDIR/socket, else
// /var/run/xenstored/socket), then the xenbus device (XENSTORED_PATH, else /dev/xen/xenbus,
// else /proc/xen/xenbus).
import fs from 'node:fs';
import { XenstoreClient, type ClientOptions } from './client.ts';
import { XenstoreError } from './errors.ts';
import { openSocketTransport } from './socket-transport.ts';
import { openXenbusTransport } from './xenbus-transport.ts';
import type { Xenstore } from './xenstore.ts';

/** `ConnectOptions` choose the transport; by default whatever exists, socket first. */
export interface ConnectOptions extends ClientOptions {
  socketPath?: string;
  device?: string;
  transport?: 'socket' | 'xenbus';
}

/** `defaultSocketPath(env)` is where libxenstore looks for the xenstored socket. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.XENSTORED_PATH ?? `${env.XENSTORED_RUNDIR ?? '/var/run/xenstored'}/socket`;
}

/** `defaultDevicePath(env)` is the xenbus device libxenstore would open. */
export function defaultDevicePath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XENSTORED_PATH) return env.XENSTORED_PATH;
  return fs.existsSync('/dev/xen/xenbus') ? '/dev/xen/xenbus' : '/proc/xen/xenbus';
}

/** picks XENSTORED_PATH / /var/run/xenstored/socket / /dev/xen/xenbus as Xen's tools do */
export async function connect(opts: ConnectOptions = {}): Promise<Xenstore> {
  return connectClient(opts);
}

/** `connectClient(opts)` is connect() typed as the concrete client (extra low-level operations). */
export async function connectClient(opts: ConnectOptions = {}): Promise<XenstoreClient> {
  const kind = opts.transport ?? (opts.socketPath !== undefined ? 'socket' : opts.device !== undefined ? 'xenbus' : undefined);
  if (kind === 'socket') return new XenstoreClient(await openSocketTransport(opts.socketPath ?? defaultSocketPath()), opts);
  if (kind === 'xenbus') return new XenstoreClient(await openXenbusTransport(opts.device ?? defaultDevicePath()), opts);
  const socketPath = defaultSocketPath();
  let socketError: Error;
  try {
    return new XenstoreClient(await openSocketTransport(socketPath), opts);
  } catch (e) {
    socketError = e as Error;
  }
  const device = defaultDevicePath();
  try {
    return new XenstoreClient(await openXenbusTransport(device), opts);
  } catch (e) {
    throw new XenstoreError('ENOENT', 'CONNECT', undefined,
      `no xenstored: ${socketError.message}; ${(e as Error).message} (set XENSTORED_PATH, or start one with: xenblk xenstored --socket PATH)`);
  }
}
