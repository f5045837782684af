// `xenblk sim up | status | down` as a user runs them: the bundled CLI (built as `npm run build`
// does, into test/.build so it finds node_modules) in separate processes; a program attached
// through $XENBLK_SIM_DIR / $XENBLK_DOMID shows up in `sim status`; `sim down` removes the
// directory it made.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SimChild } from './sim-driver.ts';
import { bundleCli, removeCliBundle } from '../support/cli-bundle.ts';

let bundle = '';
const base = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'xenblk-cli-'));
const dir = path.join(base, 'sim');

before(() => {
  bundle = bundleCli('sim-cli');
});

after(() => {
  spawnSync(process.execPath, [bundle, 'sim', 'down', '--dir', dir], { encoding: 'utf8', timeout: 30_000 });
  removeCliBundle(bundle);
  fs.rmSync(base, { recursive: true, force: true });
});

function xenblk(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bundle, 'sim', ...args], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('sim up starts a background simulator, status lists attached domains, down removes it all', { timeout: 120_000 }, async () => {
  const up = xenblk('up', '--dir', dir);
  assert.equal(up.code, 0, up.stderr);
  assert.match(up.stdout, /simulator running in .* \(pid \d+\)/);
  assert.equal(xenblk('up', '--dir', dir).code, 1, 'a second daemon on the same directory is refused');

  const child = SimChild.spawn({ ...process.env, XENBLK_SIM_DIR: dir, XENBLK_DOMID: '7' });
  try {
    const h = await child.call<{ kind: string; domid: number; pid: number }>('openHost');
    assert.deepEqual([h.kind, h.domid], ['sim', 7]);
    const port = (await child.call<{ port: number }>('allocUnbound', { domid: 0 })).port;
    await child.call('share', { domid: 0, count: 3, writable: true });
    const st = xenblk('status', '--dir', dir);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, /domain 7 \(instance \d+\)/);
    assert.match(st.stdout, new RegExp(`pid ${h.pid} \\(slot \\d+`));
    assert.match(st.stdout, /grants: 3 granted, 0 mapped by others/);
    assert.match(st.stdout, new RegExp(`port ${port}: unbound, for d0`));
    const json = JSON.parse(xenblk('status', '--dir', dir, '--json').stdout) as { domains: { domid: number }[] };
    assert.deepEqual(json.domains.map((d) => d.domid), [0, 7]);
  } finally {
    await child.kill('SIGKILL');
  }
  const down = xenblk('down', '--dir', dir);
  assert.equal(down.code, 0, down.stderr);
  assert.equal(fs.existsSync(dir), false, 'sim down removed the directory it created');
  const none = xenblk('status', '--dir', dir);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /no simulator running/);
});
