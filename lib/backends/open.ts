// Opening a backing store from what a toolstack wrote in `params`: a path (file or block
// device), optionally behind a libxl-style `format:` prefix (`aio:`, `raw:`, `file:`, `phy:`
// all mean a raw image), or `ram:<bytes>` for a RAM disk. Formats we do not read yet (qcow2,
// vhd, ...) are refused by name rather than served as raw bytes.
import type { BlockBackend } from './block-backend.ts';
import { BackendError } from './block-backend.ts';
import { openRawFile } from './raw-file.ts';
import type { RawFileOptions } from './raw-file.ts';
import { createRamDisk } from './ram.ts';

const RAW_PREFIXES = ['aio', 'raw', 'file', 'phy'];

export interface OpenBackendOptions {
  readonly readonly: boolean;
  /** O_DIRECT policy for files (see RawFileOptions.direct). */
  readonly direct?: RawFileOptions['direct'];
  /** Engine for O_DIRECT I/O (see RawFileOptions.engine). */
  readonly engine?: RawFileOptions['engine'];
  readonly sectorSize?: 512 | 4096;
}

/** `openBackend(params, opts)` is the backing store `params` names; BackendError `open` otherwise. */
export async function openBackend(params: string, opts: OpenBackendOptions): Promise<BlockBackend> {
  const m = /^([a-z0-9]+):(.*)$/.exec(params);
  if (m !== null) {
    const [, format, rest] = m as unknown as [string, string, string];
    if (format === 'ram') {
      const size = Number(rest);
      if (!/^[0-9]+$/.test(rest) || !Number.isSafeInteger(size)) throw new BackendError(`ram: size ${JSON.stringify(rest)} is not a byte count`, 'open', 'EINVAL');
      return createRamDisk({ size, readonly: opts.readonly, sectorSize: opts.sectorSize });
    }
    if (!RAW_PREFIXES.includes(format)) throw new BackendError(`disk format ${JSON.stringify(format)} is not supported (raw images only)`, 'open', 'ENOTSUP');
    return openRawFile(rest, { readonly: opts.readonly, direct: opts.direct, engine: opts.engine, sectorSize: opts.sectorSize });
  }
  return openRawFile(params, { readonly: opts.readonly, direct: opts.direct, engine: opts.engine, sectorSize: opts.sectorSize });
}
