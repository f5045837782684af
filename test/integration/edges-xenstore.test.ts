// Wrong XenStore layouts written by a toolstack (issue 8 part 5), met by the bundled CLI (built
// here as `npm run build` builds it, into test/.build): `xenblk attach` as a guest whose
// device/vbd directory is broken, and `xenblk serve` taking over a backend directory a
// toolstack left broken. Each must give a clear error line naming the key, exit non-zero,
// write nothing to stdout, and create nothing (no ring published, no grant, no port).
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
import type { XsPermission } from '../../protocol/xs-wire.ts';
import { resolveDevice } from '../../protocol/device-number.ts';

/** How long a refused command may take to give up: a hang detector, not a measurement. */
const GIVE_UP_MS = 20_000;
let bundle = '';

before(() => {
  bundle = bundleCli('edges-xs');
});

after(() => {
  removeCliBundle(bundle);
});

const cli = (args: string[], ms: number): Promise<CliRun> => runCli(bundle, args, ms);

interface World { dir: string; dom0: SimHost; guest: SimHost; image: string }

async function world(t: { after(fn: () => Promise<void> | void): void }): Promise<World> {
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, 'xenblk-edges-xs-'));
  const files = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-edges-xs-img-'));
  const image = path.join(files, 'disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 4 << 20);
  let sim: SimHandle | undefined;
  let dom0: SimHost | undefined;
  let guest: SimHost | undefined;
  t.after(async () => {
    await guest?.close().catch(() => {});
    await dom0?.close().catch(() => {});
    await sim?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(files, { recursive: true, force: true });
  });
  sim = await startSim({ dir });
  dom0 = await attachSim({ dir, domid: 0 });
  guest = await attachSim({ dir, domid: 1 });
  return { dir, dom0, guest, image };
}

/** Writes a vbd as a toolstack does (both halves, each owned by its end and readable by the other), with `edit` applied. */
async function toolstackVbd(w: World, vdev: string, edit: { front?: Record<string, string | null>; back?: Record<string, string | null> }): Promise<{ fe: string; be: string }> {
  const devid = resolveDevice(vdev).number;
  const fe = `/local/domain/1/device/vbd/${devid}`;
  const be = `/local/domain/0/backend/vbd/1/${devid}`;
  const front: Record<string, string | null> = {
    backend: be, 'backend-id': '0', state: '1', 'virtual-device': String(devid), 'device-type': 'disk', ...edit.front,
  };
  const back: Record<string, string | null> = {
    frontend: fe, 'frontend-id': '1', online: '1', state: '1', dev: vdev, type: 'file', mode: 'w', params: w.image,
    'device-type': 'disk', ...edit.back,
  };
  const fperm: XsPermission[] = [{ domid: 1, perm: 'n' }, { domid: 0, perm: 'r' }];
  const bperm: XsPermission[] = [{ domid: 0, perm: 'n' }, { domid: 1, perm: 'r' }];
  await w.dom0.xenstore.transaction(async (tx) => {
    await tx.mkdir(fe);
    await tx.setPermissions(fe, fperm);
    await tx.mkdir(be);
    await tx.setPermissions(be, bperm);
    for (const [k, v] of Object.entries(front)) if (v !== null) await tx.write(`${fe}/${k}`, v);
    for (const [k, v] of Object.entries(back)) if (v !== null) await tx.write(`${be}/${k}`, v);
  });
  return { fe, be };
}

async function snapshot(w: World, dir: string): Promise<string> {
  const out: string[] = [];
  for (const k of (await w.dom0.xenstore.directory(dir)).sort()) out.push(`${k}=${await w.dom0.xenstore.tryRead(`${dir}/${k}`)}`);
  return out.join(' ');
}

