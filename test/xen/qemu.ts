// One boot of Xen + dom0 under QEMU, following ../shared/XEN-UNDER-QEMU.md: TCG only (the
// machines' KVM cannot run a Linux guest), `-cpu max,-smap,-svm,-xsave` (with plain max dom0
// dies on its first iretq; SVM/XSAVE emulation crashes busy guests at random), Xen's multiboot
// ELF as -kernel, dom0's kernel and initramfs as multiboot modules, dom0's disk as a snapshot
// so every boot starts from the pristine image. The console arrives on QEMU's stdout; it is
// kept in serial.log and read for markers as it comes.
import { spawn } from 'node:child_process';
import { createWriteStream, realpathSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Images } from './images.ts';
import { parseMarker } from './markers.ts';
import type { Marker } from './markers.ts';

/** Xen's command line: serial console on COM1, a fixed dom0 size, no page scrubbing at boot (slow under TCG). */
const XEN_CMDLINE = 'console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all bootscrub=false';

/** dom0 Linux's command line; loglevel=4 keeps kernel chatter from cutting into the markers. */
const DOM0_CMDLINE = 'console=hvc0 earlyprintk=xen root=/dev/vda loglevel=4';

/** Time allowed from QEMU's start to dom0's XENBLK-BOOTED (~25-30 s normally, 2-3x that on a busy machine). */
export const BOOT_ALLOWANCE_S = 300;

export interface BootOptions {
  readonly images: Images;
  /** The per-run directory: shared read-write with dom0 as xenblk-run; serial.log goes here. */
  readonly runDir: string;
  /** The repository, shared read-only as xenblk-repo (default: this one). */
  readonly repo?: string;
  /** The directory of the host's node binary, shared read-only as xenblk-node (default: the running node's). */
  readonly nodeDir?: string;
  /** Kill QEMU when dom0 has not printed XENBLK-BOOTED after this long (default BOOT_ALLOWANCE_S). */
  readonly bootTimeoutMs?: number;
  /** Kill QEMU when the run has not ended after this long. */
  readonly timeoutMs: number;
  /** Called for each marker, with seconds since QEMU started. */
  readonly onMarker: (m: Marker, seconds: number) => void;
}

export interface BootResult {
  readonly serialLog: string;
  readonly markers: readonly Marker[];
  /** Seconds from QEMU's start to dom0's XENBLK-BOOTED, when it came. */
  readonly bootSeconds?: number;
  readonly seconds: number;
  readonly timedOut: boolean;
  /** The last console lines (the place a hang or crash happened). */
  readonly lastLines: readonly string[];
  /** QEMU's exit status, or the signal that ended it. */
  readonly exit: string;
}

/** `qemuArgs(opts)` is the QEMU command line for one boot. */
export function qemuArgs(opts: BootOptions): string[] {
  const { images } = opts;
  const share = (path: string, tag: string, readonly: boolean): string[] => [
    '-virtfs',
    `local,path=${path},mount_tag=${tag},security_model=none,multidevs=remap${readonly ? ',readonly=on' : ''}`,
  ];
  for (const p of [images.dom0Kernel, images.dom0Initrd]) {
    if (p.includes(',')) throw new Error(`multiboot module paths cannot contain ',': ${p}`);
  }
  return [
    '-accel', 'tcg,thread=multi',
    '-cpu', 'max,-smap,-svm,-xsave',
    '-m', '3G',
    '-smp', '2',
    '-display', 'none',
    '-serial', 'stdio',
    '-monitor', 'none',
    '-no-reboot',
    '-nic', 'none',
    '-kernel', images.xen,
    '-append', XEN_CMDLINE,
    // Multiboot modules are comma-separated; the text after a module's path is its command line.
    '-initrd', `${images.dom0Kernel} ${DOM0_CMDLINE},${images.dom0Initrd}`,
    '-drive', `file=${images.dom0Disk},if=virtio,format=raw,snapshot=on`,
    ...share(opts.runDir, 'xenblk-run', false),
    ...share(opts.repo ?? resolve(dirname(fileURLToPath(import.meta.url)), '../..'), 'xenblk-repo', true),
    ...share(images.share, 'xenblk-cache', true),
    ...share(opts.nodeDir ?? dirname(realpathSync(process.execPath)), 'xenblk-node', true),
  ];
}

