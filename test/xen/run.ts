// `npm run test:xen`: the real-Xen harness. Builds (or takes from the cache) Xen, a Debian dom0
// and the domU kernel from Debian's apt, boots Xen + dom0 under QEMU once, runs the selected
// tests in dom0 (test/xen/tests.ts) with the repository shared over 9p, and reports one
// PASS/FAIL line per test with timings. Exit status: 0 all passed, 1 a test failed or the run
// broke, 2 this machine cannot run the harness (the reason is printed).
//
//   npm run test:xen [-- [--list] [--rebuild] [--build-only] [--keep] [test-name ...]]
//
// Environment: XENBLK_XEN_CACHE (default /var/cache/xenblk-xen) holds the built images;
// XENBLK_XEN_DEADLINE (Unix seconds, set by .ci/run) is when the QEMU run must have ended: its
// limit, normally the sum of the tests' own, is cut to fit.
import { copyFileSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { HarnessError, run } from './exec.ts';
import { cannotRun, ensureHostTools } from './host-tools.ts';
import { ensureImages } from './images.ts';
import type { Images } from './images.ts';
import { buildInitramfs } from './initramfs.ts';
import { parseMarker } from './markers.ts';
import type { Marker } from './markers.ts';
import { BOOT_ALLOWANCE_S, boot } from './qemu.ts';
import { TESTS } from './tests.ts';
import type { XenTest } from './tests.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '../..');


const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

interface Outcome {
  readonly test: XenTest;
  readonly pass: boolean;
  readonly seconds?: number;
  readonly why?: string;
}

/** `selectTests(names)` is the tests named (all when none), in run order; HarnessError on an unknown name. */
function selectTests(names: readonly string[]): XenTest[] {
  if (names.length === 0) return [...TESTS];
  const unknown = names.filter((n) => !TESTS.some((t) => t.name === n));
  if (unknown.length > 0) throw new HarnessError(`unknown real-Xen test(s): ${unknown.join(', ')} (known: ${TESTS.map((t) => t.name).join(', ')})`);
  return TESTS.filter((t) => names.includes(t.name));
}

/** `missingFiles(t)` is the repository files test `t` needs that are not in the tree. */
function missingFiles(t: XenTest): string[] {
  return (t.requires ?? []).filter((f) => !existsSync(join(REPO, f)));
}

/** `prepareRun(images, tests, nodeBin)` is a fresh per-run directory holding what dom0 reads at boot. */
function prepareRun(images: Images, tests: readonly XenTest[], nodeBin: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'xenblk-xen-'));
  copyFileSync(join(HERE, 'dom0/boot.sh'), join(dir, 'boot.sh'));
  writeFileSync(join(dir, 'env'), `export XENBLK_NODE=/xenblk/node/${basename(nodeBin)}\nexport XENBLK_KERNEL_RELEASE=${images.manifest.kernelRelease}\n`);
  writeFileSync(join(dir, 'tests.list'), tests.map((t) => `${t.name} ${t.timeoutSeconds} bash test/xen/tests/${t.script}\n`).join(''));
  // The domU initramfs is cheap to pack, so it is made per run from the current scripts.
  const order = readFileSync(join(images.share, 'modules/order'), 'utf8').split('\n').filter((m) => m !== '');
  buildInitramfs(
    {
      init: join(HERE, 'domu/init.sh'),
      modules: order.map((m) => join(images.share, 'modules', m)),
      files: [{ at: 'workload.sh', from: join(HERE, 'domu/workload.sh'), exec: true }],
    },
    join(dir, 'domu-initramfs'),
    join(dir, 'domU-initrd.gz'),
  );
  rmSync(join(dir, 'domu-initramfs'), { recursive: true, force: true });
  return dir;
}

