// Loads xenblk's own N-API addon (native/addon/poll.c, built at npm install by
// native/addon/build.mjs when a C compiler is there). Everything it offers has a koffi
// equivalent that serves when it is missing: the addon only saves the cost of koffi calls on the
// data path. XENBLK_POLL=koffi leaves it unloaded (for comparisons).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** The addon's functions (see poll.c). */
export interface XenblkAddon {
  /** A uv_poll watch on `fd` calling `cb` (see poll.c for the input modes). */
  start(fd: number, cb: (result: number) => void, buffer?: Uint8Array, echo?: boolean): unknown;
  ref(w: unknown): void;
  unref(w: unknown): void;
  close(w: unknown): void;
  /** Writes the byte 1 to `fd` (a doorbell): 1, or a negative errno. */
  kick(fd: number): number;
}

/** Where the addon is, seen from this file (native/) or from the CLI bundle (dist/). */
const ADDON_CANDIDATES = ['./addon/build/poll.node', '../native/addon/build/poll.node'];

function loadAddon(): { addon?: XenblkAddon; why?: string } {
  if (process.env.XENBLK_POLL === 'koffi') return { why: 'XENBLK_POLL=koffi' };
  const req = createRequire(import.meta.url);
  for (const c of ADDON_CANDIDATES) {
    const p = fileURLToPath(new URL(c, import.meta.url));
    if (!existsSync(p)) continue;
    try {
      const a = req(p) as Partial<XenblkAddon>;
      // An addon built from an older poll.c lacks what this code calls: koffi serves instead.
      if (typeof a.kick !== 'function' || typeof a.start !== 'function') return { why: `${p}: built from an older poll.c (npm run build:addon)` };
      return { addon: a as XenblkAddon };
    } catch (e) {
      // Built for another Node or machine: koffi serves.
      return { why: `${p}: ${(e as Error).message}` };
    }
  }
  return { why: 'native/addon/build/poll.node not built' };
}

const loaded = loadAddon();

/** `addon` is the loaded addon, or undefined (then `addonMissing` says why). */
export const addon: XenblkAddon | undefined = loaded.addon;
export const addonMissing: string | undefined = loaded.why;
