// The images one real-Xen boot needs, built from Debian's apt and cached on this machine:
//   xen.elf          the hypervisor (xen-hypervisor-4.17-amd64, at the version of dom0's xen-utils)
//   vmlinuz          the Debian kernel, booted as dom0
//   dom0-initrd.gz   busybox + virtio/ext4/9p modules; mounts /dev/vda and switch_roots to it
//   dom0.img         ext4 image of a debootstrap'ed minbase root with the Xen tools
//   share/vmlinux    the same kernel, uncompressed, for PV domUs (libxc skips xz in a slow dom0)
//   share/modules/   the domU's kernel modules (xen-blkfront)
// The cache key holds the package versions and a hash of the files that shape the images, so a
// new Debian kernel or Xen, or a change to these scripts, builds afresh; anything else reuses.
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { codename, download, installedVersion, kernelPackage, candidate, mirrorFor, versionIn } from './apt.ts';
import { HarnessError, run } from './exec.ts';
import { buildInitramfs, modulesInLoadOrder } from './initramfs.ts';

const HERE = dirname(fileURLToPath(import.meta.url));

/** The Xen release the harness targets (the one Debian 12 ships). */
const XEN = '4.17';

/**
 * Packages debootstrap puts into dom0 besides minbase (Node comes from the host over 9p).
 * linux-perf: `npm run bench -- --profile` profiles all of dom0 with it (test/xen/dom0-profile.ts);
 * the kernel's own profiler sees what a V8 profile of serve cannot (its system calls inside).
 */
const DOM0_PACKAGES = [`xen-utils-${XEN}`, 'xenstore-utils', 'iproute2', 'kmod', 'procps', 'busybox-static', 'e2fsprogs', 'util-linux', 'linux-perf'];

/** Modules dom0's initramfs loads to reach its root disk and the 9p shares (crc32c: ext4 metadata_csum). */
const DOM0_INITRAMFS_MODULES = ['crc32c_generic', 'virtio_pci', 'virtio_blk', 'ext4', '9pnet_virtio', '9p'];

/** Modules test/xen/dom0/boot.sh and the tests modprobe in dom0. */
const DOM0_MODULES = ['xenfs', 'xen-evtchn', 'xen-gntdev', 'xen-gntalloc', 'xen-privcmd', 'loop', 'xen-blkback'];

/** Modules a domU's initramfs may load. */
const DOMU_MODULES = ['xen-blkfront'];

/** Size of dom0's root disk; free space holds the tests' backing files (QEMU keeps writes in a snapshot). */
const DOM0_DISK_SIZE = '3G';

/** Files whose content shapes the cached images: a change to any of them changes the key. */
const SHAPING_FILES = ['images.ts', 'initramfs.ts', 'apt.ts', 'image/dom0-initramfs-init.sh', 'image/dom0-init.sh'];

/** Everything one boot needs, all inside `dir`. */
export interface Images {
  readonly dir: string;
  readonly xen: string;
  readonly dom0Kernel: string;
  readonly dom0Initrd: string;
  readonly dom0Disk: string;
  /** Directory shared read-only with dom0 (mounted at /xenblk/cache): vmlinux, modules/ (with `order`). */
  readonly share: string;
  readonly manifest: Manifest;
}

/** What an image set was built from, and how long building took. */
export interface Manifest {
  readonly suite: string;
  /** dom0's kernel. */
  readonly kernelPackage: string;
  readonly kernelVersion: string;
  readonly kernelRelease: string;
  /** The PV domUs' kernel (dom0's unless XENBLK_XEN_KERNEL chose another for dom0). */
  readonly domuKernelPackage: string;
  readonly domuKernelVersion: string;
  readonly xenVersion: string;
  readonly builtAt: string;
  readonly buildSeconds: number;
}

interface Plan {
  readonly suite: string;
  readonly mirror: string;
  readonly kernelPackage: string;
  readonly kernelVersion: string;
  readonly domuKernelPackage: string;
  readonly domuKernelVersion: string;
  readonly xenVersion: string;
  readonly key: string;
}

/**
 * `dom0Kernel(standard)` is the kernel package dom0 boots: `standard` (what linux-image-amd64
 * depends on, which the domUs boot too), or XENBLK_XEN_KERNEL when set, another one the host's
 * apt offers, e.g. Debian 12's linux-image-6.12.*+deb12-amd64 from bookworm-security. Only dom0's
 * changes: it is the backends' kernel, and Debian 12's 6.12 as a PV domU killed fio under TCG
 * (a fault in mtree_load) where 6.1 runs it.
 */
