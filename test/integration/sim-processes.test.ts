// The simulated Xen host with real processes: domains in separate Node processes share memory
// through grants and see each other's writes; the simulated hypervisor refuses what Xen refuses
// with typed errors; and a domain process killed with SIGKILL leaves no mapping, descriptor or
// file behind, with its peer seeing what it would see on Xen (its mapping stays valid until it
// unmaps, its channel goes unbound, the domain leaves XenStore and @releaseDomain fires).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startSim, type SimHandle } from '../../lib/sim/start.ts';
import { readStatus } from '../../lib/sim/start.ts';
import { SimPaths } from '../../lib/sim/paths.ts';
import { connect } from '../../xenstore/connect.ts';
import type { Xenstore, WatchEvent } from '../../xenstore/xenstore.ts';
import { SimChild } from './sim-driver.ts';

interface Env {
  dir: string;
  paths: SimPaths;
  sim: SimHandle;
  xs: Xenstore;
  child(): SimChild;
}

async function env(t: { after: (fn: () => Promise<void> | void) => void }): Promise<Env> {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'xenblk-sim-'));
  const sim = await startSim({ dir });
  const paths = new SimPaths(dir);
  const xs = await connect({ socketPath: paths.xenstored });
  const children: SimChild[] = [];
  t.after(async () => {
    for (const c of children) await c.kill('SIGKILL');
    await xs.close();
    await sim.stop();
    const left = fs.readdirSync(dir);
    fs.rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(left, [], 'sim down removes everything it made');
  });
  return {
    dir, paths, sim, xs,
    child: () => {
      const c = SimChild.spawn();
      children.push(c);
      return c;
    },
  };
}

/** Polls `f` until it is true; the test's own timeout bounds the wait. */
async function until(f: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; ; i++) {
    if (await f()) return;
    if (i > 2000) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function fds(pid: number): string[] {
  return fs.readdirSync(`/proc/${pid}/fd`).map((f) => {
    try { return `${f} -> ${fs.readlinkSync(`/proc/${pid}/fd/${f}`)}`; } catch { return f; }
  });
}

function mapsMatching(pid: number, re: RegExp): string[] {
  return fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => re.test(l));
}

test('two domain processes share pages and see each other\'s writes', { timeout: 60_000 }, async (t) => {
  const e = await env(t);
  const front = e.child();
  const back = e.child();
  await front.call('attach', { dir: e.dir, domid: 1 });
  await back.call('attach', { dir: e.dir, domid: 2 });
  const shared = await front.call<{ obj: number; refs: number[] }>('share', { domid: 2, count: 2, writable: true });
  await front.call('write', { obj: shared.obj, offset: 4096 + 100, text: 'written by d1' });
  const mapped = await back.call<{ obj: number }>('map', { domid: 1, refs: shared.refs, writable: true });
  assert.equal((await back.call<{ text: string }>('read', { obj: mapped.obj, offset: 4096 + 100, length: 13 })).text, 'written by d1');
  await back.call('write', { obj: mapped.obj, offset: 7, text: 'and by d2' });
  assert.equal((await front.call<{ text: string }>('read', { obj: shared.obj, offset: 7, length: 9 })).text, 'and by d2');
  // Each process maps the other's memory file MAP_SHARED: the mapper maps exactly the 2 granted pages.
  const lines = mapsMatching(back.pid, new RegExp(`${e.dir}/mem-1\\.`));
  assert.equal(lines.length >= 1, true, 'the backend maps d1\'s memory');
  const bytes = lines.reduce((n, l) => { const [a, b] = l.split(' ')[0]!.split('-').map((x) => parseInt(x, 16)); return n + (b! - a!); }, 0);
  assert.equal(bytes, 2 * 4096);
  const s = readStatus(e.dir);
  const d1 = s.domains.find((d) => d.domid === 1)!;
  assert.equal(d1.granted, 2);
  assert.equal(d1.grantsMapped, 2);
  await back.call('unmap', { obj: mapped.obj });
  assert.deepEqual(mapsMatching(back.pid, new RegExp(`${e.dir}/mem-1\\.`)), [], 'unmapped pages are gone from the backend');
  await front.call('endAccess', { obj: shared.obj });
  assert.equal(readStatus(e.dir).domains.find((d) => d.domid === 1)!.granted, 0);
});

