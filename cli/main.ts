// The `xenblk` command line: one subcommand per file in cli/commands, loaded on demand.
import process from 'node:process';

export type Command = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, { summary: string; load: () => Promise<{ run: Command }> }> = {
  demo: { summary: 'start a simulated host, serve a disk, run a workload, tear down (npm start)', load: () => import('./commands/demo.ts') },
  'device-number': { summary: 'convert a virtual device name <-> number (xen-vbd-interface(7))', load: () => import('./commands/device-number.ts') },
  xenstored: { summary: 'run the in-memory xenstored on a Unix socket', load: () => import('./commands/xenstored.ts') },
  sim: { summary: 'simulated Xen host: sim up | down | status', load: () => import('./commands/sim.ts') },
  serve: { summary: 'serve a file as a virtual disk to a domain (blkback)', load: () => import('./commands/serve.ts') },
  attach: { summary: 'attach to a virtual disk as a frontend (blkfront): --dump, --write, --info', load: () => import('./commands/attach.ts') },
  list: { summary: 'list virtual block devices', load: () => import('./commands/list.ts') },
  stats: { summary: 'per-disk backend statistics', load: () => import('./commands/stats.ts') },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
  const lines = Object.entries(COMMANDS).map(([k, c]) => `  ${k.padEnd(width)}  ${c.summary}`);
  return `usage: xenblk <command> [options]\n\ncommands:\n${lines.join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const cmd = COMMANDS[name];
  if (cmd === undefined) {
    process.stderr.write(`xenblk: unknown command '${name}'\n${usage()}`);
    return 2;
  }
  const mod = await cmd.load();
  return mod.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    process.stderr.write(`xenblk: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