function dom0Kernel(standard: string): string {
  const chosen = process.env.XENBLK_XEN_KERNEL;
  if (chosen === undefined || chosen === '') return standard;
  if (!/^linux-image-\S+-amd64$/.test(chosen)) throw new HarnessError(`XENBLK_XEN_KERNEL=${chosen}: not a linux-image-<abi>-amd64 package`);
  return chosen;
}

/** `plan()` is what would be built now: package versions from the host's apt, and the cache key. */
function plan(): Plan {
  const suite = codename();
  const mirror = mirrorFor(suite);
  const upkg = kernelPackage();
  const uver = candidate(upkg);
  const kpkg = dom0Kernel(upkg);
  const kver = kpkg === upkg ? uver : candidate(kpkg);
  // debootstrap installs dom0's Xen tools from <suite>/main; the hypervisor must match them exactly.
  const xver = versionIn(`xen-utils-${XEN}`, suite);
  const h = createHash('sha256');
  for (const f of SHAPING_FILES) h.update(f).update(readFileSync(join(HERE, f)));
  const domu = kpkg === upkg ? '' : `_domU-${upkg.replace(/^linux-image-/, '')}-${uver}`;
  const key = `${suite}_xen-${xver}_${kpkg.replace(/^linux-image-/, '')}-${kver}${domu}_${h.digest('hex').slice(0, 10)}`.replace(/[^A-Za-z0-9._-]/g, '_');
  return { suite, mirror, kernelPackage: kpkg, kernelVersion: kver, domuKernelPackage: upkg, domuKernelVersion: uver, xenVersion: xver, key };
}

/** `imagesIn(dir)` is the image set in `dir`, or undefined when it is absent or incomplete. */
function imagesIn(dir: string): Images | undefined {
  const mf = join(dir, 'manifest.json');
  if (!existsSync(mf)) return undefined;
  const manifest = JSON.parse(readFileSync(mf, 'utf8')) as Manifest;
  const images: Images = {
    dir,
    xen: join(dir, 'xen.elf'),
    dom0Kernel: join(dir, 'vmlinuz'),
    dom0Initrd: join(dir, 'dom0-initrd.gz'),
    dom0Disk: join(dir, 'dom0.img'),
    share: join(dir, 'share'),
    manifest,
  };
  for (const p of [images.xen, images.dom0Kernel, images.dom0Initrd, images.dom0Disk, join(images.share, 'vmlinux')]) {
    if (!existsSync(p)) return undefined;
  }
  return images;
}

/**
 * The compressions Debian's bzImages use for their payload (Documentation/arch/x86/boot.rst:
 * payload_offset): xz up to Linux 6.1, zstd since. Each decoder takes one stream from the magic on
 * and ignores what trails it (setup data); the result is kept only if it is an ELF.
 */
const PAYLOADS = [
  { name: 'xz', magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], decode: 'xz -dc --single-stream "$1" > "$2"' },
  // zstd stops with an error at the data after its frame, having written the frame.
  { name: 'zstd', magic: [0x28, 0xb5, 0x2f, 0xfd], decode: 'zstd -dcq "$1" > "$2" 2>/dev/null; true' },
] as const;

