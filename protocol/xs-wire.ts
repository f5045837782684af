// xen/io/xs_wire.h: the XenStore wire format. Pure codec, no I/O: a 16-byte little-endian
// header (type, req_id, tx_id, len) followed by `len` payload bytes, usually NUL-terminated
// strings. The incremental reader copes with any chunking of the byte stream (partial reads,
// several messages per chunk) and rejects frames xenstored itself would reject.

/** One entry of a node's permission list: `n`one, `r`ead, `w`rite, `b`oth, for `domid`. */
export interface XsPermission {
  readonly domid: number;
  readonly perm: 'n' | 'r' | 'w' | 'b';
}

/** `XS_HEADER_SIZE` is sizeof(struct xsd_sockmsg): four uint32_t. */
export const XS_HEADER_SIZE = 16;
/** xs_wire.h: XENSTORE_PAYLOAD_MAX ("Violating this is very bad"). */
export const XENSTORE_PAYLOAD_MAX = 4096;
/** xs_wire.h: XENSTORE_ABS_PATH_MAX. */
export const XENSTORE_ABS_PATH_MAX = 3072;
/** xs_wire.h: XENSTORE_REL_PATH_MAX; also xenstored's default path-length quota. */
export const XENSTORE_REL_PATH_MAX = 2048;
/** xs_wire.h: XENSTORE_RING_SIZE, bytes in each direction of a domain's interface page. */
export const XENSTORE_RING_SIZE = 1024;

/** `XsRingLayout` is struct xenstore_domain_interface: byte offsets in the shared page. */
export const XsRingLayout = {
  req: 0,
  rsp: 1024,
  req_cons: 2048,
  req_prod: 2052,
  rsp_cons: 2056,
  rsp_prod: 2060,
  server_features: 2064,
  connection: 2068,
  error: 2072,
  size: 2076,
} as const;

/** `XsOp` is enum xsd_sockmsg_type (xs_wire.h); 23.. are newer than Xen 4.17's header. */
export const XsOp = {
  CONTROL: 0,
  DIRECTORY: 1,
  READ: 2,
  GET_PERMS: 3,
  WATCH: 4,
  UNWATCH: 5,
  TRANSACTION_START: 6,
  TRANSACTION_END: 7,
  INTRODUCE: 8,
  RELEASE: 9,
  GET_DOMAIN_PATH: 10,
  WRITE: 11,
  MKDIR: 12,
  RM: 13,
  SET_PERMS: 14,
  WATCH_EVENT: 15,
  ERROR: 16,
  IS_DOMAIN_INTRODUCED: 17,
  RESUME: 18,
  SET_TARGET: 19,
  // 20 was XS_RESTRICT, removed.
  RESET_WATCHES: 21,
  DIRECTORY_PART: 22,
  GET_FEATURE: 23,
  SET_FEATURE: 24,
  GET_QUOTA: 25,
  SET_QUOTA: 26,
} as const;
export type XsOp = (typeof XsOp)[keyof typeof XsOp];

/** xs_wire.h (Xen 4.17): XS_TYPE_COUNT, the first type number a 4.17 xenstored does not know. */
export const XS_TYPE_COUNT_4_17 = 23;
/** xs_wire.h: XS_INVALID, guaranteed to stay invalid. */
export const XS_INVALID = 0xffff;

const OP_NAMES = new Map<number, string>(Object.entries(XsOp).map(([k, v]) => [v, k]));

/** `xsOpName(type)` is the xs_wire.h name of message type `type`, or `UNKNOWN(<type>)`. */
export function xsOpName(type: number): string {
  return OP_NAMES.get(type) ?? `UNKNOWN(${type})`;
}

/** `XS_ERRORS` is xsd_errors[] in xs_wire.h order (new errors are only ever appended). */
export const XS_ERRORS = [
  'EINVAL', 'EACCES', 'EEXIST', 'EISDIR', 'ENOENT', 'ENOMEM', 'ENOSPC', 'EIO',
  'ENOTEMPTY', 'ENOSYS', 'EROFS', 'EBUSY', 'EAGAIN', 'EISCONN', 'E2BIG', 'EPERM',
] as const;
export type XsErrorName = (typeof XS_ERRORS)[number];

