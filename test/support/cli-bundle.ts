// Tests that run the `xenblk` command run it as `npm start` and users do: bundled by the
// package's own build script (esbuild, koffi kept external). The bundle goes to the git-ignored
// test/.build inside the repo so `koffi` resolves from node_modules, under a name unique to the
// calling process so concurrent test files never race on dist/ or on each other.
import { spawn, spawnSync } from 'node:child_process';
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

/** What a run of the bundled CLI printed and how it ended. */
export interface CliRun { code: number | null; signal: string | null; stdout: string; stderr: string; hung: boolean }

/**
 * `runCli(bundle, args, ms)` runs a bundle made by bundleCli; one still running after `ms` is
 * stopped (SIGTERM, then SIGKILL) and reported as hung (a hang detector, not a measurement).
 */
export function runCli(bundle: string, args: readonly string[], ms = 30_000): Promise<CliRun> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [bundle, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let hung = false;
    p.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
    p.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
    const timer = setTimeout(() => {
      hung = true;
      p.kill('SIGTERM');
      setTimeout(() => p.kill('SIGKILL'), 5000).unref();
    }, ms);
    p.on('exit', (code, signal) => {
      clearTimeout(timer);
      // Let the pipes drain.
      setImmediate(() => resolve({ code, signal, stdout, stderr, hung }));
    });
  });
}
