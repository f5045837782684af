// Random and malformed xenstore requests (xs_wire.h framing: 16-byte header type, req_id,
// tx_id, len, then len payload bytes), from plausible to hostile: every request type with
// good, odd and broken arguments, unknown types, transaction ids never opened, huge and invalid
// paths, missing or extra NULs, and frames whose length is over XENSTORE_PAYLOAD_MAX or does
// not match what follows.
//
// What the fuzzer may write is bounded so that the store cannot legitimately grow without
// limit (dom0 has no quotas): privileged paths come from a fixed vocabulary, unprivileged ones
// are bounded by the domain quotas. Two namespaces are never named here, because the health
// check owns them: /health and /local/domain/<HEALTH_DOMID>.
import { XENSTORE_PAYLOAD_MAX, XS_HEADER_SIZE, XsOp, xsOpName } from '../../../protocol/xs-wire.ts';
import type { Rng } from '../fuzzer.ts';

/** Domids whose sockets fuzz connections use (unprivileged), and the health check's. */
export const FUZZ_DOMIDS = [1, 2, 3, 4] as const;
export const HEALTH_DOMID = 9;
/**
 * Domids privileged fuzzers introduce, release, resume and target; some fuzz connections act as
 * them too, and may be hung up on when a fuzzer releases their domain.
 */
export const LIFECYCLE_DOMIDS = [100, 101, 102, 103] as const;
const LIFECYCLE_ARGS = LIFECYCLE_DOMIDS.map(String);

/** xenstored_core.c wire_funcs (Xen 4.17): XS_FLAG_PRIV types (EACCES for a domain). */
export const PRIV_TYPES: ReadonlySet<number> = new Set([
  XsOp.CONTROL, XsOp.INTRODUCE, XsOp.RELEASE, XsOp.IS_DOMAIN_INTRODUCED, XsOp.RESUME, XsOp.SET_TARGET,
]);
/** xenstored_core.c wire_funcs: XS_FLAG_NOTID types (their tx_id is ignored). */
export const NOTID_TYPES: ReadonlySet<number> = new Set([XsOp.WATCH, XsOp.UNWATCH]);
/** xenstored_core.c process_message: types below XS_TYPE_COUNT (23 in 4.17) with a handler; any other is ENOSYS. */
export const KNOWN_TYPES: ReadonlySet<number> = new Set([
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18, 19, 21, 22,
]);

/** How a frame is built, which decides what the fuzz client may expect back. */
export type FrameKind =
  | 'request' // a whole frame with len <= XENSTORE_PAYLOAD_MAX: exactly one reply
  | 'oversize' // a header announcing more than XENSTORE_PAYLOAD_MAX: the server drops the client
  | 'desync'; // len does not match the bytes that follow: framing is lost from here on

/** `Frame` is one planned write with what it claims to be. */
export interface Frame {
  readonly kind: FrameKind;
  readonly type: number;
  readonly reqId: number;
  readonly txId: number;
  readonly bytes: Uint8Array;
  /** Short description for transcripts: op and argument shape. */
  readonly label: string;
  /** For WATCH requests: the token, which later events may carry. */
  readonly watchToken?: string;
  /** Called with the reply (type and payload as latin1) once it has passed the wire checks. */
  readonly onReply?: (type: number, payload: string) => void;
}

/** `GenContext` is what a connection knows when it plans its next frames. */
export interface GenContext {
  readonly privileged: boolean;
  readonly domid: number;
  /** Transactions this connection has open (ids from TRANSACTION_START replies). */
  readonly openTx: readonly number[];
  /** Watches this connection registered (path, token). */
  readonly watches: readonly (readonly [string, string])[];
  nextReqId: number;
}

const latin1 = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);

function concat(parts: readonly (Uint8Array | string)[]): Uint8Array {
  const bs = parts.map((p) => (typeof p === 'string' ? latin1(p) : p));
  const out = new Uint8Array(bs.reduce((n, b) => n + b.length, 0));
  let off = 0;
  for (const b of bs) {
    out.set(b, off);
    off += b.length;
  }
  return out;
}

