// Hot spots of V8 CPU profiles (the .cpuprofile format of node --cpu-prof and DevTools): self time per function, per profile file,
// so a run with --profile says where the TypeScript workers spent their time.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  readonly hitCount?: number;
}

interface Profile {
  readonly nodes: ProfileNode[];
  readonly samples?: number[];
  readonly timeDeltas?: number[];
  readonly startTime: number;
  readonly endTime: number;
}

/** One function's share of a profile. */
export interface HotSpot {
  readonly fn: string;
  readonly where: string;
  readonly selfMs: number;
  /** Share of the busy (non-idle) time, 0..1. */
  readonly share: number;
}

function location(url: string, line: number, root: string): string {
  if (url === '') return '';
  let p = url;
  if (p.startsWith('file://')) {
    try { p = fileURLToPath(p); } catch { /* keep the URL */ }
  }
  if (p.startsWith(root)) p = path.relative(root, p);
  return `${p}:${line + 1}`;
}

/** `hotSpots(file, root, top)` is the `top` functions by self time of one profile, and its busy and idle time. */
export function hotSpots(file: string, root: string, top = 15): { spots: HotSpot[]; busyMs: number; idleMs: number; gcMs: number } {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  const self = new Map<number, number>();
  const samples = prof.samples ?? [];
  const deltas = prof.timeDeltas ?? [];
  // Sample i lasted until sample i+1: attribute timeDeltas[i+1] to samples[i].
  for (let i = 0; i < samples.length; i++) {
    const dt = (deltas[i + 1] ?? 0) / 1000;
    self.set(samples[i]!, (self.get(samples[i]!) ?? 0) + dt);
  }
  const byFn = new Map<string, { fn: string; where: string; ms: number }>();
  let idleMs = 0;
  let gcMs = 0;
  let busyMs = 0;
  for (const n of prof.nodes) {
    const ms = self.get(n.id) ?? 0;
    if (ms === 0) continue;
    const fn = n.callFrame.functionName || '(anonymous)';
    if (fn === '(idle)') { idleMs += ms; continue; }
    if (fn === '(garbage collector)') gcMs += ms;
    busyMs += ms;
    const where = location(n.callFrame.url, n.callFrame.lineNumber, root);
    const key = `${fn}@${where}`;
    const e = byFn.get(key) ?? { fn, where, ms: 0 };
    e.ms += ms;
    byFn.set(key, e);
  }
  const spots = [...byFn.values()].sort((a, b) => b.ms - a.ms).slice(0, top).map((e) => ({ fn: e.fn, where: e.where, selfMs: e.ms, share: busyMs > 0 ? e.ms / busyMs : 0 }));
  return { spots, busyMs, idleMs, gcMs };
}

function profilesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...profilesUnder(p));
    else if (e.name.endsWith('.cpuprofile')) out.push(p);
  }
  return out.sort();
}

/** `summarizeProfiles(dir, root)` is a text report of every profile under `dir`, busiest first. */
export function summarizeProfiles(dir: string, root: string): string {
  const out: string[] = [`CPU profiles under ${path.relative(root, dir)} (self time; share of non-idle time)`];
  const all = profilesUnder(dir).map((f) => ({ f, h: hotSpots(f, root) })).sort((a, b) => b.h.busyMs - a.h.busyMs);
  if (all.length === 0) out.push('  (none written)');
  for (const { f, h } of all) {
    const name = path.relative(dir, f);
    out.push(`\n${name}: busy ${h.busyMs.toFixed(0)} ms (GC ${h.gcMs.toFixed(0)} ms), idle ${h.idleMs.toFixed(0)} ms`);
    for (const s of h.spots) out.push(`  ${(100 * s.share).toFixed(1).padStart(5)}%  ${s.selfMs.toFixed(0).padStart(6)} ms  ${s.fn}  ${s.where}`);
  }
  return `${out.join('\n')}\n`;
}
