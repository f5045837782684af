// The disk behind the fuzzed backend: a RAM disk whose calls the fuzzer can observe and slow
// down. Completions are delayed by a few event-loop turns drawn from the fuzzer's RNG, so
// requests complete out of order and stay in flight while others arrive (barriers, the
// in-flight bound and oo_req get exercised); `onIo` runs at the start of every call, the other
// window in which a hostile frontend rewrites what the backend already copied.
import type { BlockBackend, BlockBackendCapabilities, DiscardOptions } from '../../../lib/backends/block-backend.ts';
import { BackendError } from '../../../lib/backends/block-backend.ts';
import type { RamDisk } from '../../../lib/backends/ram.ts';

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A RAM disk with hooks and jittered completions. */
export class FuzzDisk implements BlockBackend {
  readonly description = 'fuzz RAM disk';
  readonly sectorSize: number;
  readonly physicalSectorSize: number;
  readonly readonly: boolean;
  readonly capabilities: BlockBackendCapabilities;
  /** Called at the start of every read/write/flush/discard. */
  onIo: (() => void) | undefined;
  /** How many event-loop turns the next call waits (0 = completes in a microtask). */
  delay: () => number = () => 0;
  /** Calls in progress now, and the most ever. */
  inFlight = 0;
  maxInFlight = 0;
  calls = 0;
  /** Calls blkback must never make: the range or the op was refused by its own validation. */
  readonly misuse: string[] = [];

  constructor(readonly ram: RamDisk, caps: { flush: boolean; discard: boolean; discardSecure: boolean }) {
    this.sectorSize = ram.sectorSize;
    this.physicalSectorSize = ram.physicalSectorSize;
    this.readonly = ram.readonly;
    this.capabilities = { ...ram.capabilities, ...caps };
  }

  size(): Promise<number> {
    return this.ram.size();
  }

  private async around<T>(what: string, offset: number, length: number, f: () => Promise<T>): Promise<T> {
    this.calls++;
    this.onIo?.();
    // BlockBackend's contract: blkback validated everything, so a bad call is blkback's bug.
    const size = this.ram.data.length;
    if (!(offset >= 0 && length >= 0 && offset + length <= size && offset % this.sectorSize === 0 && length % this.sectorSize === 0)) {
      this.misuse.push(`${what} of [${offset}, ${offset + length}) on a ${size}-byte disk with ${this.sectorSize}-byte sectors`);
    }
    if (what !== 'read' && this.readonly) this.misuse.push(`${what} on a read-only disk`);
    this.inFlight++;
    if (this.inFlight > this.maxInFlight) this.maxInFlight = this.inFlight;
    try {
      for (let n = this.delay(); n > 0; n--) await turn();
      return await f();
    } finally {
      this.inFlight--;
    }
  }

  read(offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    return this.around('read', offset, total(buffers), () => this.ram.read(offset, buffers));
  }

  write(offset: number, buffers: readonly Uint8Array[]): Promise<void> {
    return this.around('write', offset, total(buffers), () => this.ram.write(offset, buffers));
  }

  flush(): Promise<void> {
    if (!this.capabilities.flush) this.misuse.push('flush on a disk that advertised no cache');
    return this.around('flush', 0, 0, () => this.ram.flush());
  }

  discard(offset: number, length: number, opts: DiscardOptions): Promise<void> {
    if (!this.capabilities.discard) return Promise.reject(new BackendError('no discard', 'discard', 'EOPNOTSUPP'));
    return this.around('discard', offset, length, () => this.ram.discard(offset, length, opts));
  }

  close(): Promise<void> {
    return this.ram.close();
  }
}

function total(buffers: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of buffers) n += b.byteLength;
  return n;
}
