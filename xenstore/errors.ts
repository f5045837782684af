// Errors of the XenStore client. The code is the name xenstored sends back in an XS_ERROR
// reply (xs_wire.h xsd_errors: ENOENT, EACCES, EAGAIN, E2BIG, ...) or one of the local codes
// below for failures that never reached the daemon.

/** Local codes: the connection ended (`ECONNRESET`), a peer broke xs_wire.h (`EPROTO`). */
export const XENSTORE_LOCAL_CODES = ['ECONNRESET', 'EPROTO'] as const;

/** `XenstoreError` is a failed XenStore operation: the Xen error name, the operation and the path. */
export class XenstoreError extends Error {
  override readonly name: string = 'XenstoreError';
  constructor(
    /** The xenstored error name ('ENOENT', 'EACCES', 'EAGAIN', 'E2BIG', ...) or a local code. */
    readonly code: string,
    /** The operation, as xs_wire.h names it ('READ', 'WRITE', 'TRANSACTION_END', ...). */
    readonly op: string,
    /** The path the operation was about, when it had one. */
    readonly path?: string,
    detail?: string,
  ) {
    super(`xenstore ${op}${path === undefined ? '' : ` ${path}`}: ${code}${detail ? ` (${detail})` : ''}`);
  }
}

/**
 * `XenstoreRecordError` is a key of a typed record that is missing or does not parse: it names
 * the full path, the value seen (undefined when absent) and what the schema expected.
 */
export class XenstoreRecordError extends XenstoreError {
  override readonly name: string = 'XenstoreRecordError';
  constructor(
    path: string,
    /** The value read at `path`, or undefined when the key does not exist. */
    readonly value: string | undefined,
    /** What the schema said about it. */
    readonly issue: string,
  ) {
    super(value === undefined ? 'ENOENT' : 'EINVAL', 'READ', path,
      value === undefined ? `missing key: ${issue}` : `value ${JSON.stringify(value)}: ${issue}`);
  }
}

/** `isXenstoreError(e, code?)` is whether `e` is a XenstoreError (with `code`, when given). */
export function isXenstoreError(e: unknown, code?: string): e is XenstoreError {
  return e instanceof XenstoreError && (code === undefined || e.code === code);
}
