// Entry point of a simulator daemon child process (startSim runs it from the sources):
//   node --import tsx lib/sim/daemon-main.ts --dir DIR [--nr-frames N] [--nr-grants N] [--superpages] [--verbose] [--exit-with-stdin]
// Prints "ready" on stdout once it accepts connections.
import process from 'node:process';
import { runDaemon } from './run-daemon.ts';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const dir = arg('--dir');
if (dir === undefined) {
  process.stderr.write('usage: daemon-main.ts --dir DIR [--nr-frames N] [--nr-grants N] [--superpages] [--verbose] [--exit-with-stdin]\n');
  process.exit(2);
}
const nrFrames = arg('--nr-frames');
const nrGrants = arg('--nr-grants');
runDaemon({
  dir,
  ...(nrFrames !== undefined ? { nrFrames: Number(nrFrames) } : {}),
  ...(nrGrants !== undefined ? { nrGrants: Number(nrGrants) } : {}),
  superpages: process.argv.includes('--superpages'),
  verbose: process.argv.includes('--verbose'),
  exitWithStdin: process.argv.includes('--exit-with-stdin'),
  onReady: () => process.stdout.write('ready\n'),
}).then((code) => process.exit(code), (e: unknown) => {
  process.stderr.write(`xenblk sim: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
