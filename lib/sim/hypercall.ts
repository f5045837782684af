// The simulator's "hypercall" ABI: what an attached process (a simulated domain) asks the daemon
// (the simulated hypervisor) over its control connection, ctl.sock. The connection itself is the
// domain process's life line: when it closes, for whatever reason, the daemon tears down what
// the process held, as Xen does when a domain dies.
//
// Framing, all little-endian u32 unless said otherwise:
//   request  [payload length][op]    then the payload (u32 fields)
//   reply    [payload length][status (i32)] then the payload
// status 0 is success; a negative status is -errno, and the payload is then [ref or port at
// fault, 0xffffffff if none] followed by a UTF-8 explanation. Requests are answered in order
// and only one is outstanding per connection (callers block). The payload of STATUS is JSON.
// A C program can speak it with read(2)/write(2) (test/conformance/c/sim-peer.c does).

/** Hypercall numbers. */
export const HC = {
  /** [domid, pid] -> [slot, slotGen, instance, nrFrames, nrGrants, nrPorts] */
  ATTACH: 1,
  /** [] -> []: release everything this process holds, then the reply. */
  DETACH: 2,
  /** [] -> [first ref of SIM_CHUNK fresh refs] */
  GRANT_CHUNK: 3,
  /** [count] -> [first frame of count fresh contiguous frames] */
  FRAME_RUN: 4,
  /** [grantor domid, flags (1 = writable), count, ref...] -> [handle, instance, frame...] */
  MAP: 5,
  /** [handle] -> [] */
  UNMAP: 6,
  /** [handle, action, offset, port] -> [] */
  SET_UNMAP_NOTIFY: 7,
  /** [remote domid] -> [port] */
  ALLOC_UNBOUND: 8,
  /** [remote domid, remote port] -> [port] */
  BIND_INTERDOMAIN: 9,
  /** [port] -> [] */
  CLOSE_PORT: 10,
  /** [] -> JSON status (see daemon.ts SimStatus) */
  STATUS: 11,
} as const;

/** Largest payload either side accepts (a MAP of SIM_MAX_BATCH refs is ~16 KiB). */
export const HC_MAX_PAYLOAD = 1 << 20;
/** Bytes of a request or reply header. */
export const HC_HEADER = 8;
/** "No ref/port" in an error payload. */
export const HC_NONE = 0xffffffff;

/** `hcName(op)` is the name of hypercall `op`, for messages. */
export function hcName(op: number): string {
  for (const [k, v] of Object.entries(HC)) if (v === op) return k;
  return `op ${op}`;
}

/** A decoded error reply. */
export interface HcFailure {
  readonly errno: number;
  /** The ref or port at fault, or undefined. */
  readonly at: number | undefined;
  readonly detail: string;
}

/** `encodeError(at, detail)` is the payload of an error reply (its status carries -errno). */
export function encodeError(at: number | undefined, detail: string): Buffer {
  const text = Buffer.from(detail, 'utf8');
  const b = Buffer.alloc(4 + text.length);
  b.writeUInt32LE(at ?? HC_NONE, 0);
  text.copy(b, 4);
  return b;
}

/** `decodeError(status, payload)` is the failure an error reply carries. */
export function decodeError(status: number, payload: Uint8Array): HcFailure {
  const b = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const at = b.length >= 4 ? b.readUInt32LE(0) : HC_NONE;
  return { errno: -status, at: at === HC_NONE ? undefined : at, detail: b.length > 4 ? b.toString('utf8', 4) : '' };
}