/** `frameBytes(type, reqId, txId, payload, len)` is the header (with `len`, default the payload's length) and payload. */
export function frameBytes(type: number, reqId: number, txId: number, payload: Uint8Array, len = payload.length): Uint8Array {
  const out = new Uint8Array(XS_HEADER_SIZE + payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, type >>> 0, true);
  dv.setUint32(4, reqId >>> 0, true);
  dv.setUint32(8, txId >>> 0, true);
  dv.setUint32(12, len >>> 0, true);
  out.set(payload, XS_HEADER_SIZE);
  return out;
}

const NAMES = ['a', 'b', 'c', 'd', 'x-y', '_', 'n@', '0'];
const LONG_LENGTHS = [1000, 2000, 2033, 2048, 2049, 2100, 3000, 3071, 3072, 3073, 4000, 4094];

function pathBases(ctx: GenContext): string[] {
  if (ctx.privileged) {
    return ['/fuzz', 'fuzz', '/tool/fuzz', ...FUZZ_DOMIDS.map((d) => `/local/domain/${d}`), ...LIFECYCLE_DOMIDS.map((d) => `/local/domain/${d}`)];
  }
  const other = FUZZ_DOMIDS.filter((d) => d !== ctx.domid);
  return ['f', '', `/local/domain/${ctx.domid}`, `/local/domain/${ctx.domid}/f`, `/local/domain/${other[0]!}`, '/fuzz', '/local/domain/0', '/tool'];
}

/** A path: mostly plausible (a base plus up to 3 names), sometimes broken or huge. */
function path(rng: Rng, ctx: GenContext): string {
  const r = rng.next();
  if (r < 0.75) {
    let p = rng.pick(pathBases(ctx));
    for (let d = rng.int(4); d > 0; d--) p = p === '' ? rng.pick(NAMES) : `${p}/${rng.pick(NAMES)}`;
    return p === '' ? 'f' : p;
  }
  if (r < 0.9) {
    // Names xenstored must refuse or treat specially.
    return rng.pick([
      '', '/', '//', '/fuzz//a', 'fuzz/', '/fuzz/', '..', '/fuzz/../health', 'a b', 'a\tb', 'é', '\xff\xfe', '/fuzz/\x01',
      '@introduceDomain', '@releaseDomain', '@other', '@', '@/', '/local/domain/-1/x', '/local/domain/99999999/x',
      '/local/domain/+1/x', '/local/domain/00001/f', 'f/./g',
    ]);
  }
  // Long: a base plus one long name, or a deep nest of one-letter names (bounded set of shapes).
  const base = rng.pick(pathBases(ctx));
  const n = rng.pick(LONG_LENGTHS);
  if (rng.chance(0.5)) return `${base === '' ? 'f' : base}/${'L'.repeat(n)}`;
  return `${base === '' ? 'f' : base}${'/z'.repeat(Math.floor(n / 2))}`;
}

function value(rng: Rng): Uint8Array {
  const n = rng.pick([0, 1, 5, 100, 1000, 2000, 2048, 3000, 4000]);
  return rng.chance(0.5) ? latin1('v'.repeat(n)) : rng.bytes(n);
}

function token(rng: Rng): string {
  // Long tokens make events for deep paths pass XENSTORE_PAYLOAD_MAX (xenstored drops those).
  return rng.pick(['t', 't1', 'tok', '', 'a\x01b', 'T'.repeat(200), String(rng.int(50)), 'K'.repeat(2500), 'K'.repeat(4000)]);
}

function domidArg(rng: Rng, privileged: boolean): string {
  // Never a domid that has fuzz or health connections: releasing it would drop them.
  const junk = ['', 'x', '-1', '4294967296', '65535', '0', '0x1', ' 7', '99999', `${rng.int(100) + 200}`];
  return rng.chance(privileged ? 0.7 : 0.3) ? rng.pick(LIFECYCLE_ARGS) : rng.pick(junk);
}

const strs = (...s: string[]): Uint8Array => concat(s.flatMap((x) => [x, '\0']));

