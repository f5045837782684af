// How `xenblk stats` reaches running backends: each serving process listens on a Unix socket
// in a per-user run directory and answers every connection with one JSON report of its disks
// (the role Linux's sysfs statistics/ directory plays for the kernel backend). A socket whose
// process died refuses connections; the reader skips it and removes it.
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BlkbackDiskReport } from './backend.ts';

/** What one backend process reports. */
export interface ControlReport {
  readonly pid: number;
  /** `sim:<dir>` or `xen`: which host the process serves on. */
  readonly host: string;
  readonly backendDomid: number;
  readonly startedAt: string;
  readonly disks: readonly BlkbackDiskReport[];
}

/** `defaultControlDir(env)` is $XENBLK_RUN_DIR, else $XDG_RUNTIME_DIR/xenblk, else <tmp>/xenblk-<uid>. */
export function defaultControlDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XENBLK_RUN_DIR) return env.XENBLK_RUN_DIR;
  if (env.XDG_RUNTIME_DIR) return path.join(env.XDG_RUNTIME_DIR, 'xenblk');
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  return path.join(os.tmpdir(), `xenblk-${uid}`);
}

/** A listening control socket. */
export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

/** `serveControl(dir, report)` listens on `<dir>/blkback-<pid>.sock` and answers each connection with `report()`. */
export async function serveControl(dir: string, report: () => ControlReport): Promise<ControlServer> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const sockPath = path.join(dir, `blkback-${process.pid}.sock`);
  try { fs.unlinkSync(sockPath); } catch { /* none */ }
  const server = net.createServer((sock) => {
    sock.on('error', () => {});
    let text: string;
    try {
      text = JSON.stringify(report());
    } catch (e) {
      text = JSON.stringify({ error: e instanceof Error ? e.message : String(e) });
    }
    sock.end(`${text}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(sockPath, () => resolve());
  });
  server.unref();
  return {
    path: sockPath,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      try { fs.unlinkSync(sockPath); } catch { /* gone */ }
    }),
  };
}

/** `queryControl(dir)` is the report of every live backend process in `dir` (stale sockets are removed). */
export async function queryControl(dir: string): Promise<ControlReport[]> {
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => /^blkback-[0-9]+\.sock$/.test(n));
  } catch {
    return [];
  }
  const out: ControlReport[] = [];
  for (const n of names.sort()) {
    const p = path.join(dir, n);
    const r = await queryOne(p);
    if (r === 'dead') {
      try { fs.unlinkSync(p); } catch { /* gone */ }
      continue;
    }
    if (r !== undefined) out.push(r);
  }
  return out;
}

/** One process's report; 'dead' when nobody listens (its process is gone), undefined when it did not answer sensibly. */
function queryOne(sockPath: string): Promise<ControlReport | 'dead' | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const sock = net.connect(sockPath);
    const timer = setTimeout(() => { sock.destroy(); resolve(undefined); }, 2000);
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(e.code === 'ECONNREFUSED' || e.code === 'ENOENT' ? 'dead' : undefined);
    });
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as ControlReport;
        resolve(Array.isArray(v.disks) ? v : undefined);
      } catch {
        resolve(undefined);
      }
    });
  });
}
