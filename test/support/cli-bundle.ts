// Tests that run the `xenblk` command run it as `npm start` and users do: bundled by the
// package's own build script (esbuild, koffi kept external). The bundle goes to the git-ignored
// test/.build inside the repo so `koffi` resolves from node_modules, under a name unique to the
// calling process so concurrent test files never race on dist/ or on each other.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** `bundleCli(tag)` builds the CLI to test/.build/xenblk-<tag>-<pid>.mjs and is its path; throws with the build output on failure. */
export function bundleCli(tag: string): string {
  const bundle = path.join(ROOT, 'test', '.build', `xenblk-${tag}-${process.pid}.mjs`);
  fs.mkdirSync(path.dirname(bundle), { recursive: true });
  const r = spawnSync('npm', ['run', '-s', 'build', '--', `--outfile=${bundle}`], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0 || !fs.existsSync(bundle)) {
    throw new Error(`npm run build failed (run npm ci first):\n${r.stdout}\n${r.stderr}`);
  }
  return bundle;
}

/** `removeCliBundle(bundle)` deletes a bundle made by bundleCli. */
export function removeCliBundle(bundle: string): void {
  if (bundle !== '') fs.rmSync(bundle, { force: true });
}