/** `logTail(runDir, name, n)` is the last `n` lines of a test's dom0 log, or undefined. */
function logTail(runDir: string, name: string, n: number): string | undefined {
  const p = join(runDir, 'logs', `${name}.log`);
  if (!existsSync(p)) return undefined;
  return readFileSync(p, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
}

/** `describe(m)` is a marker as the harness reports it live. */
function describe(m: Marker): string | undefined {
  switch (m.kind) {
    case 'start': return `  ... ${m.name}`;
    case 'boot-fail': return `  dom0 setup failed: ${m.reason}`;
    case 'crash': return `  crash on the console: ${m.line}`;
    default: return undefined;
  }
}

/**
 * `runLimit(wanted)` is the QEMU run's limit in seconds: `wanted`, cut to end 30 s before
 * XENBLK_XEN_DEADLINE when that is set. HarnessError when the deadline leaves no room for a boot.
 */
function runLimit(wanted: number): number {
  const raw = process.env.XENBLK_XEN_DEADLINE;
  if (raw === undefined || raw === '') return wanted;
  const deadline = Number(raw);
  if (!Number.isInteger(deadline)) throw new HarnessError(`XENBLK_XEN_DEADLINE=${raw}: not Unix seconds`);
  const left = deadline - Math.floor(Date.now() / 1000) - 30;
  if (left < BOOT_ALLOWANCE_S) throw new HarnessError(`XENBLK_XEN_DEADLINE leaves ${left} s, less than a boot's ${BOOT_ALLOWANCE_S} s`);
  if (left < wanted) say(`run limit ${left} s (XENBLK_XEN_DEADLINE), not the tests' ${wanted} s`);
  return Math.min(wanted, left);
}

async function main(argv: string[]): Promise<number> {
  const t0 = Date.now();
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      list: { type: 'boolean', default: false },
      rebuild: { type: 'boolean', default: false },
      'build-only': { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
    },
  });
  if (values.list) {
    for (const t of TESTS) say(`${t.name.padEnd(32)} ${t.summary}`);
    return 0;
  }
  const tests = selectTests(positionals);
  const why = cannotRun();
  if (why !== undefined) {
    say(`test:xen cannot run on this machine: ${why}`);
    say(`real-Xen tests not run: ${tests.map((t) => t.name).join(', ')}`);
    return 2;
  }

  say('== real-Xen harness: Xen 4.17 + Debian dom0 under QEMU (TCG)');
  ensureHostTools(say);
  const cacheRoot = process.env.XENBLK_XEN_CACHE ?? '/var/cache/xenblk-xen';
  const { images, built, seconds: imageSeconds } = ensureImages({ cacheRoot, rebuild: values.rebuild, log: say });
  const mf = images.manifest;
  say(`images ${built ? `built in ${imageSeconds.toFixed(1)} s` : `cached (checked in ${imageSeconds.toFixed(1)} s; built in ${mf.buildSeconds} s)`}: ${images.dir}`);
  const domu = mf.domuKernelPackage !== mf.kernelPackage ? `, domU ${mf.domuKernelPackage} ${mf.domuKernelVersion}` : ' (dom0 and domU)';
  say(`  xen ${mf.xenVersion}, ${mf.kernelPackage} ${mf.kernelVersion}${domu}, ${mf.suite} dom0`);
  if (values['build-only']) return 0;

  const outcomes = new Map<string, Outcome>();
  const runnable: XenTest[] = [];
  for (const t of tests) {
    const missing = missingFiles(t);
    if (missing.length > 0) outcomes.set(t.name, { test: t, pass: false, why: `needs ${missing.join(', ')}, not in this tree yet` });
    else runnable.push(t);
  }

  // Checked before anything is built for the run, so a refusal leaves nothing behind.
  const limit = runnable.length > 0 ? runLimit(BOOT_ALLOWANCE_S + runnable.reduce((s, t) => s + t.timeoutSeconds + 30, 0)) : 0;
  if (runnable.some((t) => t.build === true)) {
    // The bundle starts in seconds in dom0 where tsx takes half a minute; build it from this tree.
    const s = Date.now();
    run('npm', ['run', '-s', 'build'], { cwd: REPO });
    say(`built dist/xenblk.mjs (npm run build, ${((Date.now() - s) / 1000).toFixed(1)} s)`);
  }
  const nodeBin = realpathSync(process.execPath);
  const runDir = prepareRun(images, runnable, nodeBin);
  let qemuSeconds = 0;
  let bootSeconds: number | undefined;
  let serialLog = join(runDir, 'serial.log');
  let broke: string | undefined;
  let lastLines: readonly string[] = [];
  if (runnable.length > 0) {
    say(`booting Xen + dom0 (serial log ${serialLog}); tests: ${runnable.map((t) => t.name).join(', ')}`);
    const result = await boot({
      images,
      runDir,
      timeoutMs: limit * 1000,
      onMarker: (m, at) => {
        if (m.kind === 'booted') say(`  dom0 up after ${at.toFixed(1)} s`);
        const line = describe(m);
        if (line !== undefined) say(line);
        if (m.kind === 'result') say(`  ${m.pass ? 'PASS' : 'FAIL'} ${m.name} (${m.seconds.toFixed(1)} s)`);
      },
    });
    qemuSeconds = result.seconds;
    bootSeconds = result.bootSeconds;
    serialLog = result.serialLog;
    lastLines = result.lastLines;
    // The markers file in the share backs up the console should a marker line have been garbled there.
    const fromShare = existsSync(join(runDir, 'markers'))
      ? readFileSync(join(runDir, 'markers'), 'utf8').split('\n').map(parseMarker).filter((m): m is Marker => m !== undefined)
      : [];
    const results = [...result.markers, ...fromShare].filter((m) => m.kind === 'result');
    for (const t of runnable) {
      const r = results.find((m) => m.kind === 'result' && m.name === t.name);
      if (r !== undefined && r.kind === 'result') outcomes.set(t.name, { test: t, pass: r.pass, seconds: r.seconds });
    }
    const bootFail = result.markers.find((m) => m.kind === 'boot-fail');
    const crash = result.markers.find((m) => m.kind === 'crash');
    if (bootFail?.kind === 'boot-fail') broke = `dom0 setup failed: ${bootFail.reason}`;
    else if (crash?.kind === 'crash') broke = `crash: ${crash.line}`;
    else if (result.bootSeconds === undefined) broke = `dom0 did not come up (${result.exit} after ${result.seconds.toFixed(0)} s)`;
    else if (result.timedOut) broke = `the run did not end within ${limit} s`;
    else if (!result.markers.some((m) => m.kind === 'done')) broke = `QEMU ended (${result.exit}) before dom0's last marker`;
    for (const t of runnable) {
      if (!outcomes.has(t.name)) outcomes.set(t.name, { test: t, pass: false, why: `no result: ${broke ?? 'no marker for it'}` });
    }
  }

  say('');
  say('== real-Xen results');
  let passed = 0;
  let failed = 0;
  for (const t of tests) {
    const o = outcomes.get(t.name);
    if (o === undefined) continue;
    if (o.pass) passed++;
    else failed++;
    const time = o.seconds !== undefined ? ` (${o.seconds.toFixed(1)} s)` : '';
    say(`${o.pass ? 'PASS' : 'FAIL'} ${t.name}${time}: ${t.summary}`);
    if (o.why !== undefined) say(`     ${o.why}`);
    if (!o.pass) {
      const tail = logTail(runDir, t.name, 30);
      if (tail !== undefined) say(tail.split('\n').map((l) => `     | ${l}`).join('\n'));
      const hang = join(runDir, 'logs', `${t.name}.hang`);
      if (existsSync(hang) && statSync(hang).size > 0) say(`     processes near the time limit: ${hang}`);
    }
  }
  const total = (Date.now() - t0) / 1000;
  say(`timings: images ${built ? 'built' : 'cached'} ${imageSeconds.toFixed(1)} s, dom0 boot ${bootSeconds !== undefined ? `${bootSeconds.toFixed(1)} s` : 'n/a'}, QEMU ${qemuSeconds.toFixed(1)} s, total ${total.toFixed(1)} s`);
  if (broke !== undefined) {
    say(`run broke: ${broke}; last console lines:`);
    say(lastLines.map((l) => `     | ${l}`).join('\n'));
  }
  if (failed > 0 || broke !== undefined || values.keep) {
    say(`kept: serial log ${serialLog}; dom0 test logs ${join(runDir, 'logs')}`);
  } else {
    rmSync(runDir, { recursive: true, force: true });
  }
  say(`xen: ${passed} passed, ${failed} failed`);
  return failed > 0 || broke !== undefined ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    say(`test:xen: ${e instanceof HarnessError ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    say('xen: 0 passed, 1 failed');
    process.exitCode = 1;
  },
);