test('the hypervisor refuses what Xen refuses, with typed errors naming the domain and ref', { timeout: 60_000 }, async (t) => {
  const e = await env(t);
  const front = e.child();
  const back = e.child();
  const third = e.child();
  await front.call('attach', { dir: e.dir, domid: 1 });
  await back.call('attach', { dir: e.dir, domid: 2 });
  await third.call('attach', { dir: e.dir, domid: 3 });
  const ro = await front.call<{ obj: number; refs: number[] }>('share', { domid: 2, count: 1, writable: false });
  const rw = await front.call<{ obj: number; refs: number[] }>('share', { domid: 2, count: 3, writable: true });

  let err = await back.failure('map', { domid: 1, refs: ro.refs, writable: true });
  assert.deepEqual([err.name, err.code, err.domid, err.ref], ['GnttabError', 'EPERM', 1, ro.refs[0]]);
  assert.match(err.message!, /read-only/);

  err = await third.failure('map', { domid: 1, refs: rw.refs, writable: false });
  assert.deepEqual([err.name, err.code, err.ref], ['GnttabError', 'EPERM', rw.refs[0]]);
  assert.match(err.message!, /granted to d2, not d3/);

  err = await back.failure('map', { domid: 1, refs: [rw.refs[0], 999_999], writable: true });
  assert.deepEqual([err.code, err.ref], ['EINVAL', 999_999]);
  err = await back.failure('map', { domid: 1, refs: [rw.refs[0], 3000], writable: true });
  assert.deepEqual([err.code, err.ref], ['EPERM', 3000], 'a ref never granted');
  err = await back.failure('map', { domid: 9, refs: [8], writable: false });
  assert.deepEqual([err.code, err.domid], ['ESRCH', 9]);
  // All or nothing: the failed batches left no pin behind.
  assert.equal(readStatus(e.dir).domains.find((d) => d.domid === 1)!.grantsMapped, 0);

  const m = await back.call<{ obj: number }>('map', { domid: 1, refs: ro.refs, writable: false });
  err = await front.failure('endAccess', { obj: ro.obj });
  assert.deepEqual([err.name, err.code, err.ref], ['GnttabError', 'EBUSY', ro.refs[0]]);
  // A read-only grant is mapped PROT_READ: a write through it is stopped by the MMU (the
  // process dies of SIGSEGV, as a Linux backend writing a read-only gntdev mapping would).
  back.call('write', { obj: m.obj, offset: 0, text: 'x' }).catch(() => {});
  assert.equal((await back.exited).signal, 'SIGSEGV');
  assert.equal((await front.call<{ text: string }>('read', { obj: ro.obj, length: 1 })).text, '\0', 'the page is untouched');
  // ...and its death released its pins.
  await until(() => readStatus(e.dir).domains.find((d) => d.domid === 1)!.grantsMapped === 0, 'pins released');
  await front.call('endAccess', { obj: ro.obj });
});

test('SIGKILL of a granting domain: no file, mapping or fd left; the peer sees Xen\'s view', { timeout: 60_000 }, async (t) => {
  const e = await env(t);
  const front = e.child();
  const back = e.child();
  await back.call('attach', { dir: e.dir, domid: 0 });
  // The daemon accepts the new process's xenstore connection in its own time: wait until settled.
  let daemonFds = fds(e.sim.pid);
  for (;;) {
    await new Promise((r) => setTimeout(r, 200));
    const now = fds(e.sim.pid);
    if (now.length === daemonFds.length) break;
    daemonFds = now;
  }
  const daemonMaps = mapsMatching(e.sim.pid, /./).length;
  const a = await front.call<{ instance: number; slot: number }>('attach', { dir: e.dir, domid: 1 });
  // A toolstack-made backend directory for the frontend, and a watch on @releaseDomain.
  await e.xs.write('/local/domain/0/backend/vbd/1/51712/state', '1');
  const events: WatchEvent[] = [];
  const w = e.xs.watch('@releaseDomain', 'rel');
  void (async () => { for await (const ev of w) events.push(ev); })();
  await until(() => events.length === 1, 'initial watch event');

  const shared = await front.call<{ obj: number; refs: number[] }>('share', { domid: 0, count: 1, writable: true });
  await front.call('write', { obj: shared.obj, text: 'last words' });
  const port = (await front.call<{ port: number }>('allocUnbound', { domid: 0 })).port;
  const bport = (await back.call<{ port: number }>('bind', { domid: 1, port })).port;
  const mapped = await back.call<{ obj: number }>('map', { domid: 1, refs: shared.refs, writable: true });
  const mine = (f: string): boolean => new RegExp(`^(mem|gnttab|evtchn)-1\\.${a.instance}$|^xs-1\\.${a.instance}\\.sock$|^doorbell-${a.slot}\\.`).test(f);
  assert.ok(fs.readdirSync(e.dir).filter(mine).length >= 5);

  await front.kill('SIGKILL');
  await until(() => events.length === 2, '@releaseDomain');
  assert.equal(events[1]!.path, '@releaseDomain');
  assert.equal(await e.xs.tryRead('/local/domain/1'), undefined, 'the domain left XenStore');
  assert.equal(await e.xs.tryRead('/local/domain/0/backend/vbd/1'), undefined, 'its backend directories too, as libxl does');
  assert.deepEqual(fs.readdirSync(e.dir).filter(mine), [], 'none of its files is left in the sim dir');

  // As on Xen, the page stays valid for the peer that still maps it; the domain is "dying".
  assert.equal((await back.call<{ text: string }>('read', { obj: mapped.obj, length: 10 })).text, 'last words');
  let s = readStatus(e.dir);
  assert.deepEqual(s.domains.filter((d) => d.domid === 1).map((d) => [d.dying, d.grantsMapped]), [[true, 1]]);
  // Its channel went back to unbound on our side; notifying it is silently dropped, as on Xen.
  const dom0Port = s.domains.find((d) => d.domid === 0)!.ports.find((p) => p.port === bport)!;
  assert.deepEqual([dom0Port.state, dom0Port.remoteDomid], ['unbound', 1]);
  await back.call('notify', { port: bport });

  await back.call('unmap', { obj: mapped.obj });
  s = readStatus(e.dir);
  assert.deepEqual(s.domains.map((d) => d.domid), [0], 'the dying domain is gone once unmapped');
  assert.deepEqual(mapsMatching(back.pid, new RegExp(`mem-1\\.`)), [], 'no mapping of it left in the peer');
  await back.call('closePort', { port: bport });
  await until(() => fds(e.sim.pid).length === daemonFds.length,
    `daemon fds back to ${daemonFds.length}: new ${fds(e.sim.pid).filter((f) => !daemonFds.includes(f)).join(', ')}`);
  assert.deepEqual(mapsMatching(e.sim.pid, /(mem|gnttab|evtchn)-1\./), [], 'the daemon maps nothing of it');
  assert.ok(mapsMatching(e.sim.pid, /./).length <= daemonMaps + 8, 'the daemon did not accumulate mappings');
  await w.close();
});

