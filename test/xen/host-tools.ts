// What the host must have before anything is built: root, x86-64 Debian, Node >= 20, and the
// Debian tools the images are made with. Missing tools are installed with apt-get; anything
// that cannot be fixed here is reported in one sentence that says how to fix it.
import { existsSync, readFileSync } from 'node:fs';
import { arch, platform } from 'node:os';
import { HarnessError, run, which } from './exec.ts';

/** Host commands the harness runs, and the Debian package that provides each. */
const TOOLS: ReadonlyArray<readonly [command: string, pkg: string]> = [
  ['qemu-system-x86_64', 'qemu-system-x86'],
  ['debootstrap', 'debootstrap'],
  ['mkfs.ext4', 'e2fsprogs'],
  ['cpio', 'cpio'],
  ['xz', 'xz-utils'],
  ['zstd', 'zstd'],
  ['gzip', 'gzip'],
  ['depmod', 'kmod'],
  ['nice', 'coreutils'],
];

/** The statically linked busybox that both initramfs images are built around (package busybox-static). */
export const STATIC_BUSYBOX = '/bin/busybox';

/** `cannotRun()` is why this machine cannot run the real-Xen harness at all, or undefined when it can. */
export function cannotRun(): string | undefined {
  if (platform() !== 'linux' || arch() !== 'x64') return `test:xen needs an x86-64 Linux host (this is ${platform()}/${arch()})`;
  if (process.getuid?.() !== 0) return 'test:xen needs root (apt-get install, debootstrap and building the dom0 image): run it as root, e.g. sudo npm run test:xen';
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 20) return `test:xen hands this Node binary to dom0 and needs Node >= 20 (this is ${process.version})`;
  if (which('apt-get') === undefined || which('dpkg-deb') === undefined) return 'test:xen builds everything from Debian apt: apt-get and dpkg-deb are missing (not a Debian host?)';
  return undefined;
}

/** `isStaticBusybox()` is whether /bin/busybox exists and is statically linked. */
function isStaticBusybox(): boolean {
  if (!existsSync(STATIC_BUSYBOX)) return false;
  // A static ELF has no PT_INTERP, so no loader path appears in its first bytes.
  const head = readFileSync(STATIC_BUSYBOX).subarray(0, 4096).toString('latin1');
  return !head.includes('/lib64/ld-linux');
}

/** `ensureHostTools(log)` installs with apt-get whichever host tools are missing. */
export function ensureHostTools(log: (line: string) => void): void {
  const missing = new Set<string>();
  for (const [cmd, pkg] of TOOLS) if (which(cmd) === undefined) missing.add(pkg);
  if (!isStaticBusybox()) missing.add('busybox-static');
  if (missing.size === 0) return;
  const pkgs = [...missing].sort();
  log(`installing host tools with apt-get: ${pkgs.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    run('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...pkgs], { env });
  } catch {
    run('apt-get', ['update', '-q'], { env });
    run('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...pkgs], { env });
  }
  for (const [cmd, pkg] of TOOLS) {
    if (which(cmd) === undefined) throw new HarnessError(`'${cmd}' is still missing after apt-get install ${pkg}`);
  }
  if (!isStaticBusybox()) throw new HarnessError(`${STATIC_BUSYBOX} is not a static busybox after apt-get install busybox-static`);
}
