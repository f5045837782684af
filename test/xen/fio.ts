// fio for the benchmark domU (test/xen/bench.ts): Debian's fio binary with every shared library
// it loads and the loader, taken from .deb files that apt-get downloads (nothing is installed on
// the host). Debian's fio links its optional engines (rados, rbd, gluster, nbd, pmem, rdma)
// directly, so the closure is large but fixed; only packages whose files are actually loaded
// have their own dependencies fetched. The result is cached beside the images, under
// <cache>/fio/<version>-<hash of this code>, and laid out for the busybox domU initramfs:
//   /fio/bin/fio, /fio/lib/<soname>... (run with LD_LIBRARY_PATH=/fio/lib) and the loader at
//   its PT_INTERP path (/lib64/ld-linux-x86-64.so.2).
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { elfDeps } from './elf.ts';
import { HarnessError, run, succeeds } from './exec.ts';

const HERE = dirname(fileURLToPath(import.meta.url));

/** Where a Debian amd64 system's loader looks by default (multiarch first, as Debian's ld.so.conf.d does). */
const LIB_DIRS = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib64', 'usr/lib64', 'lib', 'usr/lib'];

/** What the cache holds for one fio version. */
interface BundleInfo {
  readonly version: string;
  readonly interp: string;
  readonly libs: readonly string[];
  readonly packages: readonly string[];
  readonly bytes: number;
}

/** fio packed for an initramfs. */
export interface FioBundle {
  /** Debian version of fio, e.g. `3.33-3`. */
  readonly version: string;
  /** Files for InitramfsSpec.files. */
  readonly files: ReadonlyArray<{ readonly at: string; readonly from: string; readonly exec?: boolean }>;
  /** Total size of those files. */
  readonly bytes: number;
}

/** `bundleFiles(dir, info)` is the initramfs file list of the bundle cached in `dir`. */
function bundleFiles(dir: string, info: BundleInfo): FioBundle {
  return {
    version: info.version,
    bytes: info.bytes,
    files: [
      { at: 'fio/bin/fio', from: join(dir, 'bin/fio'), exec: true },
      ...info.libs.map((l) => ({ at: `fio/lib/${l}`, from: join(dir, 'lib', l) })),
      // The kernel opens PT_INTERP like an executable (it needs the x bit).
      { at: info.interp.replace(/^\/+/, ''), from: join(dir, 'lib', basename(info.interp)), exec: true },
    ],
  };
}

/** `inRoot(root, p)` is where absolute path `p` of an extracted package tree really is (symlinks followed inside `root`), or undefined. */
function inRoot(root: string, p: string): string | undefined {
  let rel = p.replace(/^\/+/, '');
  for (let hops = 0; hops < 40; hops++) {
    const full = join(root, rel);
    let st;
    try {
      st = lstatSync(full);
    } catch {
      return undefined;
    }
    if (!st.isSymbolicLink()) return st.isFile() ? full : undefined;
    const target = readlinkSync(full);
    rel = target.startsWith('/') ? target.replace(/^\/+/, '') : join(dirname(rel), target);
  }
  return undefined;
}

/** `dependsOf(deb)` is the packages `deb` depends on (Depends and Pre-Depends; of each alternative the first real package). */
function dependsOf(deb: string): string[] {
  const fields = run('dpkg-deb', ['-f', deb, 'Pre-Depends', 'Depends']);
  const out: string[] = [];
  for (const line of fields.split('\n')) {
    const value = line.replace(/^[A-Za-z-]+:\s*/, '');
    for (const group of value.split(',')) {
      const alts = group.split('|').map((a) => a.trim().replace(/\s*\(.*\)\s*$/, '').replace(/:any$/, '')).filter((a) => a !== '');
      // A virtual package (debconf-2.0) cannot be downloaded; apt-cache show refuses it.
      const real = alts.length === 1 ? alts[0] : alts.find((a) => succeeds('apt-cache', ['show', '--no-all-versions', a]));
      if (real !== undefined && !out.includes(real)) out.push(real);
    }
  }
  return out;
}