test('SIGKILL of a mapping domain: its pins are released and its unmap notification fires', { timeout: 60_000 }, async (t) => {
  const e = await env(t);
  const front = e.child();
  const back = e.child();
  await front.call('attach', { dir: e.dir, domid: 4 });
  const b = await back.call<{ pid: number }>('attach', { dir: e.dir, domid: 0 });
  const shared = await front.call<{ obj: number; refs: number[] }>('share', { domid: 0, count: 2, writable: true });
  await front.call('write', { obj: shared.obj, offset: 4096 + 5, text: 'X' });
  const port = (await front.call<{ port: number }>('allocUnbound', { domid: 0 })).port;
  const bport = (await back.call<{ port: number }>('bind', { domid: 4, port })).port;
  const mapped = await back.call<{ obj: number }>('map', { domid: 4, refs: shared.refs, writable: true });
  await back.call('setUnmapNotify', { obj: mapped.obj, clearByte: 4096 + 5, port: bport });
  assert.equal((await front.failure('endAccess', { obj: shared.obj })).code, 'EBUSY');
  const before = (await front.call<{ events: number }>('events', { port })).events;

  await back.kill('SIGKILL');
  await until(async () => (await front.call<{ events: number }>('events', { port })).events > before, 'unmap notify event');
  assert.equal((await front.call<{ text: string }>('read', { obj: shared.obj, offset: 4096 + 5, length: 1 })).text, '\0', 'byte cleared');
  await front.call('endAccess', { obj: shared.obj });
  const s = readStatus(e.dir);
  assert.equal(s.domains.find((d) => d.domid === 4)!.grantsMapped, 0);
  assert.equal(s.domains.find((d) => d.domid === 0)!.processes.some((p) => p.pid === b.pid), false, 'dom0 stays, without the dead process');
  assert.deepEqual(s.domains.find((d) => d.domid === 4)!.ports.map((p) => p.state), ['unbound']);
});

test('a domain re-created with the same id is a new instance; closing a host cleans up like a death', { timeout: 60_000 }, async (t) => {
  const e = await env(t);
  const c1 = e.child();
  const first = await c1.call<{ instance: number }>('attach', { dir: e.dir, domid: 5 });
  await c1.call('close');
  assert.deepEqual(readStatus(e.dir).domains.map((d) => d.domid), [0]);
  assert.equal(await e.xs.tryRead('/local/domain/5'), undefined);
  const c2 = e.child();
  const second = await c2.call<{ instance: number }>('attach', { dir: e.dir, domid: 5 });
  assert.notEqual(second.instance, first.instance);
  assert.equal(await e.xs.read('/local/domain/5/domid'), '5');
  assert.equal(await e.xs.read('/local/domain/5/name'), 'sim-5');
});
