// lib/host/open.ts: which platform a program gets — forced Xen, an explicit or $XENBLK_SIM_DIR
// simulator, Xen when /dev/xen/evtchn exists, else the default simulator — and as which domain.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { chooseHost, openXenHost, XEN_EVTCHN_DEVICE } from '../../lib/host/open.ts';

test('the simulator unless on Xen; an explicit or environment simulator wins over Xen; --xen forces Xen', () => {
  assert.deepEqual(chooseHost({}, { XDG_RUNTIME_DIR: '/run/user/9' }, false), { kind: 'sim', dir: '/run/user/9/xenblk-sim', domid: 0 });
  assert.deepEqual(chooseHost({}, {}, true), { kind: 'xen', domid: undefined });
  assert.deepEqual(chooseHost({}, { XENBLK_SIM_DIR: '/s', XENBLK_DOMID: '4' }, true), { kind: 'sim', dir: '/s', domid: 4 });
  assert.deepEqual(chooseHost({ sim: '/o', domid: 2 }, { XENBLK_SIM_DIR: '/s', XENBLK_DOMID: '4' }, false), { kind: 'sim', dir: '/o', domid: 2 });
  assert.deepEqual(chooseHost({ xen: true }, { XENBLK_SIM_DIR: '/s', XENBLK_DOMID: '0' }, false), { kind: 'xen', domid: 0 });
});

test('bad domain ids are refused with the value', () => {
  assert.throws(() => chooseHost({}, { XENBLK_DOMID: 'x1' }, false), /XENBLK_DOMID=x1/);
  assert.throws(() => chooseHost({}, { XENBLK_DOMID: '32752' }, false), /XENBLK_DOMID=32752/);
  assert.throws(() => chooseHost({ domid: -1 }, {}, false), /domid -1/);
});

test('forcing Xen where /dev/xen is absent fails with a message saying what to do', async () => {
  if (fs.existsSync(XEN_EVTCHN_DEVICE)) {
    // On a Xen host the device exists; the refusal cannot be observed there, so check the opposite.
    assert.equal(fs.statSync(XEN_EVTCHN_DEVICE).isCharacterDevice(), true);
    return;
  }
  await assert.rejects(openXenHost(), /\/dev\/xen\/evtchn is absent .*xenblk sim up/);
});