/** A payload for `type`, usually well formed for it, sometimes with its NULs broken. */
function payloadFor(rng: Rng, ctx: GenContext, type: number): { payload: Uint8Array; label: string; watchToken?: string } {
  const p = (): string => path(rng, ctx);
  let payload: Uint8Array;
  let label = '';
  let watchToken: string | undefined;
  switch (type) {
    case XsOp.READ: case XsOp.DIRECTORY: case XsOp.GET_PERMS: case XsOp.MKDIR: case XsOp.RM:
      payload = strs(p());
      break;
    case XsOp.WRITE: {
      const name = p();
      // Sometimes exactly XENSTORE_PAYLOAD_MAX bytes: the largest frame xenstored must take.
      const v = rng.chance(0.05) ? latin1('M'.repeat(Math.max(0, XENSTORE_PAYLOAD_MAX - name.length - 1))) : value(rng);
      payload = concat([name, '\0', v]);
      break;
    }
    case XsOp.DIRECTORY_PART:
      payload = strs(p(), rng.pick(['0', '1', '5', '-1', '4096', '99999999999', 'x', '']));
      break;
    case XsOp.SET_PERMS: {
      const perms = ['n0', 'r0', 'b0', `n${ctx.domid}`, `b${ctx.domid}`, `r${FUZZ_DOMIDS[rng.int(4)]!}`, 'w2', 'x1', '', 'n65535',
        'n99999', 'r-1', 'n0x10', 'n 1', 'b', 'n7'];
      const list = Array.from({ length: rng.int(8) }, () => rng.pick(perms));
      payload = strs(rng.chance(0.1) ? rng.pick(['@introduceDomain', '@releaseDomain']) : p(), ...list);
      label = list.join(',');
      break;
    }
    case XsOp.WATCH: {
      watchToken = token(rng);
      payload = strs(rng.chance(0.15) ? rng.pick(['/', '@introduceDomain', '@releaseDomain', '/fuzz', '/local']) : p(), watchToken);
      break;
    }
    case XsOp.UNWATCH: {
      const w = ctx.watches.length > 0 && rng.chance(0.7) ? rng.pick(ctx.watches) : [p(), token(rng)] as const;
      payload = strs(w[0], w[1]);
      break;
    }
    case XsOp.TRANSACTION_START:
      payload = rng.pick([strs(''), new Uint8Array(0), strs('junk')]);
      break;
    case XsOp.TRANSACTION_END:
      payload = rng.pick([strs('T'), strs('T'), strs('F'), new Uint8Array(0), strs('X'), latin1('T'), strs('TT'), strs('T', 'F')]);
      break;
    case XsOp.GET_DOMAIN_PATH: case XsOp.RELEASE: case XsOp.RESUME: case XsOp.IS_DOMAIN_INTRODUCED:
      payload = strs(domidArg(rng, ctx.privileged));
      break;
    case XsOp.INTRODUCE:
      payload = strs(domidArg(rng, ctx.privileged), rng.pick(['0', '1234', 'x']), rng.pick(['0', '1', '7', 'x']));
      break;
    case XsOp.SET_TARGET:
      payload = strs(domidArg(rng, ctx.privileged), domidArg(rng, ctx.privileged));
      break;
    case XsOp.CONTROL:
      payload = rng.pick([strs('check'), strs('print', 'hello'), strs('help'), strs('quota'), strs('junk'), new Uint8Array(0), strs('print')]);
      break;
    case XsOp.RESET_WATCHES:
      payload = rng.pick([new Uint8Array(0), strs(''), strs('junk')]);
      break;
    default:
      payload = rng.bytes(rng.pick([0, 1, 16, 100]));
  }
  // Break the NUL structure now and then: drop the last NUL, add one, or replace it all.
  const r = rng.next();
  if (r < 0.05 && payload.length > 0) {
    payload = payload.subarray(0, payload.length - 1);
    label += ' -nul';
  } else if (r < 0.08) {
    payload = concat([payload, '\0']);
    label += ' +nul';
  } else if (r < 0.1) {
    payload = rng.bytes(rng.int(64));
    label += ' random';
  }
  if (payload.length > XENSTORE_PAYLOAD_MAX) payload = payload.subarray(0, XENSTORE_PAYLOAD_MAX);
  return { payload, label, ...(watchToken !== undefined ? { watchToken } : {}) };
}

