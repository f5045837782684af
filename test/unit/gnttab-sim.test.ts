// gnttab/sim.ts (the granting guest) and lib/sim/domain.ts (the simulated hypervisor's pin
// logic) over the same real files, in one process: entries are written in the grant_entry_v1
// layout, pins check them as Xen's _set_status_v1 does and set/clear GTF_reading/GTF_writing,
// and end of access is refused while mapped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Mapping, PAGE } from '../../native/memory.ts';
import { GnttabError } from '../../gnttab/error.ts';
import { GNTTAB_NR_RESERVED_ENTRIES, GRANT_ENTRY_V1_SIZE, GTF } from '../../gnttab/grant-entry.ts';
import { SIM_CHUNK, SimGrantSharer, type SimGnttabHypervisor } from '../../gnttab/sim.ts';
import { DomainInstance } from '../../lib/sim/domain.ts';
import { SimPaths } from '../../lib/sim/paths.ts';

const FRAMES = 4 * SIM_CHUNK;
const GRANTS = 2 * SIM_CHUNK;
const GUEST = 3;
const BACKEND = 0;

interface Fixture {
  dom: DomainInstance;
  sharer: SimGrantSharer;
  entry(ref: number): { flags: number; domid: number; frame: number };
  memFd: number;
}

function fixture(t: { after: (fn: () => void) => void }): Fixture {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'xenblk-gnttab-'));
  const paths = new SimPaths(dir);
  const dom = DomainInstance.create(paths, GUEST, 1, FRAMES, GRANTS);
  const open = (p: string, len: number): Mapping => {
    const fd = fs.openSync(p, 'r+');
    try { return Mapping.file(fd, 0, len, true); } finally { fs.closeSync(fd); }
  };
  const ram = open(paths.mem(GUEST, 1), FRAMES * PAGE);
  const table = open(paths.gnttab(GUEST, 1), GRANTS * GRANT_ENTRY_V1_SIZE);
  let nextRefChunk = 0;
  let nextFrame = 0;
  const hv: SimGnttabHypervisor = {
    grantChunk: () => (nextRefChunk++) * SIM_CHUNK,
    frameRun: (count) => { const f = nextFrame; nextFrame += count; return f; },
    map: () => { throw new Error('not used'); },
    unmap: () => {},
    setUnmapNotify: () => {},
  };
  const sharer = new SimGrantSharer({
    domid: GUEST, nrGrants: GRANTS, nrFrames: FRAMES, grantTable: table.view(), ram,
    ramPath: (d, i) => paths.mem(d, i), hypervisor: hv,
  });
  const memFd = fs.openSync(paths.mem(GUEST, 1), 'r');
  t.after(() => {
    sharer.close();
    ram.unmap();
    table.unmap();
    fs.closeSync(memFd);
    dom.unlinkFiles();
    dom.finalize();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    dom, sharer, memFd,
    entry: (ref) => {
      const b = Buffer.alloc(8);
      const fd = fs.openSync(paths.gnttab(GUEST, 1), 'r');
      try { fs.readSync(fd, b, 0, 8, ref * 8); } finally { fs.closeSync(fd); }
      return { flags: b.readUInt16LE(0), domid: b.readUInt16LE(2), frame: b.readUInt32LE(4) };
    },
  };
}

function isGnttab(code: string, ref?: number) {
  return (e: unknown): boolean => e instanceof GnttabError && e.code === code && (ref === undefined || e.ref === ref);
}

test('share writes grant_entry_v1 entries {flags, domid, frame} over zeroed pages of the guest RAM', (t) => {
  const f = fixture(t);
  const p = f.sharer.share(BACKEND, 3, true);
  const ro = f.sharer.share(BACKEND, 1, false);
  assert.equal(p.refs.length, 3);
  assert.equal(p.buffer.length, 3 * PAGE);
  assert.ok(p.buffer.every((b) => b === 0));
  for (const ref of [...p.refs, ...ro.refs]) assert.ok(ref >= GNTTAB_NR_RESERVED_ENTRIES, `ref ${ref} avoids the reserved entries`);
  const frames = p.refs.map((r) => f.entry(r));
  for (const e of frames) {
    assert.equal(e.flags, GTF.permit_access);
    assert.equal(e.domid, BACKEND);
  }
  assert.deepEqual(frames.map((e) => e.frame - frames[0]!.frame), [0, 1, 2], 'contiguous frames back the contiguous buffer');
  assert.equal(f.entry(ro.refs[0]!).flags, GTF.permit_access | GTF.readonly);
  // The buffer is the guest's RAM itself: page i of the buffer is frame[i] of the RAM file.
  p.buffer.write('page two', 2 * PAGE);
  const back = Buffer.alloc(8);
  fs.readSync(f.memFd, back, 0, 8, frames[2]!.frame * PAGE);
  assert.equal(back.toString(), 'page two');
});

