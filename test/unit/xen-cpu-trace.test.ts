// test/xen/cpu-trace.ts: the real-Xen benchmark's per-second dom0 CPU trace, summarised per backend.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuTraceNote, summarizeCpuTrace } from '../xen/cpu-trace.ts';

/** A trace line: time, serve main / all / kernel-thread ticks, then per CPU user..steal (cumulative). */
function line(t: number, main: number, serve: number, kt: number, cpus: number[][]): string {
  return `${t} ${main} ${serve} ${kt} ${cpus.map((c, i) => `cpu${i}:${c.join(',')},0,0`).join(' ')}`;
}

function near(actual: number, expected: number): void {
  assert.ok(Math.abs(actual - expected) < 1e-9, `${actual} is not ${expected}`);
}

test('seconds are split by which backend ran, and averaged in CPUs', () => {
  // cpu fields: user nice system idle iowait irq softirq steal
  const text = [
    line(100, 0, 0, 0, [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]),
    // 2 s of xenblk: main 80 ticks/s, serve 90/s; cpu0 busy 60+20, idle 10, steal 10; cpu1 busy 30, idle 50, steal 20
    line(102, 160, 180, 0, [[100, 0, 40, 20, 0, 0, 0, 20], [40, 0, 20, 80, 20, 0, 0, 40]]),
    // 1 s with both moving: a switch of disks, left out
    line(103, 170, 190, 10, [[200, 0, 40, 20, 0, 0, 0, 20], [40, 0, 20, 80, 20, 0, 0, 40]]),
    // 1 s of Linux blkback: kthread 20/s; cpu0 busy 10 (irq 5 + softirq 5), idle 60, steal 30; cpu1 idle 100
    line(104, 170, 190, 30, [[200, 0, 40, 80, 0, 5, 5, 50], [40, 0, 20, 180, 20, 0, 0, 40]]),
    'garbage line',
  ].join('\n');
  const s = summarizeCpuTrace(text);
  assert.equal(s.cpus, 2);
  assert.ok(s.xenblk !== undefined && s.linux !== undefined);
  near(s.xenblk.seconds, 2);
  near(s.xenblk.serveMain, 0.8);
  near(s.xenblk.serveAll, 0.9);
  near(s.xenblk.kthread, 0);
  near(s.xenblk.dom0Busy, (140 + 60) / 100 / 2);
  near(s.xenblk.dom0Idle, (20 + 100) / 100 / 2);
  near(s.xenblk.dom0Steal, (20 + 40) / 100 / 2);
  near(s.linux.seconds, 1);
  near(s.linux.kthread, 0.2);
  near(s.linux.serveMain, 0);
  near(s.linux.dom0Busy, 0.1);
  near(s.linux.dom0Idle, 1.6);
  near(s.linux.dom0Steal, 0.3);
  const note = cpuTraceNote(s);
  assert.match(note, /in CPUs of its 2: while xenblk served \(2 s\): serve's main thread 0\.80, all its threads 0\.90, dom0 busy 1\.00, idle 0\.60/);
  assert.match(note, /while Linux blkback served \(1 s\): its thread 0\.20, dom0 busy 0\.10, idle 1\.60, runnable but not running \(steal\) 0\.30/);
});

test('a trace with no second of one backend alone says so', () => {
  const s = summarizeCpuTrace([line(1, 0, 0, 0, [[0, 0, 0, 0, 0, 0, 0, 0]]), line(2, 50, 50, 50, [[10, 0, 0, 90, 0, 0, 0, 0]])].join('\n'));
  assert.equal(s.xenblk, undefined);
  assert.equal(s.linux, undefined);
  assert.match(cpuTraceNote(s), /no second in which one backend alone was driven/);
  assert.equal(summarizeCpuTrace('').cpus, 0);
});