/** `build(dir, log)` fetches and packs fio into the empty directory `dir`; is what it packed. */
function build(dir: string, log: (line: string) => void): BundleInfo {
  const debs = join(dir, 'debs');
  const roots = new Map<string, string>();
  const debOf = new Map<string, string>();
  const fetch = (pkgs: readonly string[]): void => {
    const d = join(debs, String(roots.size));
    mkdirSync(d, { recursive: true });
    log(`  apt-get download ${pkgs.join(' ')}`);
    run('apt-get', ['download', '-q', ...pkgs], { cwd: d });
    for (const p of pkgs) {
      const deb = readdirSync(d).find((f) => f.startsWith(`${p}_`) && f.endsWith('.deb'));
      if (deb === undefined) throw new HarnessError(`apt-get download ${p} left no .deb in ${d}`);
      const root = join(dir, 'pkgs', p);
      mkdirSync(root, { recursive: true });
      run('dpkg-deb', ['-x', join(d, deb), root]);
      roots.set(p, root);
      debOf.set(p, join(d, deb));
    }
  };
  const deps = new Map<string, string[]>();
  const depsOf = (p: string): string[] => {
    let d = deps.get(p);
    if (d === undefined) deps.set(p, (d = dependsOf(debOf.get(p)!)));
    return d;
  };
  /** `find(p)` is the real file and package of absolute path `p` among the fetched packages. */
  const find = (p: string): { file: string; pkg: string } | undefined => {
    for (const [pkg, root] of roots) {
      const file = inRoot(root, p);
      if (file !== undefined) return { file, pkg };
    }
    return undefined;
  };

  fetch(['fio']);
  const fio = find('/usr/bin/fio');
  if (fio === undefined) throw new HarnessError('the fio package has no /usr/bin/fio');
  for (let round = 0; ; round++) {
    const libs = new Map<string, { file: string; pkg: string }>();
    const used = new Set<string>(['fio']);
    const unresolved = new Set<string>();
    const interp = elfDeps(fio.file).interp;
    if (interp === undefined) throw new HarnessError(`${fio.file} has no PT_INTERP: not a dynamically linked program`);
    const loader = find(interp);
    if (loader !== undefined) used.add(loader.pkg);
    else unresolved.add(interp);
    const queue = [{ file: fio.file, at: '/usr/bin/fio' }];
    for (let q = queue.shift(); q !== undefined; q = queue.shift()) {
      const e = elfDeps(q.file);
      const dirs = [...e.searchPath.map((s) => s.replace(/\$(ORIGIN|\{ORIGIN\})/g, dirname(q.at))), ...LIB_DIRS.map((l) => `/${l}`)];
      for (const so of e.needed) {
        if (libs.has(so) || unresolved.has(so)) continue;
        let hit: { file: string; pkg: string; at: string } | undefined;
        for (const d of dirs) {
          const f = find(join(d, so));
          if (f !== undefined) {
            hit = { ...f, at: join(d, so) };
            break;
          }
        }
        if (hit === undefined) {
          unresolved.add(so);
          continue;
        }
        libs.set(so, hit);
        used.add(hit.pkg);
        queue.push({ file: hit.file, at: hit.at });
      }
    }
    if (unresolved.size === 0 && loader !== undefined) {
      mkdirSync(join(dir, 'bin'), { recursive: true });
      mkdirSync(join(dir, 'lib'), { recursive: true });
      copyFileSync(fio.file, join(dir, 'bin/fio'));
      let bytes = statSync(fio.file).size + statSync(loader.file).size;
      for (const [so, l] of libs) {
        copyFileSync(l.file, join(dir, 'lib', so));
        bytes += statSync(l.file).size;
      }
      copyFileSync(loader.file, join(dir, 'lib', basename(interp)));
      const version = run('dpkg-deb', ['-f', debOf.get('fio')!, 'Version']).trim();
      return { version, interp, libs: [...libs.keys()].sort(), packages: [...used].sort(), bytes };
    }
    // Fetch the dependencies of the packages whose files are loaded; a package nothing loads adds none.
    const next = [...new Set([...used].flatMap(depsOf))].filter((p) => !roots.has(p));
    if (next.length === 0 || round > 20) {
      throw new HarnessError(`fio needs ${[...unresolved].join(', ')}, which no package in its dependency closure provides`);
    }
    fetch(next);
  }
}

/** `ensureFio(cacheRoot, log)` is Debian's fio with its libraries and loader, from the cache or freshly fetched. */
export function ensureFio(cacheRoot: string, log: (line: string) => void): FioBundle {
  const h = createHash('sha256');
  for (const f of ['fio.ts', 'elf.ts']) h.update(f).update(readFileSync(join(HERE, f)));
  const version = /^\s*Candidate:\s*(\S+)/m.exec(run('apt-cache', ['policy', 'fio']))?.[1];
  if (version === undefined || version === '(none)') throw new HarnessError('apt has no candidate for fio; run apt-get update');
  const key = `${version}_${h.digest('hex').slice(0, 10)}`.replace(/[^A-Za-z0-9._-]/g, '_');
  const top = join(cacheRoot, 'fio');
  const dir = join(top, key);
  const infoFile = join(dir, 'bundle.json');
  if (existsSync(infoFile)) return bundleFiles(dir, JSON.parse(readFileSync(infoFile, 'utf8')) as BundleInfo);

  mkdirSync(top, { recursive: true });
  const partial = `${dir}.partial-${process.pid}`;
  rmSync(partial, { recursive: true, force: true });
  mkdirSync(partial, { recursive: true });
  const t0 = Date.now();
  log(`packing fio ${version} and its libraries from Debian apt into ${dir}`);
  let info: BundleInfo;
  try {
    info = build(partial, log);
  } catch (e) {
    rmSync(partial, { recursive: true, force: true });
    throw e;
  }
  rmSync(join(partial, 'debs'), { recursive: true, force: true });
  rmSync(join(partial, 'pkgs'), { recursive: true, force: true });
  writeFileSync(join(partial, 'bundle.json'), `${JSON.stringify(info, null, 2)}\n`);
  // Other fio bundles (older versions or code) only take space.
  for (const e of readdirSync(top)) if (e !== key && !e.includes('.partial-')) rmSync(join(top, e), { recursive: true, force: true });
  rmSync(dir, { recursive: true, force: true });
  renameSync(partial, dir);
  log(`  fio ${version}: ${info.libs.length} libraries from ${info.packages.length} packages, ${(info.bytes / 2 ** 20).toFixed(1)} MiB, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return bundleFiles(dir, info);
}
