// `xenblk device-number <name-or-number>`: converts between a virtual device name and the
// number a toolstack writes as `virtual-device` and uses as the xenstore key (xen-vbd-interface(7)).
import process from 'node:process';
import { DeviceNumberError, isNumberInput, resolveDevice } from '../../protocol/device-number.ts';

const USAGE = `usage: xenblk device-number [--json] <name-or-number>

Converts a Xen virtual block device name to its device number (the virtual-device value and
xenstore key, xen-vbd-interface(7)) and a number to its canonical name.

  xvda        -> 51712        xvd<letters>[N]  Xen virtual disk (letters: a..z, aa, ...)
  51712       -> xvda         sd<letters>[N]   SCSI disk a..p, partitions 0..15
  d536p37     -> 268572709    hd<letters>[N]   IDE disk a..d, partitions 0..63
  268572709   -> xvdtq37      d<N>[p<M>]       Xen virtual disk N < 2^20, partition M <= 255

Numbers are decimal or 0x-hex. Partitions and numbers take no leading zeros.

options:
  --json      print {"number","name","bus","disk","partition"} instead
  -h, --help  print this help

exit status: 0 converted, 1 invalid device, 2 usage error
`;

/** `run(argv)` converts one device name or number and returns the exit status. */
export async function run(argv: string[]): Promise<number> {
  let json = false;
  const inputs: string[] = [];
  let optionsDone = false;
  for (const arg of argv) {
    if (!optionsDone && (arg === '-h' || arg === '--help')) {
      process.stdout.write(USAGE);
      return 0;
    }
    if (!optionsDone && arg === '--json') json = true;
    else if (!optionsDone && arg === '--') optionsDone = true;
    // A negative number is an input (refused later with its reason), not an option.
    else if (!optionsDone && arg.startsWith('-') && !/^-[0-9]+$/.test(arg)) {
      process.stderr.write(`xenblk device-number: unknown option '${arg}' (see --help)\n`);
      return 2;
    } else inputs.push(arg);
  }
  if (inputs.length !== 1) {
    process.stderr.write(`xenblk device-number: expected one name or number, got ${inputs.length} (see --help)\n`);
    return 2;
  }
  const input = inputs[0]!;
  try {
    const dev = resolveDevice(input);
    const { number, name, bus, disk, partition } = dev;
    if (json) process.stdout.write(`${JSON.stringify({ number, name, bus, disk, partition })}\n`);
    else process.stdout.write(`${isNumberInput(input) ? name : String(number)}\n`);
    return 0;
  } catch (err) {
    if (!(err instanceof DeviceNumberError)) throw err;
    process.stderr.write(`xenblk device-number: ${err.message}\n`);
    return 1;
  }
}
