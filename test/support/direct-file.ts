// An O_DIRECT file in this machine's temporary directory and page-aligned memory for it: what
// the tests of the kernel I/O engines (native/aio.ts, native/io-uring.ts) read and write.
import { closeSync, constants as fsc, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import koffi from 'koffi';

/** A page-aligned Buffer, as grant mappings are, so O_DIRECT takes it as is. */
export function alignedBuffer(bytes: number): Buffer {
  const p = koffi.alloc('uint8_t', bytes + 4096);
  const misalign = Number(koffi.address(p) % 4096n);
  return Buffer.from(koffi.view(p, bytes + 4096), (4096 - misalign) % 4096, bytes);
}

/** `directFile(t, bytes)` is a file of `bytes` opened O_RDWR | O_DIRECT (removed after the test), or undefined when the temporary directory refuses O_DIRECT. */
export function directFile(t: { after: (f: () => void) => void }, bytes: Buffer): { path: string; fd: number } | undefined {
  const dir = mkdtempSync(join(tmpdir(), 'xenblk-direct-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'disk.img');
  writeFileSync(path, bytes);
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDWR | fsc.O_DIRECT);
  } catch {
    return undefined;
  }
  t.after(() => closeSync(fd));
  return { path, fd };
}

/** `directFileOrSkip(t, bytes, engine)` is directFile, or undefined after saying loudly that `engine` cannot be exercised here (and skipping). */
export function directFileOrSkip(
  t: { after: (f: () => void) => void; diagnostic: (m: string) => void; skip: (m: string) => void },
  bytes: Buffer,
  engine: string,
): { path: string; fd: number } | undefined {
  const f = directFile(t, bytes);
  if (f === undefined) {
    t.diagnostic(`SKIPPED LOUDLY: ${tmpdir()} refuses O_DIRECT, so ${engine} cannot be exercised here`);
    t.skip('no O_DIRECT in the temporary directory');
  }
  return f;
}
