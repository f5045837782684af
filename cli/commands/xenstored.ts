// `xenblk xenstored --socket PATH [--foreground] [--pid-file FILE] [--domain DOMID:PATH]...
// [--quota NAME=VALUE]...`: the in-memory xenstored on a Unix socket (privileged, dom0), plus
// optional per-domain sockets. Without --foreground it daemonizes: the command returns once
// the daemon listens, leaving its pid in the pid file (default PATH.pid).
import process from 'node:process';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { createXenstored, DEFAULT_QUOTAS, type XenstoredCore, type XenstoredQuotas } from '../../xenstore/server/xenstored.ts';
import { XsOp } from '../../protocol/xs-wire.ts';
import { parseArgs } from '../args.ts';

const USAGE = `usage: xenblk xenstored --socket PATH [--foreground] [--pid-file FILE]
                         [--domain DOMID:PATH]... [--quota NAME=VALUE]... [--verbose]
  --socket PATH          privileged (dom0) socket, as /var/run/xenstored/socket
  --foreground           stay in the foreground (default: daemonize)
  --pid-file FILE        where the daemon's pid goes (default: PATH.pid)
  --domain DOMID:PATH    also listen on PATH for domain DOMID: introduced at start, with a
                         home /local/domain/DOMID that it owns (what a toolstack sets up)
  --quota NAME=VALUE     ${Object.keys(DEFAULT_QUOTAS).join(', ')}
`;

interface Args {
  socket: string;
  foreground: boolean;
  pidFile: string;
  domains: { domid: number; path: string }[];
  quotas: Partial<Record<keyof XenstoredQuotas, number>>;
  verbose: boolean;
}

function parse(argv: string[]): Args | string {
  let socket: string | undefined;
  let pidFile: string | undefined;
  let foreground = false;
  let verbose = false;
  const domains: Args['domains'] = [];
  const quotas: Args['quotas'] = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--socket') socket = val();
    else if (a === '--pid-file') pidFile = val();
    else if (a === '--foreground') foreground = true;
    else if (a === '--verbose') verbose = true;
    else if (a === '--domain') {
      const m = /^(\d+):(.+)$/.exec(val());
      if (!m || Number(m[1]) < 1 || Number(m[1]) > 0x7fef) return `--domain takes DOMID:PATH with 1 <= DOMID < 32752, got ${argv[i]}`;
      domains.push({ domid: Number(m[1]), path: m[2]! });
    } else if (a === '--quota') {
      const m = /^([A-Za-z]+)=(\d+)$/.exec(val());
      if (!m || !(m[1]! in DEFAULT_QUOTAS)) return `--quota takes NAME=VALUE with NAME one of ${Object.keys(DEFAULT_QUOTAS).join(', ')}, got ${argv[i]}`;
      quotas[m[1] as keyof XenstoredQuotas] = Number(m[2]);
    } else if (a === '--help' || a === '-h') return '';
    else return `unknown option ${a}`;
  }
  if (socket === undefined) return '--socket PATH is required';
  return { socket, foreground, pidFile: pidFile ?? `${socket}.pid`, domains, quotas, verbose };
}

/** `run(argv)` runs the xenstored command; resolves with the exit code (foreground: when a signal stops it). */
export async function run(argv: string[]): Promise<number> {
  const args = parseArgs('xenstored', argv, parse, USAGE);
  if (typeof args === 'number') return args;
  return args.foreground ? foreground(args) : daemonize(argv);
}

async function foreground(args: Args): Promise<number> {
  const xs = createXenstored({
    quotas: args.quotas,
    ...(args.verbose ? { log: (l: string) => process.stderr.write(`xenstored: ${l}\n`) } : {}),
  });
  try {
    await xs.listen(args.socket, 0);
    for (const d of args.domains) {
      await xs.listen(d.path, d.domid);
      xs.introduceDomain(d.domid);
      makeHome(xs.core, d.domid);
    }
  } catch (e) {
    await xs.close();
    process.stderr.write(`xenblk xenstored: ${(e as Error).message}\n`);
    return 1;
  }
  fs.writeFileSync(args.pidFile, `${process.pid}\n`);
  // Readiness for a daemonizing parent, which passes a pipe and names its fd.
  const readyFd = Number(process.env.XENBLK_XENSTORED_READY_FD);
  if (Number.isInteger(readyFd) && readyFd > 2) {
    delete process.env.XENBLK_XENSTORED_READY_FD;
    try {
      fs.writeSync(readyFd, 'ready\n');
      fs.closeSync(readyFd);
    } catch {
      // the parent gave up waiting: nobody to tell
    }
  }
  process.stderr.write(`xenblk xenstored: listening on ${args.socket} (pid ${process.pid})\n`);
  return new Promise<number>((resolve) => {
    const stop = (): void => {
      void xs.close().then(() => {
        try {
          fs.unlinkSync(args.pidFile);
        } catch {
          // already gone
        }
        resolve(0);
      });
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}

/** `makeHome(core, domid)` does the toolstack's part for a domain: mkdir its home and give it to the domain. */
function makeHome(core: XenstoredCore, domid: number): void {
  const home = `/local/domain/${domid}`;
  const errors: string[] = [];
  const conn = core.connect(0, {
    send: (msgs) => {
      for (const m of msgs) if (m.type === XsOp.ERROR) errors.push(new TextDecoder().decode(m.payload));
    },
    drop: () => {},
  });
  const enc = new TextEncoder();
  conn.receive({ type: XsOp.MKDIR, reqId: 1, txId: 0, payload: enc.encode(`${home}\0`) });
  conn.receive({ type: XsOp.SET_PERMS, reqId: 2, txId: 0, payload: enc.encode(`${home}\0n${domid}\0`) });
  conn.close();
  if (errors.length > 0) throw new Error(`cannot create ${home}: ${errors.join(', ')}`);
}

async function daemonize(argv: string[]): Promise<number> {
  const script = process.argv[1];
  if (script === undefined) throw new Error('cannot find the xenblk entry script to daemonize');
  const child = spawn(process.execPath, [...process.execArgv, script, 'xenstored', ...argv, '--foreground'], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, XENBLK_XENSTORED_READY_FD: '3' },
  });
  const ready = await new Promise<boolean>((resolve) => {
    const pipe = child.stdio[3] as NodeJS.ReadableStream | null;
    let got = '';
    pipe?.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.includes('ready')) resolve(true);
    });
    pipe?.on('end', () => resolve(got.includes('ready')));
    child.once('exit', () => resolve(false));
  });
  if (!ready) {
    process.stderr.write(`xenblk xenstored: daemon failed to start (try --foreground to see why)\n`);
    return 1;
  }
  (child.stdio[3] as NodeJS.ReadableStream & { destroy(): void }).destroy();
  child.unref();
  process.stdout.write(`${child.pid}\n`);
  return 0;
}
