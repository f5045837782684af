// `xenblk sim up | down | status`: the simulated Xen host (lib/sim). `up` starts the daemon (in
// the background unless --foreground), `down` stops it (it removes everything it created),
// `status` lists domains, their processes, grants in use and bound event channels.
// Other commands reach the simulator through $XENBLK_SIM_DIR and choose their domain with
// $XENBLK_DOMID (see lib/host/open.ts).
import process from 'node:process';
import { defaultSimDir } from '../../lib/sim/paths.ts';
import { runDaemon } from '../../lib/sim/run-daemon.ts';
import { daemonPid, readStatus, spawnBackgroundDaemon, stopDaemon } from '../../lib/sim/start.ts';
import type { SimStatus } from '../../lib/sim/daemon.ts';

const USAGE = `usage: xenblk sim up [--dir DIR] [--foreground] [--nr-frames N] [--nr-grants N] [--superpages]
                     [--verbose]
       xenblk sim down [--dir DIR]
       xenblk sim status [--dir DIR] [--json]

  up          start a simulated Xen host: xenstored, domain list, memory, grant tables,
              event channels (background daemon unless --foreground)
  down        stop it; it removes every file it made
  status      domains, attached processes, grants in use, bound event channels
  --dir DIR   simulator directory (default $XENBLK_SIM_DIR, else $XDG_RUNTIME_DIR/xenblk-sim,
              else /dev/shm/xenblk-sim-<uid>; now: ${defaultSimDir()})
  --nr-frames N  pages of RAM per domain (default 16384, sparse)
  --nr-grants N  grant-table entries per domain (default 16384)
  --superpages   each domain's RAM allocated at once on 2 MiB pages, as Xen gives guests
                 superpages (needs MADV_COLLAPSE, Linux 6.1; default: sparse 4 KiB pages)

Attach a program as domain N with XENBLK_SIM_DIR=DIR XENBLK_DOMID=N.
`;

interface Args {
  sub: string;
  dir: string;
  foreground: boolean;
  json: boolean;
  verbose: boolean;
  exitWithStdin: boolean;
  nrFrames?: number;
  nrGrants?: number;
  superpages?: boolean;
}

function parse(argv: string[]): Args | string {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '-h' || sub === '--help') return '';
  if (!['up', 'down', 'status'].includes(sub)) return `unknown subcommand '${sub}'`;
  const a: Args = { sub, dir: defaultSimDir(), foreground: false, json: false, verbose: false, exitWithStdin: false };
  for (let i = 0; i < rest.length; i++) {
    const o = rest[i]!;
    const val = (): string => {
      const v = rest[++i];
      if (v === undefined) throw new Error(`${o} needs a value`);
      return v;
    };
    const int = (): number => {
      const v = val();
      if (!/^\d+$/.test(v)) throw new Error(`${o} takes a number, got '${v}'`);
      return Number(v);
    };
    if (o === '--dir') a.dir = val();
    else if (o === '--foreground' && sub === 'up') a.foreground = true;
    else if (o === '--verbose' && sub === 'up') a.verbose = true;
    // Undocumented: used by lib/sim/start.ts startSim() when running from the bundle.
    else if (o === '--exit-with-stdin' && sub === 'up') a.exitWithStdin = true;
    else if (o === '--nr-frames' && sub === 'up') a.nrFrames = int();
    else if (o === '--nr-grants' && sub === 'up') a.nrGrants = int();
    else if (o === '--superpages' && sub === 'up') a.superpages = true;
    else if (o === '--json' && sub === 'status') a.json = true;
    else if (o === '-h' || o === '--help') return '';
    else return `unknown option '${o}' for sim ${sub}`;
  }
  return a;
}

function printStatus(s: SimStatus): void {
  const out: string[] = [`simulator ${s.dir} (daemon pid ${s.pid})`];
  for (const d of s.domains) {
    out.push(`domain ${d.domid} (instance ${d.instance})${d.dying ? ' dying: pages still mapped by others' : ''}${d.superpages === 'off' ? '' : `; RAM on 2 MiB pages: ${d.superpages}`}`);
    out.push(`  processes: ${d.processes.length === 0 ? 'none' : d.processes.map((p) => `pid ${p.pid} (slot ${p.slot}, ${p.mappedPages} pages mapped)`).join(', ')}`);
    out.push(`  grants: ${d.granted} granted, ${d.grantsMapped} mapped by others`);
    if (d.ports.length === 0) out.push('  event channels: none');
    for (const p of d.ports) {
      out.push(`  port ${p.port}: ${p.state === 'interdomain' ? `connected to d${p.remoteDomid} port ${p.remotePort}` : `unbound, for d${p.remoteDomid}`} (slot ${p.slot})`);
    }
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

/** `run(argv)` runs `xenblk sim ...` and resolves with the exit status. */
export async function run(argv: string[]): Promise<number> {
  let a: Args | string;
  try {
    a = parse(argv);
  } catch (e) {
    a = (e as Error).message;
  }
  if (typeof a === 'string') {
    process.stderr.write(a ? `xenblk sim: ${a}\n${USAGE}` : USAGE);
    return a ? 2 : 0;
  }
  const sizes = {
    ...(a.nrFrames !== undefined ? { nrFrames: a.nrFrames } : {}),
    ...(a.nrGrants !== undefined ? { nrGrants: a.nrGrants } : {}),
    ...(a.superpages === true ? { superpages: true } : {}),
  };
  switch (a.sub) {
    case 'up': {
      const running = daemonPid(a.dir);
      if (running !== undefined) {
        process.stderr.write(`xenblk sim: already running in ${a.dir} (pid ${running})\n`);
        return 1;
      }
      if (a.foreground) {
        const code = await runDaemon({
          dir: a.dir, ...sizes, verbose: a.verbose, exitWithStdin: a.exitWithStdin, onReady: () => process.stdout.write('ready\n'),
        });
        // A dedicated daemon process: leave now rather than wait for stray handles.
        if (a.exitWithStdin) process.exit(code);
        return code;
      }
      const entry = process.argv[1];
      if (entry === undefined) throw new Error('cannot locate the xenblk script to start the daemon');
      const pid = await spawnBackgroundDaemon(a.dir, { ...sizes, verbose: a.verbose }, process.execArgv, entry);
      process.stdout.write(`simulator running in ${a.dir} (pid ${pid})\nexport XENBLK_SIM_DIR=${a.dir}\n`);
      return 0;
    }
    case 'down': {
      const was = await stopDaemon(a.dir);
      process.stdout.write(was ? `simulator in ${a.dir} stopped\n` : `no simulator running in ${a.dir}\n`);
      return 0;
    }
    default: {
      if (daemonPid(a.dir) === undefined) {
        process.stderr.write(`xenblk sim: no simulator running in ${a.dir} (start one with: xenblk sim up)\n`);
        return 1;
      }
      const s = readStatus(a.dir);
      if (a.json) process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
      else printStatus(s);
      return 0;
    }
  }
}
