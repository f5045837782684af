// `xenblk device-number` as a user runs it: the bundled CLI (built here exactly as `npm run build`
// builds it, into the git-ignored test/.build) spawned as a separate process; stdout, stderr and exit status checked.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { bundleCli, removeCliBundle } from '../support/cli-bundle.ts';

let bundle = '';

before(() => {
  bundle = bundleCli('device-number');
});

after(() => removeCliBundle(bundle));

function xenblk(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bundle, 'device-number', ...args], { encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('prints the other form (xen-vbd-interface(7) examples, issue 2)', () => {
  // 51712 = xvda (REFERENCE.md); d536p37 = 268572709 = xvdtq37 (man page example, issue 2);
  // sdb3 = 8<<8 | 1<<4 | 3; hdc2 = 22<<8 | 0<<6 | 2 (the man page's encoding table).
  const cases: [string, string][] = [
    ['xvda', '51712'], ['51712', 'xvda'], ['d536p37', '268572709'], ['268572709', 'xvdtq37'], ['xvdtq37', '268572709'],
    ['d0', '51712'], ['d1p2', String((202 << 8) | (1 << 4) | 2)], ['xvdb2', String((202 << 8) | (1 << 4) | 2)],
    ['sdb3', String((8 << 8) | (1 << 4) | 3)], [String((8 << 8) | (1 << 4) | 3), 'sdb3'],
    ['hdc2', String((22 << 8) | 2)], [String((22 << 8) | 2), 'hdc2'], ['0xca00', 'xvda'],
  ];
  for (const [input, output] of cases) {
    const r = xenblk(input);
    assert.deepEqual(r, { code: 0, stdout: `${output}\n`, stderr: '' }, input);
  }
});

test('--json prints number, name, bus, disk and partition', () => {
  const r = xenblk('--json', 'd536p37');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.equal(r.stdout, '{"number":268572709,"name":"xvdtq37","bus":"xvd","disk":536,"partition":37}\n');
  const hd = xenblk(String((22 << 8) | (1 << 6) | 5), '--json');
  assert.deepEqual(JSON.parse(hd.stdout), { number: (22 << 8) | (1 << 6) | 5, name: 'hdd5', bus: 'hd', disk: 3, partition: 5 });
});

test('invalid input exits 1 with the input and the reason on stderr, nothing on stdout', () => {
  const cases: [string, RegExp][] = [
    ['xvdA', /letters 'A' must be a-z/], ['xvda0', /leading zero/], ['d010p1', /leading zero/], ['051712', /leading zero/],
    ['xvda256', /partition 256 is over the xvd limit 255/], ['hda64', /over the hd limit 63/], ['sdq', /over the limit 15/],
    ['d1048576', /over the xvd limit 1048575/], ['-5', /negative/], ['', /empty/], ['xyz', /not a device name/],
    [String(2 << 28), /reserved/], [String(65 << 8), /deprecated/], ['1', /no xen-vbd-interface\(7\) form/],
  ];
  for (const [input, reason] of cases) {
    const r = xenblk(input);
    assert.equal(r.code, 1, `${input}: ${r.stdout}${r.stderr}`);
    assert.equal(r.stdout, '', input);
    assert.ok(r.stderr.startsWith(`xenblk device-number: invalid virtual device '${input}': `), r.stderr);
    assert.match(r.stderr, reason, input);
  }
});

test('usage: --help exits 0; missing, extra or unknown arguments exit 2', () => {
  const help = xenblk('--help');
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^usage: xenblk device-number \[--json\] <name-or-number>/);
  assert.equal(help.stderr, '');
  for (const args of [[], ['xvda', 'xvdb'], ['--bogus', 'xvda']]) {
    const r = xenblk(...args);
    assert.equal(r.code, 2, args.join(' '));
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /see --help/);
  }
  // `--` ends options, so a name that starts with '-' is refused as a device, not as an option.
  const dash = xenblk('--', '--json');
  assert.equal(dash.code, 1);
  assert.match(dash.stderr, /invalid virtual device '--json'/);
});