const COMMON_TYPES: readonly (readonly [number, number])[] = [
  [10, XsOp.READ], [12, XsOp.WRITE], [5, XsOp.MKDIR], [5, XsOp.RM], [6, XsOp.DIRECTORY], [2, XsOp.DIRECTORY_PART],
  [4, XsOp.GET_PERMS], [4, XsOp.SET_PERMS], [6, XsOp.WATCH], [3, XsOp.UNWATCH], [5, XsOp.TRANSACTION_START],
  [5, XsOp.TRANSACTION_END], [2, XsOp.GET_DOMAIN_PATH], [1, XsOp.RESET_WATCHES], [1, XsOp.CONTROL], [1, XsOp.INTRODUCE],
  [1, XsOp.RELEASE], [1, XsOp.RESUME], [1, XsOp.SET_TARGET], [1, XsOp.IS_DOMAIN_INTRODUCED],
];

/** `nextRequest(rng, ctx)` is one complete frame (len matches, <= XENSTORE_PAYLOAD_MAX): a request of any type. */
export function nextRequest(rng: Rng, ctx: GenContext): Frame {
  let type: number;
  const r = rng.next();
  if (r < 0.93) type = rng.weighted(COMMON_TYPES);
  else type = rng.pick([XsOp.WATCH_EVENT, XsOp.ERROR, 20, 23, 24, 25, 26, 27, 0xffff, 0x10002, 0xffffffff, rng.u32()]);
  // Transaction id: none, one of ours (if any), or one never opened.
  let txId = 0;
  const t = rng.next();
  if (t < 0.25 && ctx.openTx.length > 0) txId = rng.pick(ctx.openTx);
  else if (t < 0.31) txId = rng.pick([0x7fffffff, 0xffffffff, 1_000_000 + rng.int(1_000_000)]);
  if (type === XsOp.TRANSACTION_END && ctx.openTx.length > 0 && rng.chance(0.8)) txId = rng.pick(ctx.openTx);
  const { payload, label, watchToken } = payloadFor(rng, ctx, type);
  const reqId = rng.chance(0.05) ? rng.u32() : ctx.nextReqId++ >>> 0;
  return {
    kind: 'request', type, reqId, txId, bytes: frameBytes(type, reqId, txId, payload),
    label: `${xsOpName(type)}${label === '' ? '' : ` ${label}`} len=${payload.length}${txId ? ` tx=${txId}` : ''}`,
    ...(watchToken !== undefined ? { watchToken } : {}),
  };
}

/** `oversizeFrame(rng, ctx)` is a header announcing more than XENSTORE_PAYLOAD_MAX bytes, maybe followed by some. */
export function oversizeFrame(rng: Rng, ctx: GenContext): Frame {
  const len = rng.pick([XENSTORE_PAYLOAD_MAX + 1, 8192, 65536, 0x7fffffff, 0xffffffff]);
  const type = rng.pick([XsOp.READ, XsOp.WRITE, 0xffff]);
  const reqId = ctx.nextReqId++ >>> 0;
  return { kind: 'oversize', type, reqId, txId: 0, bytes: frameBytes(type, reqId, 0, rng.bytes(rng.int(300)), len), label: `oversize len=${len}` };
}

/** `desyncFrame(rng, ctx)` is a frame whose len is shorter or longer than what is written. */
export function desyncFrame(rng: Rng, ctx: GenContext): Frame {
  const payload = strs(path(rng, ctx), 'x'.repeat(rng.int(40)));
  const len = rng.chance(0.5) ? rng.int(payload.length) : Math.min(XENSTORE_PAYLOAD_MAX, payload.length + 1 + rng.int(100));
  const type = rng.pick([XsOp.READ, XsOp.WRITE, XsOp.DIRECTORY]);
  const reqId = ctx.nextReqId++ >>> 0;
  return { kind: 'desync', type, reqId, txId: 0, bytes: frameBytes(type, reqId, 0, payload, len), label: `desync len=${len} actual=${payload.length}` };
}

/** `splitPoints(rng, n)` is where to cut `n` bytes into separate socket writes (partial headers and payloads). */
export function splitPoints(rng: Rng, n: number): number[] {
  const mode = rng.next();
  if (mode < 0.6 || n < 2) return [];
  if (mode < 0.7) return Array.from({ length: Math.min(n - 1, 64) }, (_, i) => i + 1); // byte by byte (first 64)
  const cuts = new Set<number>();
  for (let k = 1 + rng.int(8); k > 0; k--) cuts.add(1 + rng.int(n - 1));
  return [...cuts].sort((a, b) => a - b);
}
