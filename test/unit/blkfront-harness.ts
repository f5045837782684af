// Shared set-up for blkfront unit tests: a memory platform, an in-process xenstored, a vbd
// created as xl would, the scripted backend, and a frontend attached to it. Every test tears
// it down and checks that nothing stays granted, mapped or bound.
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { createMemoryPlatform } from '../support/memory-host.ts';
import type { MemoryPlatform } from '../support/memory-host.ts';
import { FakeBlkback, createVbd, memoryXenstore, newCore } from '../support/blkfront-fixture.ts';
import type { FakeBackendConfig, VbdPaths } from '../support/blkfront-fixture.ts';
import { Blkfront } from '../../lib/blkfront/device.ts';
import type { BlkfrontOptions } from '../../lib/blkfront/device.ts';
import type { Host } from '../../lib/host/host.ts';
import type { Xenstore } from '../../xenstore/xenstore.ts';
import type { XenstoredCore } from '../../xenstore/server/core.ts';

export const FRONT = 1;
export const BACK = 0;
export const XVDB = 51728;

export interface World {
  readonly platform: MemoryPlatform;
  readonly core: XenstoredCore;
  readonly xs0: Xenstore;
  readonly host: Host;
  readonly paths: VbdPaths;
  readonly backend: FakeBlkback;
  readonly disk: Buffer;
  front: Blkfront | null;
}

/** `world(t, opts)` builds everything up to a started backend; `attach` is left to the test. */
export async function world(t: TestContext, opts: { diskBytes?: number; backend?: FakeBackendConfig; ramPages?: number; startBackend?: boolean; vbdExtra?: Record<string, string> } = {}): Promise<World> {
  const platform = createMemoryPlatform({ ramPages: opts.ramPages ?? 16384 });
  const core = newCore(FRONT);
  const xs0 = memoryXenstore(core, 0);
  const xsb = memoryXenstore(core, 0);
  const host = platform.host(FRONT, memoryXenstore(core, FRONT));
  const paths = await createVbd(xs0, FRONT, BACK, XVDB, opts.vbdExtra);
  const disk = Buffer.alloc(opts.diskBytes ?? 1024 * 1024);
  const backend = new FakeBlkback(xsb, platform, BACK, FRONT, paths, disk, opts.backend);
  if (opts.startBackend ?? true) await backend.start();
  const w: World = { platform, core, xs0, host, paths, backend, disk, front: null };
  t.after(async () => {
    await w.front?.disconnect();
    await backend.stop();
    await host.close();
    await xs0.close();
    await xsb.close();
  });
  return w;
}

/** `attach(w, opts)` attaches the frontend to xvdb and records it for teardown. */
export async function attach(w: World, opts: BlkfrontOptions = {}): Promise<Blkfront> {
  const f = await Blkfront.attach(w.host, 'xvdb', { connectTimeoutMs: 5000, closeTimeoutMs: 2000, ...opts });
  w.front = f;
  return f;
}

/** `assertReleased(w)` checks the frontend holds no grant or port and the backend no mapping. */
export function assertReleased(w: World): void {
  assert.deepEqual(w.platform.usage(FRONT), { grants: 0, mappings: 0, ports: 0 }, 'frontend released every grant and port');
  assert.equal(w.platform.usage(BACK).mappings, 0, 'backend holds no mapping');
}

/** `pattern(bytes, seed)` is deterministic pseudo-random data. */
export function pattern(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < bytes; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}