/** `isXsErrorName(s)` is whether `s` is one of the error strings xs_wire.h defines. */
export function isXsErrorName(s: string): s is XsErrorName {
  return (XS_ERRORS as readonly string[]).includes(s);
}

/** xs_wire.h: XS_WRITE_* (legacy write flags, unused by modern xenstored). */
export const XS_WRITE_NONE = 'NONE';
export const XS_WRITE_CREATE = 'CREATE';
export const XS_WRITE_CREATE_EXCL = 'CREATE|EXCL';

/** xs_wire.h: xs_watch_type, the field order of a WATCH_EVENT payload. */
export const XS_WATCH_PATH = 0;
export const XS_WATCH_TOKEN = 1;

/** `XsMessage` is one framed message: header fields plus the payload bytes. */
export interface XsMessage {
  readonly type: number;
  readonly reqId: number;
  readonly txId: number;
  readonly payload: Uint8Array;
}

/** `XsWireError` is a frame or payload that violates xs_wire.h; `field` and `value` say which. */
export class XsWireError extends Error {
  override readonly name = 'XsWireError';
  constructor(
    readonly reason: 'oversize' | 'malformed' | 'closed',
    readonly field: string,
    readonly value: unknown,
    message: string,
  ) {
    super(message);
  }
}

function checkU32(field: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new XsWireError('malformed', field, v, `xs_wire: ${field} ${String(v)} is not a uint32`);
  }
}

/** `encodeMessage(msg)` is the header and payload of `msg` as one buffer; payload over XENSTORE_PAYLOAD_MAX is refused. */
export function encodeMessage(msg: XsMessage, maxPayload: number = XENSTORE_PAYLOAD_MAX): Uint8Array {
  checkU32('type', msg.type);
  checkU32('req_id', msg.reqId);
  checkU32('tx_id', msg.txId);
  if (msg.payload.length > maxPayload) {
    throw new XsWireError('oversize', 'len', msg.payload.length,
      `xs_wire: payload of ${msg.payload.length} bytes exceeds XENSTORE_PAYLOAD_MAX (${maxPayload})`);
  }
  const out = new Uint8Array(XS_HEADER_SIZE + msg.payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, msg.type, true);
  dv.setUint32(4, msg.reqId, true);
  dv.setUint32(8, msg.txId, true);
  dv.setUint32(12, msg.payload.length, true);
  out.set(msg.payload, XS_HEADER_SIZE);
  return out;
}

/** `decodeHeader(bytes, offset)` is the four header fields at `offset` (16 bytes must be present). */
export function decodeHeader(bytes: Uint8Array, offset = 0): { type: number; reqId: number; txId: number; len: number } {
  if (bytes.length - offset < XS_HEADER_SIZE) {
    throw new XsWireError('malformed', 'header', bytes.length - offset, 'xs_wire: short header');
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset + offset, XS_HEADER_SIZE);
  return { type: dv.getUint32(0, true), reqId: dv.getUint32(4, true), txId: dv.getUint32(8, true), len: dv.getUint32(12, true) };
}

/**
 * `XsMessageReader` frames a byte stream into messages: `feed(chunk)` returns every message
 * completed by `chunk`. A header announcing more than `maxPayload` bytes breaks the stream
 * for good (xenstored drops such a client): the messages completed before it are still
 * returned, `error` is set, and every later feed throws it. Callers process what feed
 * returned, then check `error`.
 */
export class XsMessageReader {
  private buf = new Uint8Array(XS_HEADER_SIZE + 256);
  private used = 0;
  private failed: XsWireError | undefined;

  constructor(private readonly maxPayload: number = XENSTORE_PAYLOAD_MAX) {}

  /** `error` is why the stream broke, or undefined while it is sound. */
  get error(): XsWireError | undefined {
    return this.failed;
  }

  /** `buffered` is the number of bytes of an incomplete message held back. */
  get buffered(): number {
    return this.used;
  }

