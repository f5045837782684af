// Compile C at test time for the conformance tier (and any other test that needs a C peer).
//
// API:
//   compileC({ name, sources, flags?, output? }) => absolute path of the binary (or of the
//     assembly file with output: 'assembly'). `sources` are paths relative to the repository
//     root (or absolute). Default flags: -std=gnu11 -O2 -Wall -Wextra -Werror.
//   runC(path, args?, input?) => stdout of the program as a string; throws with its stderr when
//     it exits non-zero.
//   requireCToolchain() => throws, with the apt-get line to run, when gcc or Xen's public
//     headers (libxen-dev) are missing. compileC calls it first.
//
// Outputs go to test/.build/ (git-ignored), named `<name>-<hash>` where the hash covers the
// gcc version, the flags, the output kind and the *preprocessed* sources (so editing a source
// or upgrading the Xen headers rebuilds). Each build writes a temporary file unique to this
// process and renames it into place, so concurrent test processes never see a half-written
// binary and never clash; identical inputs reuse the existing output.

import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (test/support/../..). */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** Where compiled test programs go (git-ignored). */
export const BUILD_DIR = join(REPO_ROOT, 'test', '.build');
/** Xen's public block header, the marker that libxen-dev is installed. */
export const XEN_BLKIF_H = '/usr/include/xen/io/blkif.h';

const INSTALL_HINT = 'install gcc libxen-dev: apt-get install gcc libxen-dev';
const DEFAULT_FLAGS = ['-std=gnu11', '-O2', '-Wall', '-Wextra', '-Werror'];

/** What to build with `compileC`. */
export interface CompileOptions {
  /** A short name for the output file (letters, digits, dashes). */
  name: string;
  /** C sources, relative to the repository root or absolute. */
  sources: string[];
  /** Extra gcc flags (appended after the defaults). */
  flags?: string[];
  /** 'executable' (default) links a program; 'assembly' stops after `gcc -S` (one source). */
  output?: 'executable' | 'assembly';
}

let gccVersion: string | undefined;

/** `requireCToolchain()` is gcc's version string; it throws an install hint when gcc or libxen-dev is missing. */
export function requireCToolchain(): string {
  if (gccVersion !== undefined) return gccVersion;
  let version: string;
  try {
    version = execFileSync('gcc', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n')[0]!;
  } catch {
    throw new Error(`gcc not found: ${INSTALL_HINT}`);
  }
  if (!existsSync(XEN_BLKIF_H)) throw new Error(`${XEN_BLKIF_H} not found: ${INSTALL_HINT}`);
  gccVersion = version;
  return version;
}

function gcc(args: string[]): string {
  try {
    return execFileSync('gcc', args, { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`gcc ${args.join(' ')} failed:\n${err.stderr ?? err.message}`);
  }
}

/** `compileC(opts)` is the absolute path of the program (or assembly) built from `opts.sources`, reused when unchanged. */
export function compileC(opts: CompileOptions): string {
  const version = requireCToolchain();
  if (!/^[A-Za-z0-9][A-Za-z0-9-]*$/.test(opts.name)) throw new Error(`compileC: bad name ${JSON.stringify(opts.name)}`);
  if (opts.sources.length === 0) throw new Error('compileC: no sources');
  const output = opts.output ?? 'executable';
  if (output === 'assembly' && opts.sources.length !== 1) throw new Error('compileC: assembly output takes one source');
  const sources = opts.sources.map((s) => (isAbsolute(s) ? s : resolve(REPO_ROOT, s)));
  const flags = [...DEFAULT_FLAGS, ...(opts.flags ?? [])];

  // Hash what determines the output: compiler, flags, kind, and every source after the
  // preprocessor (which pulls in the exact headers installed).
  const h = createHash('sha256').update(version).update('\0').update(output).update('\0').update(flags.join('\0'));
  for (const src of sources) h.update('\0').update(src).update('\0').update(gcc([...flags, '-E', src]));
  const base = join(BUILD_DIR, `${opts.name}-${h.digest('hex').slice(0, 16)}${output === 'assembly' ? '.s' : ''}`);
  if (existsSync(base)) return base;

  mkdirSync(BUILD_DIR, { recursive: true });
  const tmp = `${base}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    if (output === 'assembly') gcc([...flags, '-S', '-o', tmp, sources[0]!]);
    else gcc([...flags, '-o', tmp, ...sources]);
    renameSync(tmp, base); // atomic: a concurrent builder of the same hash writes identical bytes
  } finally {
    rmSync(tmp, { force: true });
  }
  return base;
}

/** `runC(path, args, input)` is the stdout of running `path`; it throws with stderr when the program fails. */
export function runC(path: string, args: string[] = [], input?: string): string {
  try {
    return execFileSync(path, args, {
      encoding: 'utf8',
      maxBuffer: 256 << 20,
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(input === undefined ? {} : { input }),
    });
  } catch (e) {
    const err = e as { stderr?: string; status?: number; message: string };
    throw new Error(`${path} ${args.join(' ')} exited ${err.status ?? '?'}:\n${err.stderr ?? err.message}`);
  }
}