test('attach: a broken device/vbd directory is refused with the key named; nothing is published, granted or bound', { timeout: 120_000 }, async (t) => {
  const w = await world(t);
  const cases: { vdev: string; front: Record<string, string | null>; want: RegExp }[] = [
    { vdev: 'xvdb', front: { backend: null }, want: /\/device\/vbd\/51728\/backend: missing/ },
    { vdev: 'xvdc', front: { backend: 'backend/vbd/1/51744' }, want: /\/device\/vbd\/51744\/backend: .*not an absolute XenStore path/ },
    { vdev: 'xvdd', front: { 'backend-id': 'zero' }, want: /\/device\/vbd\/51760\/backend-id: "zero" is not an unsigned decimal number/ },
    { vdev: 'xvde', front: { 'backend-id': '99999' }, want: /\/device\/vbd\/51776\/backend-id: 99999 is larger than/ },
    { vdev: 'xvdf', front: { 'virtual-device': 'xvdf' }, want: /\/device\/vbd\/51792\/virtual-device: "xvdf" is not an unsigned decimal number/ },
    { vdev: 'xvdg', front: { 'virtual-device': null }, want: /\/device\/vbd\/51808: neither virtual-device nor virtual-device-ext is set/ },
  ];
  const before = new Map<string, string>();
  for (const c of cases) {
    const { fe } = await toolstackVbd(w, c.vdev, { front: c.front });
    before.set(c.vdev, await snapshot(w, fe));
  }
  const runs = await Promise.all(cases.map((c) => cli(['attach', '--vdev', c.vdev, '--sim', w.dir, '--domid', '1', '--wait', '0', '--timeout', '5000', '--info'], GIVE_UP_MS)));
  const problems: string[] = [];
  for (const [i, c] of cases.entries()) {
    const r = runs[i]!;
    const what = `attach --vdev ${c.vdev} with ${JSON.stringify(c.front)}`;
    if (r.hung || r.code !== 1) problems.push(`${what}: ${r.hung ? 'hung' : `exit ${r.code}`} (stderr ${JSON.stringify(r.stderr)})`);
    const lines = r.stderr.trim().split('\n');
    if (lines.length !== 1 || !c.want.test(lines[0]!) || !lines[0]!.startsWith('xenblk attach: ')) problems.push(`${what}: stderr ${JSON.stringify(r.stderr)} is not one line matching ${c.want}`);
    if (r.stdout !== '') problems.push(`${what}: wrote to stdout ${JSON.stringify(r.stdout)}`);
    const fe = `/local/domain/1/device/vbd/${resolveDevice(c.vdev).number}`;
    const now = await snapshot(w, fe);
    if (now !== before.get(c.vdev)) problems.push(`${what}: the frontend directory changed: ${before.get(c.vdev)} -> ${now}`);
  }
  const g = w.dom0.status().domains.find((d) => d.domid === 1)!;
  if (g.granted !== 0 || g.ports.length !== 0) problems.push(`domain 1 still grants ${g.granted} pages and binds ${g.ports.length} ports`);
  assert.deepEqual(problems, []);
});

test('attach: a backend that sits in a garbage state is given up on at the timeout, naming the backend', { timeout: 120_000 }, async (t) => {
  const w = await world(t);
  const { be } = await toolstackVbd(w, 'xvdb', { back: { state: 'banana' } });
  const r = await cli(['attach', '--vdev', 'xvdb', '--sim', w.dir, '--domid', '1', '--wait', '0', '--timeout', '1500', '--info'], GIVE_UP_MS);
  assert.equal(r.hung, false, 'attach gave up by itself');
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, new RegExp(`^xenblk attach: timed out waiting for .*${be.replace(/\//g, '\\/')}`));
  // It published rings while waiting; giving up took them back.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const g = w.dom0.status().domains.find((d) => d.domid === 1)!;
    if (g.granted === 0 && g.ports.length === 0) break;
    if (Date.now() > deadline) assert.fail(`domain 1 still grants ${g.granted} pages and binds ${g.ports.length} ports`);
    await new Promise((res) => setTimeout(res, 20));
  }
});

test('serve: taking over a backend directory a toolstack left broken fails with the key named and a non-zero exit', { timeout: 120_000 }, async (t) => {
  const w = await world(t);
  const cases: { vdev: string; back: Record<string, string | null>; key: string }[] = [
    { vdev: 'xvdb', back: { 'frontend-id': '7' }, key: 'frontend-id' },
    { vdev: 'xvdc', back: { frontend: 'device/vbd/51744' }, key: 'frontend' },
  ];
  for (const c of cases) await toolstackVbd(w, c.vdev, { back: c.back });
  const runs = await Promise.all(cases.map((c) => cli(['serve', w.image, '--domid', '1', '--vdev', c.vdev, '--sim', w.dir], GIVE_UP_MS)));
  const problems: string[] = [];
  for (const [i, c] of cases.entries()) {
    const r = runs[i]!;
    const what = `serve taking over ${c.vdev} with ${JSON.stringify(c.back)}`;
    if (r.hung) problems.push(`${what}: still running after ${GIVE_UP_MS} ms instead of failing (stderr ${JSON.stringify(r.stderr.trim())})`);
    else if (r.code === 0 || r.code === null) problems.push(`${what}: exit ${r.code}`);
    const named = r.stderr.split('\n').some((l) => l.startsWith('xenblk') && l.includes(`/${c.key}`));
    if (!named) problems.push(`${what}: no error line naming ${c.key}: ${JSON.stringify(r.stderr.trim())}`);
    if (r.stdout !== '') problems.push(`${what}: wrote to stdout ${JSON.stringify(r.stdout)}`);
  }
  assert.deepEqual(problems, []);
});
