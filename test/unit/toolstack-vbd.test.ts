// The toolstack role against our in-memory xenstored on Unix sockets: dom0 creates disks as
// libxl does, each domain connects on its own socket so the permissions are really enforced.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createXenstored } from '../../xenstore/server/xenstored.ts';
import { connect } from '../../xenstore/connect.ts';
import type { Xenstore } from '../../xenstore/xenstore.ts';
import { ToolstackError, createVbd, removeVbd, vbdPaths } from '../../lib/toolstack/vbd.ts';
import { listVbds } from '../../lib/toolstack/list.ts';

async function store(t: { after: (f: () => Promise<void>) => void }, domids: number[]): Promise<Map<number, Xenstore>> {
  const dir = mkdtempSync(join(tmpdir(), 'xenblk-ts-'));
  const xsd = createXenstored();
  const conns = new Map<number, Xenstore>();
  for (const d of domids) {
    await xsd.listen(join(dir, `${d}.sock`), d);
    conns.set(d, await connect({ socketPath: join(dir, `${d}.sock`) }));
  }
  t.after(async () => {
    for (const c of conns.values()) await c.close().catch(() => undefined);
    await xsd.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return conns;
}

async function dump(xs: Xenstore, dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const k of await xs.directory(dir)) out[k] = await xs.read(`${dir}/${k}`);
  return out;
}

test('createVbd writes both halves with libxl\'s keys, in one transaction, each half writable only by its end', async (t) => {
  const c = await store(t, [0, 3, 9]);
  const xs0 = c.get(0)!;
  const p = await createVbd(xs0, { frontendDomid: 3, vdev: 'xvdb', params: '/srv/d.img', protocol: 'x86_64-abi', discardEnable: false });
  assert.deepEqual(p, vbdPaths(3, '51728'));
  assert.deepEqual(await dump(xs0, p.backend), {
    frontend: '/local/domain/3/device/vbd/51728', 'frontend-id': '3', online: '1', removable: '0', bootable: '1',
    state: '1', dev: 'xvdb', type: 'file', mode: 'w', params: '/srv/d.img', 'device-type': 'disk', 'discard-enable': '0',
  });
  assert.deepEqual(await dump(xs0, p.frontend), {
    backend: '/local/domain/0/backend/vbd/3/51728', 'backend-id': '0', state: '1', 'virtual-device': '51728',
    'device-type': 'disk', trusted: '1', protocol: 'x86_64-abi',
  });
  for (const key of ['state', 'params']) {
    assert.deepEqual(await xs0.getPermissions(`${p.backend}/${key}`), [{ domid: 0, perm: 'n' }, { domid: 3, perm: 'r' }], `backend ${key} inherits`);
  }
  assert.deepEqual(await xs0.getPermissions(`${p.frontend}/state`), [{ domid: 3, perm: 'n' }, { domid: 0, perm: 'r' }]);

  const fe = c.get(3)!;
  await fe.write(`${p.frontend}/state`, '3');
  await fe.write(`${p.frontend}/ring-ref`, '8');
  assert.equal(await fe.read(`${p.backend}/params`), '/srv/d.img', 'the frontend reads the backend half');
  await assert.rejects(fe.write(`${p.backend}/state`, '4'), (e: { code?: string }) => e.code === 'EACCES');
  const other = c.get(9)!;
  await assert.rejects(other.read(`${p.backend}/params`), (e: { code?: string }) => e.code === 'EACCES');
  await assert.rejects(other.read(`${p.frontend}/state`), (e: { code?: string }) => e.code === 'EACCES');

  await assert.rejects(createVbd(xs0, { frontendDomid: 3, vdev: '51728', params: '/x' }), (e: unknown) => e instanceof ToolstackError && e.code === 'EEXIST');
  await assert.rejects(createVbd(xs0, { frontendDomid: 3, vdev: 'xvd', params: '/x' }), 'a name that is no device');
});

test('listVbds shows every disk with both states; removeVbd without a backend times out, then deletes', async (t) => {
  const c = await store(t, [0, 3, 4]);
  const xs0 = c.get(0)!;
  const a = await createVbd(xs0, { frontendDomid: 4, vdev: 'xvda', params: 'ram:4096', readonly: true, deviceType: 'cdrom', removable: true });
  const b = await createVbd(xs0, { frontendDomid: 3, vdev: 'd1p0', params: '/b.img' });
  await c.get(3)!.write(`${b.frontend}/state`, '3');
  const l = await listVbds(xs0);
  assert.deepEqual(l.map((x) => [x.frontendDomid, x.vdev, x.params, x.mode, x.backendState, x.frontendState]), [
    [3, 'xvdb', '/b.img', 'w', 'Initialising', 'Initialised'],
    [4, 'xvda', 'ram:4096', 'r', 'Initialising', 'Initialising'],
  ]);
  assert.equal(b.devid, 51728, 'd1p0 is xvdb');

  const r = await removeVbd(xs0, b, { timeoutMs: 200 });
  assert.equal(r.backendClosed, false, 'no backend answered');
  assert.equal(await xs0.tryRead(b.backend), undefined);
  assert.equal(await xs0.tryRead(b.frontend), undefined);
  const r2 = await removeVbd(xs0, a, { force: true });
  assert.equal(r2.backendClosed, false);
  assert.deepEqual(await listVbds(xs0), []);
  assert.equal(await xs0.tryRead('/local/domain/0/backend/vbd/4'), undefined);
});

test('removeVbd asks to close (online=0, state=Closing) and returns as soon as the backend is Closed', async (t) => {
  const c = await store(t, [0, 3]);
  const xs0 = c.get(0)!;
  const p = await createVbd(xs0, { frontendDomid: 3, vdev: 'xvdb', params: '/b.img' });
  await xs0.write(`${p.backend}/state`, '4');
  // A stand-in backend: when asked to close, checks online=0 and says Closed.
  const w = xs0.watch(`${p.backend}/state`);
  const fake = (async () => {
    for await (const _e of w) {
      if ((await xs0.tryRead(`${p.backend}/state`)) === '5') {
        assert.equal(await xs0.read(`${p.backend}/online`), '0');
        await xs0.write(`${p.backend}/state`, '6');
        return;
      }
    }
  })();
  const r = await removeVbd(xs0, p, { timeoutMs: 5000 });
  await fake;
  await w.close();
  assert.equal(r.backendClosed, true);
  assert.equal(await xs0.tryRead(p.backend), undefined);
});
