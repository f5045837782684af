// Conformance: protocol/blkif.ts against Xen's own blkif.h/ring.h (Debian libxen-dev).
//
// test/conformance/c/blkif-conformance.c is compiled here against /usr/include/xen/io/blkif.h;
// it reports every size and offset our codecs rely on (x86_64 from the header as compiled on
// this machine, x86_32 from our packed mirror), and blkif-layout-i386.c compiles the header
// itself for i386 (gcc -m32 -S) so the mirror is checked against the real 32-bit layout. Then
// the C program fills the header's structs with a seeded set of requests and responses for
// both ABIs; our encoders must produce the same bytes and our decoders the same fields, and
// every request it broke on purpose must be rejected naming the field it broke.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  BLKIF_OP_DISCARD,
  BLKIF_OP_INDIRECT,
  BLKIF_RSP_EOPNOTSUPP,
  BLKIF_RSP_ERROR,
  blkifErrorStatus,
  blkifLayout,
  decodeIndirectSegments,
  decodeRequest,
  decodeResponse,
  encodeIndirectSegments,
  encodeRequest,
  encodeResponse,
  newBlkifRequest,
  newBlkifResponse,
  requestSize,
  responseSize,
  ringEntrySize,
  type BlkifAbi,
  type BlkifRequest,
} from '../../protocol/blkif.ts';
import { RING_HEADER_SIZE, reqEvent, reqProd, ringEntries, rspEvent, rspProd, sringAttach } from '../../protocol/ring.ts';
import { compileC, runC } from '../support/cc.ts';

const SEED = '0x5eed0b1c';
const REQUESTS_PER_ABI = 800;
const RESPONSES_PER_ABI = 300;

function program(): string {
  return compileC({ name: 'blkif-conformance', sources: ['test/conformance/c/blkif-conformance.c'] });
}

/** Parses `key=value` tokens after the first word. */
function fields(line: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const tok of line.split(' ').slice(1)) {
    const eq = tok.indexOf('=');
    m.set(tok.slice(0, eq), tok.slice(eq + 1));
  }
  return m;
}
function get(m: Map<string, string>, k: string): string {
  const v = m.get(k);
  assert.ok(v !== undefined, `C output lacks ${k}`);
  return v;
}
function hexBytes(hex: string): Uint8Array {
  return new Uint8Array(Buffer.from(hex, 'hex'));
}
function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

test('struct sizes and offsets match blkif.h/ring.h (x86_64 native, x86_32 mirror, x86_32 from blkif.h built for i386)', (t) => {
  const out = runC(program(), ['layout']).trim().split('\n');
  const c: Record<BlkifAbi, Map<string, number>> = { x86_64: new Map(), x86_32: new Map() };
  const names: string[] = [];
  let checked = 0;
  for (const line of out) {
    const [kind, abi, name, value] = line.split(' ');
    if (kind === 'layout') {
      c[abi as BlkifAbi].set(name!, Number(value));
      if (abi === 'x86_32') names.push(name!);
    } else {
      assert.equal(kind, 'ring_size');
      // __RING_SIZE at run time on a real ring of 4096 << order bytes.
      assert.equal(ringEntries(4096 << Number(name), ringEntrySize(abi as BlkifAbi)), Number(value), line);
      checked++;
    }
  }

  for (const abi of ['x86_64', 'x86_32'] as const) {
    const ours = blkifLayout(abi);
    const theirs = c[abi];
    assert.equal(theirs.size, names.length);
    for (const [name, value] of theirs) {
      if (name in ours) {
        assert.equal(ours[name], value, `${abi} ${name}`);
      } else if (name.startsWith('ring_size.order')) {
        assert.equal(ringEntries(4096 << Number(name.slice(-1)), ringEntrySize(abi)), value, `${abi} ${name}`);
      } else if (name === 'blkif_sring.ring') {
        assert.equal(RING_HEADER_SIZE, value, `${abi} ${name}`);
      } else {
        // A shared index: write a marker at the C offset and read it through ring.ts.
        const read = { 'blkif_sring.req_prod': reqProd, 'blkif_sring.req_event': reqEvent, 'blkif_sring.rsp_prod': rspProd, 'blkif_sring.rsp_event': rspEvent }[name];
        assert.ok(read, `unchecked layout entry ${name}`);
        const page = new Uint8Array(4096);
        new DataView(page.buffer).setUint32(value, 0xa5c3e1f7, true);
        assert.equal(read(sringAttach(page, ringEntrySize(abi))), 0xa5c3e1f7, `${abi} ${name}`);
      }
      checked++;
    }
    for (const name of Object.keys(ours)) assert.ok(theirs.has(name), `${abi} ${name} not reported by the C program`);
    assert.equal(requestSize(abi), theirs.get('blkif_request.sizeof'));
    assert.equal(responseSize(abi), theirs.get('blkif_response.sizeof'));
  }

  // blkif.h compiled for i386: the `.long` values of the same table, in the same order.
  const asm = readFileSync(
    compileC({ name: 'blkif-layout-i386', sources: ['test/conformance/c/blkif-layout-i386.c'], flags: ['-m32', '-ffreestanding'], output: 'assembly' }),
    'utf8',
  );
  const table = asm.slice(asm.indexOf('xenblk_blkif_layout_i386:'));
  const i386 = [...table.matchAll(/^\s*\.long\s+(\d+)\s*$/gm)].map((m) => Number(m[1]));
  assert.equal(i386.length, names.length, 'the i386 table has one value per layout entry');
  names.forEach((name, i) => {
    assert.equal(c.x86_32.get(name), i386[i], `x86_32 mirror vs blkif.h for i386: ${name}`);
    checked++;
  });

  const msg = `blkif layout: ${checked} sizes/offsets/ring sizes matched Xen's headers (x86_64, x86_32 mirror, i386)`;
  t.diagnostic(msg);
  console.log(msg);
});

