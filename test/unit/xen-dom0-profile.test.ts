// test/xen/dom0-profile.ts: a perf profile of dom0 split by the CPU trace's windows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classifyChain, dom0ProfileNote, summarizeDom0Profile } from '../xen/dom0-profile.ts';
import { traceWindows } from '../xen/cpu-trace.ts';

/** `perf script -F comm,pid,time -G` lines. */
function comm(name: string, pid: number, t: number): string {
  return `${name.padStart(16)} ${String(pid).padStart(5)} ${t.toFixed(6)}: `;
}

const K = 'ffffffff81000000';
/** One serve sample as `perf script -F time,ip,sym` prints it: frames leaf first. */
function chain(t: number, frames: [string, string][]): string {
  return [`  ${t.toFixed(6)}: `, ...frames.map(([ip, sym]) => `\t${ip.padStart(16)} ${sym}`), ''].join('\n');
}

const USER: [string, string][] = [['7f493c051692', '[unknown]'], ['f12530', '[unknown]']];
const PINNING: [string, string][] = [
  [K, 'xen_hypercall_pv'], [K, 'internal_get_user_pages_fast'], [K, 'bio_iov_iter_get_pages'], [K, 'iomap_dio_rw'],
  [K, 'io_submit_one'], [K, '__x64_sys_io_submit'], [K, 'do_syscall_64'], ['7f493c0f0000', 'syscall'],
];
const SUBMIT: [string, string][] = [[K, 'vp_notify'], [K, 'blk_finish_plug'], [K, 'io_submit_one'], [K, '__x64_sys_io_submit'], [K, 'do_syscall_64']];
const FAULT: [string, string][] = [[K, 'clear_page_erms'], [K, 'handle_mm_fault'], [K, 'exc_page_fault'], [K, 'asm_exc_page_fault'], ['f12530', '[unknown]']];
const EPOLL: [string, string][] = [[K, 'xen_hypercall_pv'], [K, 'ep_poll'], [K, '__x64_sys_epoll_pwait'], [K, 'do_syscall_64']];
const IRQ: [string, string][] = [[K, 'xen_hypercall_pv'], [K, 'xen_evtchn_do_upcall']];

test('classifyChain: user space, io_submit and its pinning, faults, other calls, other kernel work', () => {
  assert.equal(classifyChain(USER), 'user');
  assert.equal(classifyChain(PINNING), 'pinning');
  assert.equal(classifyChain(SUBMIT), 'ioSubmit');
  assert.equal(classifyChain(FAULT), 'pageFaults');
  assert.equal(classifyChain(EPOLL), 'otherSyscalls');
  assert.equal(classifyChain(IRQ), 'otherKernel');
  assert.equal(classifyChain([]), 'user');
});

test('samples are counted in the windows of the backend that was driven, serve classified in its own', () => {
  // CPU trace: 100-102 xenblk (serve's main thread moves), 102-104 Linux (the kernel thread moves).
  const cpu = (t: number, main: number, kt: number): string => `${t} ${main} ${main} ${kt} cpu0:0,0,0,0,0,0,0,0,0,0`;
  const windows = traceWindows([cpu(100, 0, 0), cpu(101, 50, 0), cpu(102, 100, 0), cpu(103, 100, 30), cpu(104, 100, 60)].join('\n'));
  assert.deepEqual(windows, { xenblk: [[100, 101], [101, 102]], linux: [[102, 103], [103, 104]] });

  const comms = [
    comm('node', 186, 100.1), comm('V8 DefaultWorke', 186, 100.5), comm('node', 186, 101.2), comm('swapper', 0, 101.3), comm('node', 77, 101.9),
    comm('1.xvda-0', 300, 102.2), comm('kworker/u4:1-lo', 50, 102.4), comm('kworker/u4:2-fl', 51, 103.5), comm('swapper', 0, 103.6),
    comm('node', 186, 99.9), comm('node', 186, 104.0), // outside both
    comm('node', 186, 105.0), comm('node', 186, 105.1), // outside both, but say which node is serve
    'garbage',
  ].join('\n');
  const serve = [
    chain(100.1, USER), chain(100.2, PINNING), chain(100.3, PINNING), chain(100.4, SUBMIT), chain(100.5, FAULT),
    chain(101.0, EPOLL), chain(101.5, IRQ), chain(101.6, USER),
    chain(102.5, PINNING), // while Linux served: not serve's work for its own disk
  ].join('\n');
  const p = summarizeDom0Profile(comms, serve, windows);
  assert.deepEqual(p.xenblk, { total: 5, serve: 3, blkbackThread: 0, kworkers: 0, idle: 1, other: 1 });
  assert.deepEqual(p.linux, { total: 4, serve: 0, blkbackThread: 1, kworkers: 2, idle: 1, other: 0 });
  assert.deepEqual(p.serve, { total: 8, user: 2, ioSubmit: 3, pinning: 2, pageFaults: 1, otherSyscalls: 1, otherKernel: 1 });
  const note = dom0ProfileNote(p);
  assert.match(note, /while xenblk served \(5 samples\): serve 60%, Linux blkback thread 0%, kernel workers 0%, idle 20%, other tasks 20%/);
  assert.match(note, /while Linux blkback served \(4 samples\): serve 0%, Linux blkback thread 25%, kernel workers 50%, idle 25%/);
  assert.match(note, /serve's own samples while it served \(8\): user space 25%, io_submit 38% \(of which pinning .*: 25%\), page faults 13%/);
});

test('no samples in a window: shares are shown as -', () => {
  const p = summarizeDom0Profile('', '', { xenblk: [], linux: [] });
  assert.equal(p.serve.total, 0);
  assert.match(dom0ProfileNote(p), /while xenblk served \(0 samples\): serve -,/);
});