/** `extractVmlinux(bzImage, out)` writes the uncompressed ELF kernel inside a bzImage (xz or zstd) to `out`. */
function extractVmlinux(bzImage: string, out: string, scratch: string): void {
  const data = readFileSync(bzImage);
  for (const p of PAYLOADS) {
    const magic = Buffer.from(p.magic);
    for (let at = data.indexOf(magic); at >= 0; at = data.indexOf(magic, at + 1)) {
      const piece = join(scratch, `vmlinux.${p.name}`);
      writeFileSync(piece, data.subarray(at));
      try {
        run('sh', ['-c', p.decode, 'sh', piece, out]);
      } catch {
        continue;
      } finally {
        rmSync(piece, { force: true });
      }
      const head = readFileSync(out).subarray(0, 4);
      if (head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return;
    }
  }
  throw new HarnessError(`no xz- or zstd-compressed ELF kernel found inside ${bzImage}`);
}

/** What `unpackKernel` unpacked: the kernel release, its modules directory and its bzImage. */
interface UnpackedKernel {
  readonly release: string;
  readonly modulesDir: string;
  readonly vmlinuz: string;
}

/** `unpackKernel(pkg, version, debs, into)` downloads a kernel package and unpacks it into `into`, modules plain and indexed. */
function unpackKernel(pkg: string, version: string, debs: string, into: string): UnpackedKernel {
  const deb = download(pkg, version, debs);
  run('dpkg-deb', ['-x', deb, into]);
  const release = readdirSync(join(into, 'lib/modules'))[0];
  if (release === undefined) throw new HarnessError(`${deb} holds no /lib/modules/<release>`);
  const modulesDir = join(into, 'lib/modules', release);
  // Debian's 6.12 kernels ship their modules xz-compressed; the initramfs's busybox insmod takes
  // plain .ko files only, so they are unpacked here (dom0's kmod takes either).
  run('find', [modulesDir, '-name', '*.ko.xz', '-exec', 'xz', '-d', '{}', '+']);
  run('depmod', ['-b', into, release]);
  return { release, modulesDir, vmlinuz: join(into, 'boot', `vmlinuz-${release}`) };
}

/** `build(p, dir, log)` builds the whole image set of plan `p` into the empty directory `dir`. */
function build(p: Plan, dir: string, log: (line: string) => void): void {
  const t0 = Date.now();
  const step = (what: string): (() => void) => {
    const s = Date.now();
    log(`  ${what}...`);
    return () => log(`  ${what}: ${((Date.now() - s) / 1000).toFixed(1)} s`);
  };
  const debs = join(dir, 'debs');
  const kernel = join(dir, 'kernel');
  const root = join(dir, 'root');
  mkdirSync(debs, { recursive: true });

  let done = step(`apt-get download ${p.kernelPackage}=${p.kernelVersion}`);
  const dom0 = unpackKernel(p.kernelPackage, p.kernelVersion, debs, kernel);
  const { release, modulesDir } = dom0;
  copyFileSync(dom0.vmlinuz, join(dir, 'vmlinuz'));
  done();

  // The PV domUs boot the uncompressed kernel with xen-blkfront from the share.
  done = step(`domU kernel ${p.domuKernelPackage}=${p.domuKernelVersion}`);
  const domu = p.domuKernelPackage === p.kernelPackage ? dom0 : unpackKernel(p.domuKernelPackage, p.domuKernelVersion, debs, join(dir, 'kernel-domu'));
  mkdirSync(join(dir, 'share/modules'), { recursive: true });
  extractVmlinux(domu.vmlinuz, join(dir, 'share/vmlinux'), dir);
  const domuModules = modulesInLoadOrder(domu.modulesDir, DOMU_MODULES);
  for (const rel of domuModules) copyFileSync(join(domu.modulesDir, rel), join(dir, 'share/modules', basename(rel)));
  writeFileSync(join(dir, 'share/modules/order'), domuModules.map((rel) => `${basename(rel)}\n`).join(''));
  done();

  done = step(`debootstrap --variant=minbase ${p.suite} (dom0 root)`);
  run('debootstrap', ['--variant=minbase', `--include=${DOM0_PACKAGES.join(',')}`, p.suite, root, p.mirror], { timeoutMs: 30 * 60_000 });
  done();

  const xver = installedVersion(root, `xen-utils-${XEN}`);
  if (xver !== p.xenVersion) throw new HarnessError(`debootstrap installed xen-utils-${XEN} ${xver ?? '(none)'}, expected ${p.xenVersion}`);
  done = step(`apt-get download xen-hypervisor-${XEN}-amd64=${xver}`);
  const xdeb = download(`xen-hypervisor-${XEN}-amd64`, xver, debs);
  const xroot = join(dir, 'xen');
  run('dpkg-deb', ['-x', xdeb, xroot]);
  // QEMU's -kernel loads the ELF as a multiboot v1 image as it is.
  run('sh', ['-c', 'gzip -dc "$1" > "$2"', 'sh', join(xroot, `boot/xen-${XEN}-amd64.gz`), join(dir, 'xen.elf')]);
  done();

  done = step('dom0 root: modules, init, image');
  mkdirSync(join(root, 'lib/modules'), { recursive: true });
  run('cp', ['-a', join(kernel, 'lib/modules', release), join(root, 'lib/modules', release)]);
  // What dom0's boot script modprobes must be there (and modules.dep with it).
  modulesInLoadOrder(join(root, 'lib/modules', release), DOM0_MODULES);
  copyFileSync(join(HERE, 'image/dom0-init.sh'), join(root, 'sbin/xenblk-init'));
  run('chmod', ['0755', join(root, 'sbin/xenblk-init')]);
  for (const d of ['repo', 'cache', 'run', 'node']) mkdirSync(join(root, 'xenblk', d), { recursive: true });
  writeFileSync(join(root, 'etc/hostname'), 'xenblk-dom0\n');
  rmSync(join(root, 'var/cache/apt/archives'), { recursive: true, force: true });
  rmSync(join(root, 'var/lib/apt/lists'), { recursive: true, force: true });
  mkdirSync(join(root, 'var/cache/apt/archives/partial'), { recursive: true });
  mkdirSync(join(root, 'var/lib/apt/lists/partial'), { recursive: true });
  run('mkfs.ext4', ['-q', '-F', '-L', 'xenblk-dom0', '-d', root, join(dir, 'dom0.img'), DOM0_DISK_SIZE]);
  done();

  done = step('dom0 initramfs');
  const modules = modulesInLoadOrder(modulesDir, DOM0_INITRAMFS_MODULES).map((rel) => join(modulesDir, rel));
  buildInitramfs({ init: join(HERE, 'image/dom0-initramfs-init.sh'), modules }, join(dir, 'initramfs'), join(dir, 'dom0-initrd.gz'));
  done();

  for (const d of [debs, kernel, join(dir, 'kernel-domu'), root, xroot, join(dir, 'initramfs')]) rmSync(d, { recursive: true, force: true });
  const manifest: Manifest = {
    suite: p.suite,
    kernelPackage: p.kernelPackage,
    kernelVersion: p.kernelVersion,
    kernelRelease: release,
    domuKernelPackage: p.domuKernelPackage,
    domuKernelVersion: p.domuKernelVersion,
    xenVersion: xver,
    builtAt: new Date().toISOString(),
    buildSeconds: Math.round((Date.now() - t0) / 100) / 10,
  };
  writeFileSync(join(dir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
}

/** `pidAlive(pid)` is whether process `pid` still exists. */
function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export interface ImageOptions {
  /** Where image sets are cached, one directory per key. */
  readonly cacheRoot: string;
  /** Build afresh even when a complete image set for the key exists. */
  readonly rebuild: boolean;
  readonly log: (line: string) => void;
}

/** `ensureImages(opts)` is the image set for today's package versions, from the cache or freshly built. */
export function ensureImages(opts: ImageOptions): { images: Images; built: boolean; seconds: number } {
  const t0 = Date.now();
  const p = plan();
  const dir = join(opts.cacheRoot, p.key);
  mkdirSync(opts.cacheRoot, { recursive: true });
  if (opts.rebuild) rmSync(dir, { recursive: true, force: true });
  const cached = imagesIn(dir);
  if (cached !== undefined) return { images: cached, built: false, seconds: (Date.now() - t0) / 1000 };

  // Build beside the final place and rename when complete: an interrupted build never looks done.
  for (const e of readdirSync(opts.cacheRoot)) {
    const m = /\.partial-(\d+)$/.exec(e);
    if (m?.[1] !== undefined && !pidAlive(Number(m[1]))) rmSync(join(opts.cacheRoot, e), { recursive: true, force: true });
  }
  const partial = `${dir}.partial-${process.pid}`;
  rmSync(partial, { recursive: true, force: true });
  mkdirSync(partial, { recursive: true });
  opts.log(`building images into ${dir} (xen ${p.xenVersion}, ${p.kernelPackage} ${p.kernelVersion})`);
  try {
    build(p, partial, opts.log);
  } catch (e) {
    rmSync(partial, { recursive: true, force: true });
    throw e;
  }
  rmSync(dir, { recursive: true, force: true });
  renameSync(partial, dir);
  // Older image sets only take disk space (~1 GB each): keep the newest one.
  for (const e of readdirSync(opts.cacheRoot)) {
    const other = join(opts.cacheRoot, e);
    if (other !== dir && !e.includes('.partial-') && statSync(other).isDirectory() && existsSync(join(other, 'manifest.json'))) {
      rmSync(other, { recursive: true, force: true });
    }
  }
  const images = imagesIn(dir);
  if (images === undefined) throw new HarnessError(`image build finished but ${dir} is incomplete`);
  return { images, built: true, seconds: (Date.now() - t0) / 1000 };
}
