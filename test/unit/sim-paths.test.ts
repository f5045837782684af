// lib/sim/paths.ts and lib/sim/hypercall.ts: the default simulator directory, the file names
// every process agrees on, and the error payload of the hypercall ABI.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import fs from 'node:fs';
import { SimPaths, defaultSimDir } from '../../lib/sim/paths.ts';
import { HC, HC_NONE, decodeError, encodeError, hcName } from '../../lib/sim/hypercall.ts';

test('default directory: $XENBLK_SIM_DIR, else $XDG_RUNTIME_DIR/xenblk-sim, else tmpfs per uid', () => {
  assert.equal(defaultSimDir({ XENBLK_SIM_DIR: '/x/y', XDG_RUNTIME_DIR: '/run/user/5' }), '/x/y');
  assert.equal(defaultSimDir({ XDG_RUNTIME_DIR: '/run/user/5' }), '/run/user/5/xenblk-sim');
  const uid = process.getuid!();
  const expected = fs.existsSync('/dev/shm') ? `/dev/shm/xenblk-sim-${uid}` : `${os.tmpdir()}/xenblk-sim-${uid}`;
  assert.equal(defaultSimDir({}), expected);
});

test('file names carry the domain instance, sockets stay short', () => {
  const p = new SimPaths('/run/user/1000/xenblk-sim');
  assert.equal(p.mem(7, 12), '/run/user/1000/xenblk-sim/mem-7.12');
  assert.equal(p.gnttab(7, 12), '/run/user/1000/xenblk-sim/gnttab-7.12');
  assert.equal(p.evtchn(7, 12), '/run/user/1000/xenblk-sim/evtchn-7.12');
  assert.equal(p.doorbell(3, 99), '/run/user/1000/xenblk-sim/doorbell-3.99');
  assert.ok(p.xs(32751, 4294967295).length < 108);
});

test('error payload: [ref or 0xffffffff][utf-8 detail], status is -errno', () => {
  const d = decodeError(-1, encodeError(42, 'read-only grant'));
  assert.deepEqual(d, { errno: 1, at: 42, detail: 'read-only grant' });
  assert.deepEqual(decodeError(-3, encodeError(undefined, '')), { errno: 3, at: undefined, detail: '' });
  assert.equal(encodeError(undefined, 'x').readUInt32LE(0), HC_NONE);
  assert.equal(hcName(HC.MAP), 'MAP');
  assert.equal(hcName(99), 'op 99');
});