/** `boot(opts)` runs one boot to its end (dom0 reboots after the last test) and is what it said. */
export function boot(opts: BootOptions): Promise<BootResult> {
  const serialLog = join(opts.runDir, 'serial.log');
  const bootTimeoutMs = opts.bootTimeoutMs ?? BOOT_ALLOWANCE_S * 1000;
  const log = createWriteStream(serialLog);
  const markers: Marker[] = [];
  const t0 = Date.now();
  const since = (): number => (Date.now() - t0) / 1000;
  // nice: the machines' two cores are shared; QEMU must not starve everything else.
  const child = spawn('nice', ['-n', '5', 'qemu-system-x86_64', ...qemuArgs(opts)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let bootSeconds: number | undefined;
  let timedOut = false;
  let ending: NodeJS.Timeout | undefined;

  const stop = (why: string): void => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    log.write(`\n[harness] stopping QEMU: ${why}\n`);
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
  };
  // After the last marker dom0 reboots and QEMU exits by itself; give it a while, then end it.
  const endSoon = (ms: number, why: string): void => {
    if (ending === undefined) ending = setTimeout(() => stop(why), ms);
  };
  const overall = setTimeout(() => {
    timedOut = true;
    stop(`no end after ${Math.round(opts.timeoutMs / 1000)} s`);
  }, opts.timeoutMs);
  const bootDeadline = setTimeout(() => {
    timedOut = true;
    stop(`dom0 not up after ${Math.round(bootTimeoutMs / 1000)} s`);
  }, bootTimeoutMs);
  const lastLines: string[] = [];
  const onSignal = (): void => stop('harness interrupted');
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  let partial = '';
  const onLine = (raw: string): void => {
    const line = raw.replace(/\r+$/, '');
    if (line.trim() !== '') {
      lastLines.push(line);
      if (lastLines.length > 20) lastLines.shift();
    }
    const m = parseMarker(line);
    if (m === undefined) return;
    markers.push(m);
    if (m.kind === 'booted') {
      bootSeconds = since();
      clearTimeout(bootDeadline);
    }
    if (m.kind === 'done') endSoon(60_000, 'dom0 did not reboot after its last test');
    if (m.kind === 'boot-fail') endSoon(30_000, 'dom0 setup failed');
    // A crashed Xen or dom0 reboots the machine itself; give it that chance first.
    if (m.kind === 'crash') endSoon(30_000, 'Xen or dom0 crashed');
    opts.onMarker(m, since());
  };
  child.stdout.on('data', (chunk: Buffer) => {
    log.write(chunk);
    partial += chunk.toString('latin1');
    const lines = partial.split(/\r*\n/);
    partial = lines.pop() ?? '';
    for (const l of lines) onLine(l);
  });
  child.stderr.on('data', (chunk: Buffer) => log.write(`[qemu stderr] ${chunk.toString('utf8')}`));

  return new Promise((resolve) => {
    child.on('error', (e) => log.write(`[harness] cannot start QEMU: ${e.message}\n`));
    child.on('close', (code, signal) => {
      clearTimeout(overall);
      clearTimeout(bootDeadline);
      if (ending !== undefined) clearTimeout(ending);
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
      if (partial !== '') onLine(partial);
      const exit = signal !== null ? `killed by ${signal}` : `exit ${code ?? '?'}`;
      log.end(`\n[harness] QEMU ended (${exit}) after ${since().toFixed(1)} s\n`, () =>
        resolve({ serialLog, markers, bootSeconds, seconds: since(), timedOut, lastLines, exit }),
      );
    });
  });
}
