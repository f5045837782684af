// Bad input at the edges of `xenblk serve` and `xenblk attach` (issue 8 part 5), run as a user
// runs them: the bundled CLI (built here exactly as `npm run build` builds it, into a directory
// of its own under test/.build so a test run never rewrites dist/). Every refusal must be a
// clear error on one line naming what is wrong, a non-zero exit, nothing on stdout, and nothing
// half-created left behind (no vbd directory in XenStore after `serve` gave up).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bundleCli, removeCliBundle, runCli } from '../support/cli-bundle.ts';
import type { CliRun } from '../support/cli-bundle.ts';
import { startSim } from '../../lib/sim/start.ts';
import type { SimHandle } from '../../lib/sim/start.ts';
import { attachSim } from '../../lib/sim/attach.ts';
import type { SimHost } from '../../lib/sim/attach.ts';
import { resolveDevice } from '../../protocol/device-number.ts';

/** How long a refused `serve` may take to give up: a hang detector, not a measurement. */
const GIVE_UP_MS = 20_000;
let bundle = '';

before(() => {
  bundle = bundleCli('edges-cli');
});

after(() => {
  removeCliBundle(bundle);
});

const cli = (args: string[], ms?: number): Promise<CliRun> => runCli(bundle, args, ms);

/** The first line of stderr. */
function firstLine(s: string): string {
  return s.split('\n')[0] ?? '';
}

test('usage errors: exit 2, one line naming the flag, nothing on stdout', async () => {
  const cases: [string[], RegExp][] = [
    [['serve'], /^xenblk serve: FILE is required$/],
    [['serve', 'x.img', '--vdev', 'xvdb'], /^xenblk serve: --domid N is required$/],
    [['serve', 'x.img', '--domid', '1'], /^xenblk serve: --vdev NAME is required$/],
    [['serve', 'x.img', '--domid', 'abc', '--vdev', 'xvdb'], /^xenblk serve: --domid takes an integer from 0 to \d+, got "abc"$/],
    [['serve', 'x.img', '--domid', '40000', '--vdev', 'xvdb'], /^xenblk serve: --domid takes an integer .*"40000"$/],
    [['serve', 'x.img', '--domid'], /^xenblk serve: --domid needs a value$/],
    [['serve', 'x.img', '--domid', '1', '--vdev', 'xvdb', '--sector-size', '1000'], /^xenblk serve: --sector-size .*1000/],
    [['serve', 'x.img', '--domid', '1', '--vdev', 'xvdb', '--queues', '0'], /^xenblk serve: --queues takes an integer from 1 .*"0"$/],
    [['serve', 'x.img', '--domid', '1', '--vdev', 'xvdb', '--max-ring-page-order', '5'], /^xenblk serve: --max-ring-page-order .*"5"$/],
    [['serve', 'x.img', '--domid', '1', '--vdev', 'xvdb', '--max-indirect-segments', '5000'], /^xenblk serve: --max-indirect-segments .*"5000"$/],
    [['serve', 'x.img', '--domid', '1', '--vdev', 'xvdb', '--direct', 'maybe'], /^xenblk serve: --direct .*maybe/],
    [['serve', 'x.img', '--domid', '1', '--vdev', 'xvdb', '--bogus'], /^xenblk serve: unknown option --bogus$/],
    [['serve', 'a.img', 'b.img', '--domid', '1', '--vdev', 'xvdb'], /^xenblk serve: one FILE only/],
    [['serve', 'x.img', '--domid', '1', '--vdev', 'xvdb', '--sim', '/tmp/x', '--xen'], /^xenblk serve: --sim and --xen exclude each other$/],
    [['serve', 'x.img', '--domid', '1', '--vdev', 'xvdb', '--create', 'lots'], /^xenblk serve: --create .*lots/],
    [['attach'], /^xenblk attach: --vdev NAME is required$/],
    [['attach', '--vdev', 'xvdb'], /^xenblk attach: nothing to do/],
    [['attach', '--vdev', 'xvdb', '--info', '--queues', '0'], /^xenblk attach: --queues takes an integer from 1 to 64, got "0"$/],
    [['attach', '--vdev', 'xvdb', '--info', '--abi', 'arm'], /^xenblk attach: --abi .*arm/],
    [['attach', '--vdev', 'xvdb', '--info', '--dump', '-'], /^xenblk attach: --dump - and --info both write to stdout$/],
    [['attach', '--vdev', 'xvdb', '--info', '--timeout', '0'], /^xenblk attach: --timeout takes an integer from 1 .*"0"$/],
    [['attach', '--vdev', 'xvdb', '--info', '--bogus'], /^xenblk attach: unknown argument --bogus$/],
  ];
  const runs = await Promise.all(cases.map(([args]) => cli(args)));
  for (const [i, [args, want]] of cases.entries()) {
    const r = runs[i]!;
    const what = `xenblk ${args.join(' ')}`;
    assert.equal(r.code, 2, `${what}: exit ${r.code}\n${r.stderr}`);
    assert.equal(r.stdout, '', `${what}: nothing on stdout`);
    assert.match(firstLine(r.stderr), want, what);
  }
});