/** The request a `req` line describes, in our form. */
function wanted(f: Map<string, string>): { req: BlkifRequest; max: number } {
  const req = newBlkifRequest();
  const op = Number(get(f, 'op'));
  const id = get(f, 'id');
  req.operation = op;
  req.dataOp = op;
  req.idHi = parseInt(id.slice(0, 8), 16);
  req.idLo = parseInt(id.slice(8), 16);
  req.handle = Number(get(f, 'handle'));
  const sector = BigInt(get(f, 'sector'));
  assert.ok(sector < 2n ** 53n, 'vectors keep sector numbers exact in a double');
  req.sectorNumber = Number(sector);
  let max = 4096;
  if (op === BLKIF_OP_DISCARD) {
    req.discardFlag = Number(get(f, 'flag'));
    req.nrSectors = Number(BigInt(get(f, 'nr_sectors')));
  } else {
    req.nrSegments = Number(get(f, 'nseg'));
  }
  if (op === BLKIF_OP_INDIRECT) {
    req.dataOp = Number(get(f, 'indirect_op'));
    max = Number(get(f, 'max'));
    const grefs = get(f, 'grefs');
    const list = grefs === '' ? [] : grefs.split(',');
    req.nrIndirectPages = list.length;
    list.forEach((g, i) => (req.indirectGrefs[i] = parseInt(g, 16)));
  }
  const segs = f.get('segs');
  if (segs !== undefined) {
    segs.split(',').forEach((s, i) => {
      const [g, first, last] = s.split(':');
      req.segGref[i] = parseInt(g!, 16);
      req.segFirst[i] = Number(first);
      req.segLast[i] = Number(last);
    });
  }
  return { req, max };
}

function assertSameRequest(got: BlkifRequest, want: BlkifRequest, what: string): void {
  for (const k of ['operation', 'dataOp', 'nrSegments', 'handle', 'idLo', 'idHi', 'sectorNumber', 'nrSectors', 'discardFlag', 'nrIndirectPages'] as const) {
    assert.equal(got[k], want[k], `${what}: ${k}`);
  }
  const n = want.operation === BLKIF_OP_DISCARD ? 0 : want.nrSegments;
  assert.deepEqual(got.segGref.subarray(0, n), want.segGref.subarray(0, n), `${what}: gref`);
  assert.deepEqual(got.segFirst.subarray(0, n), want.segFirst.subarray(0, n), `${what}: first_sect`);
  assert.deepEqual(got.segLast.subarray(0, n), want.segLast.subarray(0, n), `${what}: last_sect`);
  assert.deepEqual(got.indirectGrefs.subarray(0, want.nrIndirectPages), want.indirectGrefs.subarray(0, want.nrIndirectPages), `${what}: indirect_grefs`);
}

