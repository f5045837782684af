// Small initramfs images: a staging directory packed as a gzip'd newc cpio archive (the format
// the kernel unpacks, Documentation/filesystems/ramfs-rootfs-initramfs.rst), and the kernel
// modules such an image must insmod, resolved with their dependencies from modules.dep.
import { chmodSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { HarnessError, run } from './exec.ts';
import { STATIC_BUSYBOX } from './host-tools.ts';

/** `normalise(name)` is a module name as the kernel compares them ('-' and '_' are the same). */
function normalise(name: string): string {
  return name.replace(/-/g, '_');
}

/**
 * `modulesInLoadOrder(modulesDir, wanted)` is the .ko paths (relative to `modulesDir`) to insmod,
 * dependencies before dependents, for the `wanted` modules; built-in modules are left out.
 */
export function modulesInLoadOrder(modulesDir: string, wanted: readonly string[]): string[] {
  const deps = new Map<string, { path: string; deps: string[] }>();
  for (const line of readFileSync(join(modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (m?.[1] === undefined) continue;
    const name = normalise(basename(m[1]).replace(/\.ko(\.\w+)?$/, ''));
    deps.set(name, { path: m[1], deps: (m[2] ?? '').split(/\s+/).filter((d) => d !== '') });
  }
  const builtin = new Set(
    readFileSync(join(modulesDir, 'modules.builtin'), 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => normalise(basename(l).replace(/\.ko$/, ''))),
  );
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (path: string): void => {
    if (seen.has(path)) return;
    seen.add(path);
    const entry = deps.get(normalise(basename(path).replace(/\.ko(\.\w+)?$/, '')));
    if (entry === undefined) throw new HarnessError(`module ${path} is not in ${modulesDir}/modules.dep`);
    for (const d of entry.deps) visit(d);
    order.push(entry.path);
  };
  for (const w of wanted) {
    const entry = deps.get(normalise(w));
    if (entry !== undefined) visit(entry.path);
    else if (!builtin.has(normalise(w))) throw new HarnessError(`kernel module ${w} is neither in modules.dep nor built in (${modulesDir})`);
  }
  if (order.some((p) => !p.endsWith('.ko'))) throw new HarnessError('compressed kernel modules: busybox insmod in the initramfs needs plain .ko files');
  return order;
}

/** What goes into one initramfs. */
export interface InitramfsSpec {
  /** Script run as /init (PID 1). */
  readonly init: string;
  /** Kernel modules to copy in (absolute paths), in the order /init loads them; listed in /modules/order. */
  readonly modules: readonly string[];
  /** Further files: path inside the image -> host path (made executable when `exec`). */
  readonly files?: ReadonlyArray<{ readonly at: string; readonly from: string; readonly exec?: boolean }>;
}

/** `buildInitramfs(spec, staging, out)` stages `spec` in the empty directory `staging` and packs it into `out` (.cpio.gz). */
export function buildInitramfs(spec: InitramfsSpec, staging: string, out: string): void {
  for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'modules', 'newroot']) mkdirSync(join(staging, d), { recursive: true });
  copyFileSync(STATIC_BUSYBOX, join(staging, 'bin/busybox'));
  chmodSync(join(staging, 'bin/busybox'), 0o755);
  copyFileSync(spec.init, join(staging, 'init'));
  chmodSync(join(staging, 'init'), 0o755);
  const names: string[] = [];
  for (const m of spec.modules) {
    copyFileSync(m, join(staging, 'modules', basename(m)));
    names.push(basename(m));
  }
  writeFileSync(join(staging, 'modules/order'), names.map((n) => `${n}\n`).join(''));
  for (const f of spec.files ?? []) {
    const dest = join(staging, f.at);
    mkdirSync(join(dest, '..'), { recursive: true });
    copyFileSync(f.from, dest);
    chmodSync(dest, f.exec === true ? 0o755 : 0o644);
  }
  // The kernel wants newc with the trailer; sorted names keep the archive reproducible.
  run('sh', ['-c', 'find . | LC_ALL=C sort | cpio -o -H newc --quiet --owner=0:0 | gzip -6 > "$1"', 'sh', out], { cwd: staging });
}
