// The markers dom0 prints on the serial console (test/xen/dom0/boot.sh) and the signs of a
// crashed Xen or dom0, read from one console line at a time. Console lines may carry other
// text before a marker (Xen's prefixes, a kernel message cut in), so markers are found anywhere
// in a line.

/** One thing the console said that the harness acts on. */
export type Marker =
  | { readonly kind: 'booted'; readonly uptime: number }
  | { readonly kind: 'start'; readonly name: string }
  | { readonly kind: 'result'; readonly name: string; readonly pass: boolean; readonly seconds: number }
  | { readonly kind: 'done'; readonly passed: number; readonly failed: number }
  | { readonly kind: 'boot-fail'; readonly reason: string }
  | { readonly kind: 'crash'; readonly line: string };

/** Console lines that mean Xen or dom0 died (Xen's own wording in its panic and domain-crash paths). */
const CRASH = /Panic on CPU|Hardware Dom0 crashed|Kernel panic - not syncing|\(XEN\) d0v\d+ Unhandled/;

/** `parseMarker(line)` is the marker in one console line, or undefined. */
export function parseMarker(line: string): Marker | undefined {
  let m = /XENBLK-TEST (\S+) (PASS|FAIL) (\d+(?:\.\d+)?)/.exec(line);
  if (m !== null) return { kind: 'result', name: m[1] ?? '', pass: m[2] === 'PASS', seconds: Number(m[3]) };
  m = /XENBLK-START (\S+)/.exec(line);
  if (m !== null) return { kind: 'start', name: m[1] ?? '' };
  m = /XENBLK-BOOTED (\d+(?:\.\d+)?)/.exec(line);
  if (m !== null) return { kind: 'booted', uptime: Number(m[1]) };
  m = /XENBLK-DONE (\d+) (\d+)/.exec(line);
  if (m !== null) return { kind: 'done', passed: Number(m[1]), failed: Number(m[2]) };
  m = /XENBLK-BOOT-FAIL ([^\r\n]*)/.exec(line);
  if (m !== null) return { kind: 'boot-fail', reason: (m[1] ?? '').trim() };
  if (CRASH.test(line)) return { kind: 'crash', line: line.trim() };
  return undefined;
}