test(`seeded requests and responses encode and decode byte-identically with C (seed ${SEED})`, (t) => {
  const lines = runC(program(), ['vectors', SEED, String(REQUESTS_PER_ABI), String(RESPONSES_PER_ABI)]).trim().split('\n');
  const got = newBlkifRequest();
  const rsp = newBlkifResponse();
  const count = { req: 0, invalid: 0, indirect: 0, rsp: 0 };
  const ops = new Set<string>();

  for (const [n, line] of lines.entries()) {
    const f = fields(line);
    const abi = get(f, 'abi') as BlkifAbi;
    const what = `vector ${n} (${line.slice(0, 120)}...)`;
    if (line.startsWith('rsp ')) {
      const id = get(f, 'id');
      const want = { idHi: parseInt(id.slice(0, 8), 16), idLo: parseInt(id.slice(8), 16), operation: Number(get(f, 'op')), status: Number(get(f, 'status')) };
      const size = responseSize(abi);
      const buf = new Uint8Array(size + 8).fill(0xaa); // stale bytes: padding must come out zero
      encodeResponse(abi, buf, 4, want);
      assert.equal(toHex(buf.subarray(4, 4 + size)), get(f, 'entry'), `${what}: encoded bytes`);
      assert.deepEqual([...buf.subarray(0, 4), ...buf.subarray(4 + size)], new Array(8).fill(0xaa), `${what}: wrote outside the response`);
      decodeResponse(abi, hexBytes(get(f, 'entry')), 0, rsp);
      assert.deepEqual({ ...rsp }, want, `${what}: decoded fields`);
      count.rsp++;
      continue;
    }

    assert.ok(line.startsWith('req '), `unexpected line ${line}`);
    const expect = get(f, 'expect');
    const { req: want, max } = wanted(f);
    const entry = hexBytes(get(f, 'entry'));
    assert.equal(entry.length, requestSize(abi));
    const pagesHex = f.get('pages');
    // Indirect pages as mapped: whole pages, the descriptors first, zeros after.
    const pages = new Uint8Array(Math.max(1, want.nrIndirectPages) * 4096);
    if (pagesHex !== undefined) pages.set(hexBytes(pagesHex));

    const err = decodeRequest(abi, entry, 0, got, max) ?? (got.operation === BLKIF_OP_INDIRECT ? decodeIndirectSegments(pages, got) : undefined);
    if (expect !== 'ok') {
      assert.ok(err, `${what}: accepted a request broken in ${expect}`);
      assert.equal(err.field, expect, `${what}: error names the field`);
      assert.equal(got.operation, want.operation, `${what}: operation is kept to answer`);
      assert.equal(got.idLo, want.idLo, `${what}: id is kept to answer`);
      assert.equal(got.idHi, want.idHi, `${what}: id is kept to answer`);
      assert.equal(blkifErrorStatus(err), expect === 'operation' ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR);
      count.invalid++;
      continue;
    }
    assert.equal(err, undefined, `${what}: rejected a valid request: ${err?.message}`);
    assertSameRequest(got, want, `${what} decoded`);

    const slot = new Uint8Array(requestSize(abi) + 8).fill(0xaa);
    encodeRequest(abi, slot, 4, want);
    assert.equal(toHex(slot.subarray(4, 4 + requestSize(abi))), toHex(entry), `${what}: encoded bytes`);
    assert.ok(slot.subarray(0, 4).every((b) => b === 0xaa) && slot.subarray(-4).every((b) => b === 0xaa), `${what}: wrote outside the entry`);
    if (want.operation === BLKIF_OP_INDIRECT) {
      const mine = new Uint8Array(want.nrIndirectPages * 4096).fill(0xaa);
      encodeIndirectSegments(mine, want);
      assert.equal(toHex(mine), toHex(pages.subarray(0, mine.length)), `${what}: indirect pages`);
      count.indirect++;
    }
    ops.add(`${abi}/${want.operation}`);
    count.req++;
  }

  assert.equal(count.req + count.invalid, 2 * REQUESTS_PER_ABI);
  assert.equal(count.rsp, 2 * RESPONSES_PER_ABI);
  assert.ok(count.invalid > 100 && count.indirect > 50, `the generator covers invalid (${count.invalid}) and indirect (${count.indirect}) requests`);
  assert.equal(ops.size, 12, `every op on both ABIs: ${[...ops].sort().join(' ')}`);
  const msg =
    `blkif vectors: ${count.req + count.invalid + count.rsp} matched C (blkif.h) — ` +
    `${count.req} valid requests byte-identical both ways (${count.indirect} indirect with their pages), ` +
    `${count.invalid} broken requests rejected naming the field, ${count.rsp} responses byte-identical both ways`;
  t.diagnostic(msg);
  console.log(msg);
});