test('serve: a backing file that is missing, not a file, or too small is refused with its name; nothing is left in XenStore', { timeout: 120_000 }, async (t) => {
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, 'xenblk-edges-'));
  const files = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-edges-files-'));
  let sim: SimHandle | undefined;
  let guest: SimHost | undefined;
  let dom0: SimHost | undefined;
  t.after(async () => {
    await guest?.close().catch(() => {});
    await dom0?.close().catch(() => {});
    await sim?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(files, { recursive: true, force: true });
  });
  sim = await startSim({ dir });
  // The guest domain exists (serve would otherwise wait for it).
  guest = await attachSim({ dir, domid: 1 });
  // Dom0's view, to look for leftovers (a guest may not read the backend tree).
  dom0 = await attachSim({ dir, domid: 0 });
  const empty = path.join(files, 'empty.img');
  fs.writeFileSync(empty, '');
  const tiny = path.join(files, 'tiny.img');
  fs.writeFileSync(tiny, Buffer.alloc(100));
  const adir = path.join(files, 'a-directory');
  fs.mkdirSync(adir);
  const missing = path.join(files, 'missing.img');
  // Each case gets its own device, so they can run side by side on one simulator.
  const cases: { vdev: string; file: string; why: RegExp }[] = [
    { vdev: 'xvdb', file: missing, why: /does not exist|ENOENT|no such file/i },
    { vdev: 'xvdc', file: adir, why: /EISDIR|is a directory|not a regular file|neither a regular file/i },
    { vdev: 'xvdd', file: '/dev/null', why: /not a regular file|neither a regular file nor a block device|character device/i },
    { vdev: 'xvde', file: empty, why: /empty|too small|smaller than|0 bytes|no sectors|0 sectors/i },
    { vdev: 'xvdf', file: tiny, why: /too small|smaller than|100 bytes|no sectors|0 sectors|not a multiple/i },
  ];
  const runs = await Promise.all(cases.map((c) => cli(['serve', c.file, '--domid', '1', '--vdev', c.vdev, '--sim', dir], GIVE_UP_MS)));
  const problems: string[] = [];
  for (const [i, c] of cases.entries()) {
    const r = runs[i]!;
    const what = `xenblk serve ${c.file} --vdev ${c.vdev}`;
    const devid = resolveDevice(c.vdev).number;
    const front = await dom0.xenstore.tryRead(`/local/domain/1/device/vbd/${devid}`);
    const back = await dom0.xenstore.tryRead(`/local/domain/0/backend/vbd/1/${devid}`);
    if (r.hung) problems.push(`${what}: still running after ${GIVE_UP_MS} ms instead of refusing (stderr: ${JSON.stringify(r.stderr.trim())})`);
    else if (r.code === 0 || r.code === null) problems.push(`${what}: exit ${r.code} (${r.signal})`);
    const named = r.stderr.split('\n').some((l) => l.startsWith('xenblk') && l.includes(c.file) && c.why.test(l));
    if (!named) problems.push(`${what}: no error line naming ${c.file} and ${c.why}; stderr: ${JSON.stringify(r.stderr.trim())}`);
    if (r.stdout !== '') problems.push(`${what}: wrote to stdout: ${JSON.stringify(r.stdout)}`);
    if (front !== undefined || back !== undefined) problems.push(`${what}: left the vbd behind in XenStore (frontend directory ${front !== undefined}, backend directory ${back !== undefined})`);
  }
  assert.deepEqual(problems, []);
});
