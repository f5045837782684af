// Detaching an ArrayBuffer: afterwards it and every typed array, DataView and Buffer over it
// have length 0, Buffer read/write methods throw ERR_BUFFER_OUT_OF_BOUNDS, Atomics and DataView
// throw TypeError, and no JS code can reach the memory any more. memory.ts detaches every view
// of a mapping before unmapping it, so a stale view can never touch unmapped (or re-used)
// address space.
//
// Node 20 has no ArrayBuffer.prototype.transfer, and structuredClone/postMessage silently COPY
// the external buffers koffi.view creates (Node marks externally backed buffers untransferable)
// instead of detaching them. The WHATWG streams algorithm, however, transfers the buffer of a
// chunk enqueued on a byte stream (ReadableByteStreamControllerEnqueue: "TransferArrayBuffer"),
// which detaches it. We enqueue a 1-byte view on a private stream nobody reads and recycle the
// stream every few hundred chunks. Measured: ~3 us per detach (a BYOB read costs ~11 us).
import { NativeError } from './libc.ts';

type Transferable = ArrayBuffer & { transfer?: (newLength?: number) => ArrayBuffer };

const RECYCLE_AFTER = 256;
let controller: ReadableByteStreamController | undefined;
let stream: ReadableStream | undefined;
let queued = 0;

function freshStream(): ReadableByteStreamController {
  // cancel() drops the queued (already detached-from) chunks so they can be collected.
  if (stream !== undefined) stream.cancel().catch(() => {});
  let c: ReadableByteStreamController | undefined;
  stream = new ReadableStream({ type: 'bytes', start(ctl) { c = ctl; } }, { highWaterMark: 0 });
  queued = 0;
  if (c === undefined) throw new NativeError('detach', 0, 'ENOTSUP', 'ReadableByteStreamController');
  return c;
}

/** `detach(ab)` detaches `ab` (no-op when already detached); throws NativeError when the runtime cannot. */
export function detach(ab: ArrayBuffer): void {
  if (ab.byteLength === 0) return;
  const t = ab as Transferable;
  if (typeof t.transfer === 'function') {
    t.transfer(0);
  } else {
    if (controller === undefined || queued >= RECYCLE_AFTER) controller = freshStream();
    controller.enqueue(new Uint8Array(ab, 0, 1));
    queued++;
  }
  if (ab.byteLength !== 0) {
    throw new NativeError('detach', 0, 'ENOTSUP', 'this runtime cannot detach external ArrayBuffers');
  }
}