  /** `feed(chunk)` is the messages that `chunk` completes, in stream order (see `error`). */
  feed(chunk: Uint8Array): XsMessage[] {
    if (this.failed) throw this.failed;
    const out: XsMessage[] = [];
    let pos = 0;
    while (pos < chunk.length) {
      // Fill the header first, then exactly `len` payload bytes.
      if (this.used < XS_HEADER_SIZE) {
        const take = Math.min(XS_HEADER_SIZE - this.used, chunk.length - pos);
        this.buf.set(chunk.subarray(pos, pos + take), this.used);
        this.used += take;
        pos += take;
        if (this.used < XS_HEADER_SIZE) break;
        const len = new DataView(this.buf.buffer).getUint32(12, true);
        if (len > this.maxPayload) {
          const h = decodeHeader(this.buf);
          this.failed = new XsWireError('oversize', 'len', len,
            `xs_wire: ${xsOpName(h.type)} req_id ${h.reqId} announces ${len} payload bytes, over XENSTORE_PAYLOAD_MAX (${this.maxPayload})`);
          return out;
        }
        if (this.buf.length < XS_HEADER_SIZE + len) {
          const bigger = new Uint8Array(XS_HEADER_SIZE + len);
          bigger.set(this.buf.subarray(0, this.used));
          this.buf = bigger;
        }
      }
      const h = decodeHeader(this.buf);
      const need = XS_HEADER_SIZE + h.len - this.used;
      const take = Math.min(need, chunk.length - pos);
      this.buf.set(chunk.subarray(pos, pos + take), this.used);
      this.used += take;
      pos += take;
      if (this.used === XS_HEADER_SIZE + h.len) {
        out.push({ type: h.type, reqId: h.reqId, txId: h.txId, payload: this.buf.slice(XS_HEADER_SIZE, XS_HEADER_SIZE + h.len) });
        this.used = 0;
      }
    }
    return out;
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: false });

/** `utf8(s)` is the UTF-8 bytes of `s`. */
export function utf8(s: string): Uint8Array {
  return enc.encode(s);
}

/** `fromUtf8(b)` is `b` decoded as UTF-8 (invalid sequences become U+FFFD). */
export function fromUtf8(b: Uint8Array): string {
  return dec.decode(b);
}

/** `joinPayload(parts)` concatenates byte/string parts; strings are UTF-8 encoded. */
export function joinPayload(parts: readonly (string | Uint8Array)[]): Uint8Array {
  const bs = parts.map((p) => (typeof p === 'string' ? enc.encode(p) : p));
  const out = new Uint8Array(bs.reduce((n, b) => n + b.length, 0));
  let off = 0;
  for (const b of bs) {
    out.set(b, off);
    off += b.length;
  }
  return out;
}

/** `nulStrings(strs)` is each string followed by a NUL, the form of most request payloads. */
export function nulStrings(strs: readonly string[]): Uint8Array {
  return joinPayload(strs.flatMap((s) => [s, NUL]));
}

const NUL = new Uint8Array(1);

/**
 * `splitNul(payload)` is the NUL-terminated strings of `payload`, as xenstored's get_strings
 * sees them: bytes after the last NUL are not a string and are returned as `rest`.
 */
export function splitNul(payload: Uint8Array): { strings: Uint8Array[]; rest: Uint8Array } {
  const strings: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i < payload.length; i++) {
    if (payload[i] === 0) {
      strings.push(payload.subarray(start, i));
      start = i + 1;
    }
  }
  return { strings, rest: payload.subarray(start) };
}

/** `decodeStringList(payload)` is a DIRECTORY-style reply: NUL-separated names (empty payload = none). */
export function decodeStringList(payload: Uint8Array): string[] {
  if (payload.length === 0) return [];
  const { strings, rest } = splitNul(payload);
  const out = strings.map(fromUtf8);
  if (rest.length > 0) out.push(fromUtf8(rest));
  return out;
}

/**
 * `decodeErrorReply(payload)` is the error name of an XS_ERROR reply (`E<NAME>\0`); an
 * unknown or unterminated name is returned as sent so that the caller can still report it.
 */
