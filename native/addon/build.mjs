// Builds native/addon/poll.c into native/addon/build/poll.node with the system C compiler
// (package.json runs it at `npm install`). Plain JavaScript: it runs before devDependencies
// such as tsx are usable. Without a compiler it says so and succeeds: native/fd-watch.ts then
// falls back to koffi.node.poll, which works the same, only slower per event.
import { execFileSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, 'build', 'poll.node');
const tmp = `${out}.${process.pid}.tmp`;
const cc = process.env.CC ?? 'cc';
if (process.platform !== 'linux') {
  console.log('xenblk: native addon not built (Linux only); koffi.node.poll serves instead');
  process.exit(0);
}
mkdirSync(dirname(out), { recursive: true });
try {
  // -shared without -z defs: the Node-API and libuv symbols resolve against the node executable
  // when it loads the addon.
  execFileSync(cc, ['-std=gnu11', '-O2', '-Wall', '-Wextra', '-Werror', '-fPIC', '-shared', '-o', tmp, join(here, 'poll.c')], { stdio: ['ignore', 'inherit', 'inherit'] });
  renameSync(tmp, out);
  console.log(`xenblk: built ${out}`);
} catch (e) {
  rmSync(tmp, { force: true });
  console.log(`xenblk: native addon not built (${cc}: ${e.code ?? e.status ?? e.message}); koffi.node.poll serves instead (install gcc and run npm run build:addon for the faster path)`);
}
