// protocol/xs-wire.ts against Xen's own xs_wire.h and xenstore_lib.h (Debian libxen-dev): a C
// program of ours, compiled at test time, prints the message types, error table, limits,
// struct layouts and encoded header bytes; every one must match our codec.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX, XENSTORE_RING_SIZE, XS_ERRORS, XS_HEADER_SIZE,
  XS_INVALID, XS_PERM_IGNORE, XS_PERM_NONE, XS_PERM_OWNER, XS_PERM_READ, XS_PERM_WRITE, XS_TYPE_COUNT_4_17,
  XS_WATCH_PATH, XS_WATCH_TOKEN, XS_WRITE_CREATE, XS_WRITE_CREATE_EXCL, XS_WRITE_NONE, XsMessageReader, XsOp, XsRingLayout,
  encodeMessage,
} from '../../protocol/xs-wire.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));

function reference(): Map<string, string> & { errors: string[]; headers: string[][] } {
  if (!fs.existsSync('/usr/include/xen/io/xs_wire.h') || !fs.existsSync('/usr/include/xenstore_lib.h')) {
    throw new Error('Xen headers not found: install them with: apt-get install libxen-dev');
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xenblk-xswire-'));
  try {
    const exe = path.join(dir, 'constants');
    try {
      execFileSync('gcc', ['-Wall', '-Werror', '-o', exe, path.join(HERE, 'c/xenstore-wire-constants.c')], { stdio: 'pipe' });
    } catch (e) {
      const err = e as { code?: string; stderr?: Buffer };
      if (err.code === 'ENOENT') throw new Error('gcc not found: install it with: apt-get install gcc');
      throw new Error(`compiling xenstore-wire-constants.c failed:\n${err.stderr?.toString()}`);
    }
    const out = execFileSync(exe, { encoding: 'utf8' });
    const m = new Map<string, string>() as Map<string, string> & { errors: string[]; headers: string[][] };
    m.errors = [];
    m.headers = [];
    for (const line of out.trim().split('\n')) {
      const [k, ...rest] = line.split(' ');
      if (k === 'error') m.errors[Number(rest[0])] = rest[1]!;
      else if (k === 'header') m.headers.push(rest);
      else m.set(k!, rest.join(' '));
    }
    return m;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('xs_wire.h constants, layouts and header bytes match protocol/xs-wire.ts', () => {
  const ref = reference();
  let checked = 0;
  const eq = (key: string, ours: number | string): void => {
    assert.equal(String(ours), ref.get(key), key);
    checked++;
  };
  for (const [name, value] of Object.entries(XsOp)) {
    if (ref.has(`XS_${name}`)) eq(`XS_${name}`, value);
  }
  eq('XS_TYPE_COUNT', XS_TYPE_COUNT_4_17);
  eq('XS_INVALID', XS_INVALID);
  eq('XENSTORE_PAYLOAD_MAX', XENSTORE_PAYLOAD_MAX);
  eq('XENSTORE_ABS_PATH_MAX', XENSTORE_ABS_PATH_MAX);
  eq('XENSTORE_REL_PATH_MAX', XENSTORE_REL_PATH_MAX);
  eq('XENSTORE_RING_SIZE', XENSTORE_RING_SIZE);
  eq('XS_WATCH_PATH', XS_WATCH_PATH);
  eq('XS_WATCH_TOKEN', XS_WATCH_TOKEN);
  eq('XS_PERM_NONE', XS_PERM_NONE);
  eq('XS_PERM_READ', XS_PERM_READ);
  eq('XS_PERM_WRITE', XS_PERM_WRITE);
  eq('XS_PERM_OWNER', XS_PERM_OWNER);
  eq('XS_PERM_IGNORE', XS_PERM_IGNORE);
  eq('XS_WRITE_NONE', XS_WRITE_NONE);
  eq('XS_WRITE_CREATE', XS_WRITE_CREATE);
  eq('XS_WRITE_CREATE_EXCL', XS_WRITE_CREATE_EXCL);
  eq('sizeof_xsd_sockmsg', XS_HEADER_SIZE);
  eq('offset_type', 0);
  eq('offset_req_id', 4);
  eq('offset_tx_id', 8);
  eq('offset_len', 12);
  for (const [k, v] of Object.entries(XsRingLayout)) eq(`ring_${k}`, v);
  assert.deepEqual([...XS_ERRORS], ref.errors, 'xsd_errors[] order');
  checked += ref.errors.length;
  assert.ok(ref.headers.length >= 4);
  for (const [type, reqId, txId, len, ...bytes] of ref.headers) {
    const msg = { type: Number(type), reqId: Number(reqId), txId: Number(txId), payload: new Uint8Array(Number(len)) };
    const encoded = encodeMessage(msg);
    assert.deepEqual([...encoded.subarray(0, XS_HEADER_SIZE)].map((b) => b.toString(16).padStart(2, '0')), bytes, `header ${type}`);
    // ... and our reader decodes the C bytes back into the same message.
    const [decoded] = new XsMessageReader().feed(new Uint8Array([...bytes.map((b) => parseInt(b, 16)), ...msg.payload]));
    assert.deepEqual({ ...decoded, payload: [...decoded!.payload] }, { ...msg, payload: [...msg.payload] });
    checked++;
  }
  process.stdout.write(`# xs_wire.h: ${checked} constants, layouts and encodings matched\n`);
});