export function decodeErrorReply(payload: Uint8Array): string {
  const end = payload.indexOf(0);
  const name = fromUtf8(end < 0 ? payload : payload.subarray(0, end));
  if (!/^E[A-Z0-9]+$/.test(name)) {
    throw new XsWireError('malformed', 'error', name, `xs_wire: XS_ERROR payload ${JSON.stringify(name)} is not an error name`);
  }
  return name;
}

/** `decodeWatchEvent(payload)` is the path and token of an XS_WATCH_EVENT payload (`path\0token\0`). */
export function decodeWatchEvent(payload: Uint8Array): { path: string; token: string } {
  const { strings } = splitNul(payload);
  if (strings.length < 2) {
    throw new XsWireError('malformed', 'watch_event', fromUtf8(payload), 'xs_wire: WATCH_EVENT needs path\\0token\\0');
  }
  return { path: fromUtf8(strings[XS_WATCH_PATH]!), token: fromUtf8(strings[XS_WATCH_TOKEN]!) };
}

/** xenstore_lib.h XS_PERM_* bits as stored in a node's permission list. */
export const XS_PERM_NONE = 0x00;
export const XS_PERM_READ = 0x01;
export const XS_PERM_WRITE = 0x02;
export const XS_PERM_OWNER = 0x08;
export const XS_PERM_IGNORE = 0x10;

/** `permissionBits(p)` is the XS_PERM_* mask of permission letter `p`. */
export function permissionBits(p: XsPermission['perm']): number {
  return p === 'r' ? XS_PERM_READ : p === 'w' ? XS_PERM_WRITE : p === 'b' ? XS_PERM_READ | XS_PERM_WRITE : XS_PERM_NONE;
}

/** `permissionLetter(bits)` is the letter for an XS_PERM_* read/write mask (other bits ignored). */
export function permissionLetter(bits: number): XsPermission['perm'] {
  const rw = bits & (XS_PERM_READ | XS_PERM_WRITE);
  return rw === XS_PERM_READ ? 'r' : rw === XS_PERM_WRITE ? 'w' : rw === 0 ? 'n' : 'b';
}

/** `formatPermission(p)` is the wire form of one entry, e.g. `r5` (xs_perm_to_string). */
export function formatPermission(p: XsPermission): string {
  if (!Number.isInteger(p.domid) || p.domid < 0 || p.domid > 0xffff) {
    throw new XsWireError('malformed', 'domid', p.domid, `xs_wire: permission domid ${String(p.domid)} is not a domid`);
  }
  if (!['n', 'r', 'w', 'b'].includes(p.perm)) {
    throw new XsWireError('malformed', 'perm', p.perm, `xs_wire: permission ${JSON.stringify(p.perm)} is not n/r/w/b`);
  }
  return `${p.perm}${p.domid}`;
}

/** `parsePermission(s)` is the entry `s` (`[nrwb]<domid>` in decimal), or an XsWireError. */
export function parsePermission(s: string): XsPermission {
  const m = /^([nrwb])(\d{1,5})$/.exec(s);
  const domid = m ? Number(m[2]) : NaN;
  if (!m || domid > 0xffff) {
    throw new XsWireError('malformed', 'permission', s, `xs_wire: permission ${JSON.stringify(s)} is not [nrwb]<domid>`);
  }
  return { perm: m[1] as XsPermission['perm'], domid };
}

/** `encodePermissions(perms)` is the GET_PERMS/SET_PERMS list: each entry NUL-terminated; the first is the owner. */
export function encodePermissions(perms: readonly XsPermission[]): Uint8Array {
  if (perms.length === 0) throw new XsWireError('malformed', 'permissions', perms, 'xs_wire: a permission list needs an owner entry');
  return nulStrings(perms.map(formatPermission));
}

/** `decodePermissions(payload)` is the list in a GET_PERMS reply. */
export function decodePermissions(payload: Uint8Array): XsPermission[] {
  const list = decodeStringList(payload);
  if (list.length === 0) throw new XsWireError('malformed', 'permissions', '', 'xs_wire: empty permission list');
  return list.map(parsePermission);
}
