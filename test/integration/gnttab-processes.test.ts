// Simulated grant mapping between processes under repetition and sharing: thousands of
// map/unmap cycles keep their content right and leak nothing (no mapping, no pin); two processes
// of one domain can map the same grant at once and end of access waits for both; an unmap
// notification set by a live process fires at its unmap (clear byte, then the event), as
// gntdev's SET_UNMAP_NOTIFY does. A grant copy between processes moves the bytes asked for,
// is refused where a map would be, and leaves no pin and no mapping behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { readStatus } from '../../lib/sim/start.ts';
import { pollUntil, simWithChildren } from './sim-driver.ts';
import type { SimWithChildren } from './sim-driver.ts';

const env = (t: { after: (fn: () => Promise<void> | void) => void }): Promise<SimWithChildren> => simWithChildren(t, 'gnttab');
const until = pollUntil;

test('2,000 map/unmap cycles of 11 grants: right content every time, nothing leaks', { timeout: 120_000 }, async (t) => {
  const e = await env(t);
  const front = e.child();
  const back = e.child();
  await front.call('attach', { dir: e.dir, domid: 1 });
  const b = await back.call<{ pid: number }>('attach', { dir: e.dir, domid: 0 });
  const pages = await front.call<{ obj: number; refs: number[] }>('share', { domid: 0, count: 11, writable: false });
  // Word 0 of each page holds its own ref.
  for (let p = 0; p < 11; p++) {
    const le = Buffer.alloc(4);
    le.writeUInt32LE(pages.refs[p]!);
    await front.call('write', { obj: pages.obj, offset: p * 4096, text: le.toString('latin1') });
  }
  const first = await back.call<{ vmas: number }>('mapCycles', { domid: 1, refs: pages.refs, n: 100 });
  const r = await back.call<{ vmas: number }>('mapCycles', { domid: 1, refs: [...pages.refs].reverse(), n: 1900 });
  assert.ok(r.vmas <= first.vmas + 64, `VMAs stay bounded (${first.vmas} -> ${r.vmas})`);
  const maps = fs.readFileSync(`/proc/${b.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes(`${e.dir}/mem-1.`));
  assert.deepEqual(maps, [], 'no mapping of the frontend left');
  assert.equal(readStatus(e.dir).domains.find((d) => d.domid === 1)!.grantsMapped, 0, 'no pin left');
  await front.call('endAccess', { obj: pages.obj });
});

test('two processes of one domain map the same grant; end of access waits for both', { timeout: 60_000 }, async (t) => {
  const e = await env(t);
  const front = e.child();
  const back1 = e.child();
  const back2 = e.child();
  await front.call('attach', { dir: e.dir, domid: 2 });
  await back1.call('attach', { dir: e.dir, domid: 0 });
  await back2.call('attach', { dir: e.dir, domid: 0 });
  const pages = await front.call<{ obj: number; refs: number[] }>('share', { domid: 0, count: 1, writable: true });
  const m1 = await back1.call<{ obj: number }>('map', { domid: 2, refs: pages.refs, writable: true });
  const m2 = await back2.call<{ obj: number }>('map', { domid: 2, refs: pages.refs, writable: false });
  await back1.call('write', { obj: m1.obj, text: 'one writer' });
  assert.equal((await back2.call<{ text: string }>('read', { obj: m2.obj, length: 10 })).text, 'one writer');
  assert.equal((await front.failure('endAccess', { obj: pages.obj })).code, 'EBUSY');
  await back1.call('unmap', { obj: m1.obj });
  assert.equal((await front.failure('endAccess', { obj: pages.obj })).code, 'EBUSY', 'still mapped read-only by the other');
  await back2.call('unmap', { obj: m2.obj });
  await front.call('endAccess', { obj: pages.obj });
});

test('unmap notification on a live unmap: the byte is cleared, then the event arrives', { timeout: 60_000 }, async (t) => {
  const e = await env(t);
  const front = e.child();
  const back = e.child();
  await front.call('attach', { dir: e.dir, domid: 6 });
  await back.call('attach', { dir: e.dir, domid: 0 });
  const pages = await front.call<{ obj: number; refs: number[] }>('share', { domid: 0, count: 1, writable: true });
  await front.call('write', { obj: pages.obj, offset: 9, text: 'Y' });
  const port = (await front.call<{ port: number }>('allocUnbound', { domid: 0 })).port;
  const bport = (await back.call<{ port: number }>('bind', { domid: 6, port })).port;
  const m = await back.call<{ obj: number }>('map', { domid: 6, refs: pages.refs, writable: true });
  let err = await back.failure('setUnmapNotify', { obj: m.obj, clearByte: 4096 });
  assert.deepEqual([err.name, err.code], ['GnttabError', 'EINVAL']);
  await back.call('setUnmapNotify', { obj: m.obj, clearByte: 9, port: bport });
  const before = (await front.call<{ events: number }>('events', { port })).events;
  await back.call('unmap', { obj: m.obj });
  await until(async () => (await front.call<{ events: number }>('events', { port })).events > before, 'unmap event');
  assert.equal((await front.call<{ text: string }>('read', { obj: pages.obj, offset: 9, length: 1 })).text, '\0');
  err = await back.failure('unmap', { obj: m.obj });
  assert.deepEqual([err.name, err.code], ['GnttabError', 'EINVAL']);
});

test('grant copy between processes: bytes land where asked, refusals name the ref, no pin or mapping stays', { timeout: 60_000 }, async (t) => {
  const e = await env(t);
  const front = e.child();
  const back = e.child();
  await front.call('attach', { dir: e.dir, domid: 3 });
  const b = await back.call<{ pid: number }>('attach', { dir: e.dir, domid: 0 });
  const rw = await front.call<{ obj: number; refs: number[] }>('share', { domid: 0, count: 2, writable: true });
  const ro = await front.call<{ obj: number; refs: number[] }>('share', { domid: 0, count: 1, writable: false });
  await front.call('write', { obj: ro.obj, offset: 100, text: 'read-only page' });
  // Into the grants: "abc" at 4090 of page 0, "defgh" at 0 of page 1 (a piece per page, as blkif segments are).
  await back.call('copy', { domid: 3, toForeign: true, size: 8, text: 'abcdefgh', pieces: [[rw.refs[0], 4090, 3, 0], [rw.refs[1], 0, 5, 3]] });
  assert.equal((await front.call<{ text: string }>('read', { obj: rw.obj, offset: 4090, length: 11 })).text, 'abc\0\0\0defgh');
  // Out of them, and out of the read-only grant.
  const out = await back.call<{ text: string }>('copy', { domid: 3, toForeign: false, size: 22, pieces: [[rw.refs[1], 0, 8, 0], [ro.refs[0], 100, 14, 8]] });
  assert.equal(out.text, 'defgh\0\0\0read-only page');
  let err = await back.failure('copy', { domid: 3, toForeign: true, size: 4, text: 'nope', pieces: [[ro.refs[0], 0, 4, 0]] });
  assert.deepEqual([err.name, err.code], ['GnttabError', 'EPERM'], err.message);
  assert.match(err.message ?? '', new RegExp(`ref ${ro.refs[0]}`));
  assert.equal((await front.call<{ text: string }>('read', { obj: ro.obj, offset: 0, length: 4 })).text, '\0\0\0\0', 'the read-only page was not written');
  err = await back.failure('copy', { domid: 3, toForeign: false, size: 4, pieces: [[rw.refs[0], 4094, 4, 0]] });
  assert.match(err.message ?? '', /not within one 4096-byte page/);
  err = await back.failure('copy', { domid: 3, toForeign: false, size: 4, pieces: [[rw.refs[0], 0, 4, 2]] });
  assert.deepEqual([err.name, err.code], ['GnttabError', 'EINVAL'], 'a local range past the buffer is refused before the hypervisor is asked');
  // Nothing stays: no pin (end of access succeeds at once), no mapping of the frontend.
  assert.equal(readStatus(e.dir).domains.find((d) => d.domid === 3)!.grantsMapped, 0, 'no pin left');
  const maps = fs.readFileSync(`/proc/${b.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes(`${e.dir}/mem-3.`));
  assert.deepEqual(maps, [], 'nothing of the frontend mapped');
  await front.call('endAccess', { obj: rw.obj });
  await front.call('endAccess', { obj: ro.obj });
  // An ended grant cannot be copied.
  err = await back.failure('copy', { domid: 3, toForeign: false, size: 4, pieces: [[rw.refs[0], 0, 4, 0]] });
  assert.equal(err.name, 'GnttabError', err.message);
});
