// `xenblk stats [--json] [--run-dir DIR]`: per-disk statistics of every running backend
// process (`xenblk serve` and any program using lib/blkback with a control socket), named as
// Linux xen-blkback's sysfs statistics: oo_req rd_req wr_req f_req ds_req rd_sect wr_sect,
// plus errors, requests in flight and latency percentiles.
import process from 'node:process';
import { defaultControlDir, queryControl } from '../../lib/blkback/control.ts';
import { canonicalName } from '../../protocol/device-number.ts';

const USAGE = `usage: xenblk stats [--json] [--run-dir DIR]
  --run-dir DIR   where backends put their control sockets (default: $XENBLK_RUN_DIR,
                  $XDG_RUNTIME_DIR/xenblk or <tmp>/xenblk-<uid>)
`;

/** `table(head, rows)` is a left-aligned text table with two spaces between columns. */
export function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]!))).join('  ').trimEnd();
  return `${[head, ...rows].map(line).join('\n')}\n`;
}

function vdevName(devid: number): string {
  try {
    return canonicalName(devid);
  } catch {
    return String(devid);
  }
}

/** `run(argv)` prints the statistics; 0 on success. */
export async function run(argv: string[]): Promise<number> {
  let json = false;
  let dir = defaultControlDir();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--json') json = true;
    else if (a === '--run-dir') {
      const v = argv[++i];
      if (v === undefined) { process.stderr.write(`xenblk stats: --run-dir needs a value\n${USAGE}`); return 2; }
      dir = v;
    } else if (a === '--help' || a === '-h') { process.stdout.write(USAGE); return 0; }
    else { process.stderr.write(`xenblk stats: unknown option ${a}\n${USAGE}`); return 2; }
  }
  const reports = await queryControl(dir);
  if (json) {
    process.stdout.write(`${JSON.stringify(reports, null, 2)}\n`);
    return 0;
  }
  const rows = reports.flatMap((r) => r.disks.map((d) => {
    const s = d.stats;
    return [
      String(r.pid), String(d.frontendDomid), vdevName(d.devid), d.state,
      String(s.rd_req), String(s.wr_req), String(s.f_req), String(s.ds_req), String(s.oo_req),
      String(s.rd_sect), String(s.wr_sect), String(s.merged_req), String(s.io_vectors), String(s.errors), String(s.in_flight),
      String(s.p50_us), String(s.p99_us), String(s.persistent_grants), String(s.events), String(s.notifies),
    ];
  }));
  if (rows.length === 0) {
    process.stdout.write(`no running backends (control sockets in ${dir})\n`);
    return 0;
  }
  process.stdout.write(table(
    ['PID', 'DOMID', 'VDEV', 'STATE', 'RD_REQ', 'WR_REQ', 'F_REQ', 'DS_REQ', 'OO_REQ', 'RD_SECT', 'WR_SECT', 'MERGED', 'IOVECS', 'ERRORS', 'INFLIGHT', 'P50_US', 'P99_US', 'PGRANTS', 'EVENTS', 'NOTIFIES'],
    rows,
  ));
  // What each disk is served from, and how (the engine, and for io_uring how much of the I/O was
  // on registered memory): one line each under the table.
  for (const r of reports) for (const d of r.disks) if (d.backing !== undefined) process.stdout.write(`${r.pid} ${vdevName(d.devid)}: ${d.backing}\n`);
  return 0;
}