test('pinning checks permit_access, the grantee domid, read-only vs writable and the ref range', (t) => {
  const f = fixture(t);
  const rw = f.sharer.share(BACKEND, 1, true).refs[0]!;
  const ro = f.sharer.share(BACKEND, 1, false).refs[0]!;
  const other = f.sharer.share(9, 1, true).refs[0]!;
  assert.deepEqual(f.dom.pin(ro, BACKEND, true), { code: 'EPERM', detail: 'read-only grant; writable mapping refused' });
  assert.equal((f.dom.pin(other, BACKEND, false) as { code: string }).code, 'EPERM');
  assert.match((f.dom.pin(other, BACKEND, false) as { detail: string }).detail, /granted to d9, not d0/);
  assert.equal((f.dom.pin(GRANTS - 1, BACKEND, false) as { code: string }).code, 'EPERM', 'never granted');
  assert.equal((f.dom.pin(GRANTS, BACKEND, false) as { code: string }).code, 'EINVAL', 'beyond the table');
  assert.equal(f.entry(ro).flags, GTF.permit_access | GTF.readonly, 'a refused pin leaves the entry alone');
  assert.equal(f.dom.pin(rw, BACKEND, true), f.entry(rw).frame);
  assert.equal(f.entry(rw).flags, GTF.permit_access | GTF.reading | GTF.writing);
  assert.equal(f.dom.pin(ro, BACKEND, false), f.entry(ro).frame);
  assert.equal(f.entry(ro).flags, GTF.permit_access | GTF.readonly | GTF.reading);
});

test('several pins coexist: GTF_writing goes with the last writer, GTF_reading with the last pin', (t) => {
  const f = fixture(t);
  const ref = f.sharer.share(BACKEND, 1, true).refs[0]!;
  f.dom.pin(ref, BACKEND, false);
  f.dom.pin(ref, BACKEND, true);
  f.dom.pin(ref, BACKEND, false);
  assert.equal(f.entry(ref).flags, GTF.permit_access | GTF.reading | GTF.writing);
  assert.equal(f.dom.unpin(ref, true), false);
  assert.equal(f.entry(ref).flags, GTF.permit_access | GTF.reading);
  assert.equal(f.dom.unpin(ref, false), false);
  assert.equal(f.entry(ref).flags, GTF.permit_access | GTF.reading);
  assert.equal(f.dom.unpin(ref, false), true);
  assert.equal(f.entry(ref).flags, GTF.permit_access);
  assert.equal(f.dom.active.size, 0);
});

test('endAccess fails EBUSY naming the mapped ref and revokes nothing; succeeds once unmapped', (t) => {
  const f = fixture(t);
  const p = f.sharer.share(BACKEND, 2, true);
  f.dom.pin(p.refs[1]!, BACKEND, false);
  assert.throws(() => f.sharer.endAccess(p), isGnttab('EBUSY', p.refs[1]));
  assert.equal(f.entry(p.refs[0]!).flags, GTF.permit_access, 'the unmapped ref was not revoked either');
  assert.equal(p.buffer.length, 2 * PAGE, 'the pages stay usable');
  f.dom.unpin(p.refs[1]!, false);
  f.sharer.endAccess(p);
  for (const r of p.refs) assert.deepEqual(f.entry(r), { flags: 0, domid: 0, frame: 0 });
  assert.equal(p.buffer.length, 0, 'the sharer\'s view is detached');
  assert.equal((f.dom.pin(p.refs[0]!, BACKEND, false) as { code: string }).code, 'EPERM', 'a revoked grant cannot be mapped');
  assert.throws(() => f.sharer.endAccess(p), isGnttab('EINVAL'), 'twice');
});

test('refs and frames are recycled after endAccess; bad arguments are typed errors', (t) => {
  const f = fixture(t);
  const a = f.sharer.share(BACKEND, 4, true);
  f.sharer.endAccess(a);
  const b = f.sharer.share(BACKEND, 4, true);
  assert.deepEqual(new Set(b.refs), new Set(a.refs));
  assert.throws(() => f.sharer.share(BACKEND, 0, true), isGnttab('EINVAL'));
  assert.throws(() => f.sharer.share(0x7ff0, 1, true), isGnttab('EINVAL'));
  assert.throws(() => f.sharer.share(-1, 1, true), isGnttab('EINVAL'));
});
