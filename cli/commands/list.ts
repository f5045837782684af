// `xenblk list [--sim DIR | --xen] [--backend-domid N] [--kind KIND] [--json]`: the virtual
// disks in XenStore, as `xl block-list` shows them: both ends' states, size, what is served.
import process from 'node:process';
import { openHost } from '../../lib/host/open.ts';
import { listVbds } from '../../lib/toolstack/list.ts';
import { table } from './stats.ts';

const USAGE = `usage: xenblk list [--sim DIR | --xen] [--backend-domid N] [--kind KIND] [--json]
`;

/** `run(argv)` prints the disks; 0 on success. */
export async function run(argv: string[]): Promise<number> {
  let sim: string | undefined;
  let xen = false;
  let json = false;
  let backendDomid: number | undefined;
  let kind = 'vbd';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string | undefined => argv[++i];
    if (a === '--sim') sim = val();
    else if (a === '--xen') xen = true;
    else if (a === '--json') json = true;
    else if (a === '--kind') kind = val() ?? '';
    else if (a === '--backend-domid') {
      const v = val() ?? '';
      if (!/^[0-9]+$/.test(v)) { process.stderr.write(`xenblk list: --backend-domid takes a domain id, got ${JSON.stringify(v)}\n${USAGE}`); return 2; }
      backendDomid = Number(v);
    } else if (a === '--help' || a === '-h') { process.stdout.write(USAGE); return 0; }
    else { process.stderr.write(`xenblk list: unknown option ${a}\n${USAGE}`); return 2; }
  }
  if (sim === '' || kind === '') { process.stderr.write(`xenblk list: missing value\n${USAGE}`); return 2; }
  const host = await openHost({ ...(sim !== undefined ? { sim } : {}), ...(xen ? { xen: true } : {}) });
  try {
    const disks = await listVbds(host.xenstore, { backendDomid: backendDomid ?? host.domid, kind });
    if (json) {
      process.stdout.write(`${JSON.stringify(disks, null, 2)}\n`);
      return 0;
    }
    if (disks.length === 0) {
      process.stdout.write('no virtual disks\n');
      return 0;
    }
    process.stdout.write(table(
      ['DOMID', 'VDEV', 'DEVID', 'BACKEND', 'FRONTEND', 'SECTORS', 'MODE', 'QUEUES', 'PARAMS'],
      disks.map((d) => [
        String(d.frontendDomid), d.vdev, String(d.devid), d.backendState, d.frontendState,
        d.sectors === undefined ? '-' : String(d.sectors), d.mode ?? '-', d.queues === undefined ? '-' : String(d.queues), d.params ?? '-',
      ]),
    ));
    return 0;
  } finally {
    await host.close();
  }
}
