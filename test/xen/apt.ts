// What the harness asks of Debian's apt: which packages and versions the images are built
// from, where the host's archive is, and fetching .deb files. Everything comes from the apt
// sources the host already has, so the harness names no archive of its own.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { HarnessError, run } from './exec.ts';

/** `codename()` is the host's Debian release name (VERSION_CODENAME in /etc/os-release). */
export function codename(): string {
  let text: string;
  try {
    text = readFileSync('/etc/os-release', 'utf8');
  } catch {
    throw new HarnessError('test:xen builds its images with Debian apt; /etc/os-release is missing (not Debian?)');
  }
  const m = /^VERSION_CODENAME=["']?([a-z]+)["']?$/m.exec(text);
  if (m?.[1] === undefined) throw new HarnessError('no VERSION_CODENAME in /etc/os-release: test:xen needs Debian 12 (bookworm)');
  return m[1];
}

/** `mirrorFor(suite)` is the archive URI the host's apt uses for `<suite>/main` (debootstrap's mirror). */
export function mirrorFor(suite: string): string {
  // apt-cache policy lists each index as ` 500 <uri> <suite>/main amd64 Packages`.
  const out = run('apt-cache', ['policy']);
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 5 && f[2] === `${suite}/main` && f[3] === 'amd64' && f[1] !== undefined && /^https?:\/\//.test(f[1])) {
      return f[1];
    }
  }
  throw new HarnessError(`the host's apt has no '${suite}/main amd64' source (apt-cache policy); add Debian ${suite} main to /etc/apt/sources.list and run apt-get update`);
}

/** `versionIn(pkg, suite)` is the version of `pkg` that `<suite>/main` holds, per apt-cache madison. */
export function versionIn(pkg: string, suite: string): string {
  const out = run('apt-cache', ['madison', pkg]);
  for (const line of out.split('\n')) {
    const f = line.split('|').map((s) => s.trim());
    if (f.length >= 3 && f[0] === pkg && f[2] !== undefined && f[2].includes(` ${suite}/main `) && f[1] !== undefined) return f[1];
  }
  throw new HarnessError(`apt knows no ${pkg} in ${suite}/main (apt-cache madison ${pkg}); run apt-get update`);
}

/** `candidate(pkg)` is the version apt would install for `pkg`. */
export function candidate(pkg: string): string {
  const m = /^\s*Candidate:\s*(\S+)/m.exec(run('apt-cache', ['policy', pkg]));
  if (m?.[1] === undefined || m[1] === '(none)') throw new HarnessError(`apt has no candidate for ${pkg}; run apt-get update`);
  return m[1];
}

/** `kernelPackage()` is the linux-image-<abi>-amd64 package that linux-image-amd64 currently depends on. */
export function kernelPackage(): string {
  const m = /Depends:\s*(linux-image-\S+-amd64)/.exec(run('apt-cache', ['depends', 'linux-image-amd64']));
  if (m?.[1] === undefined) throw new HarnessError('apt-cache depends linux-image-amd64 names no kernel; run apt-get update');
  return m[1];
}

/** `download(pkg, version, dir)` fetches `pkg_version.deb` into `dir` and is its path. */
export function download(pkg: string, version: string, dir: string): string {
  run('apt-get', ['download', '-q', `${pkg}=${version}`], { cwd: dir });
  const deb = readdirSync(dir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  if (deb === undefined) throw new HarnessError(`apt-get download ${pkg}=${version} left no .deb in ${dir}`);
  return join(dir, deb);
}

/** `installedVersion(root, pkg)` is the version of `pkg` in the dpkg database under `root`, or undefined. */
export function installedVersion(root: string, pkg: string): string | undefined {
  const status = readFileSync(join(root, 'var/lib/dpkg/status'), 'utf8');
  for (const stanza of status.split('\n\n')) {
    if (!new RegExp(`^Package: ${pkg.replace(/[.+]/g, '\\$&')}$`, 'm').test(stanza)) continue;
    if (!/^Status: install ok installed$/m.test(stanza)) return undefined;
    return /^Version: (\S+)$/m.exec(stanza)?.[1];
  }
  return undefined;
}
