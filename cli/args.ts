// The one convention every subcommand's argument parsing follows: a parser returns the options,
// or a string ('' for --help, else what is wrong) or throws; usage goes to stderr and the exit
// code is 0 for --help and 2 for a usage error.

/** `parseArgs(command, argv, parse, usage)` is the parsed options, or the exit code after printing usage. */
export function parseArgs<A>(command: string, argv: string[], parse: (argv: string[]) => A | string, usage: string): A | number {
  let args: A | string;
  try {
    args = parse(argv);
  } catch (e) {
    args = (e as Error).message;
  }
  if (typeof args !== 'string') return args;
  process.stderr.write(args === '' ? usage : `xenblk ${command}: ${args}\n${usage}`);
  return args === '' ? 0 : 2;
}
