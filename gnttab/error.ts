// Errors of grant-table operations. The code is an errno name, chosen as Linux's gntdev/gntalloc
// and Xen's grant-table hypercalls report the same conditions (grant_table.h GNTST_*):
//   EINVAL  bad argument, ref out of range (GNTST_bad_gntref)
//   EPERM   entry not GTF_permit_access, granted to another domain, or read-only for a
//           writable map (GNTST_general_error / GNTST_permission_denied)
//   ESRCH   no such domain (GNTST_bad_domain)
//   EBUSY   end of access refused while the grantee still has the page mapped
//   ENOSPC  out of grant references or memory frames (GNTST_no_space)
//   ENODEV  the grant device is absent (no Xen, or the driver is not loaded)
//   ECONNRESET the simulator's hypervisor is gone

/** The operation a GnttabError is about. */
export type GnttabOp = 'open' | 'share' | 'endAccess' | 'map' | 'unmap' | 'setUnmapNotify' | 'copy';

/** `GnttabError` is a refused or failed grant operation, naming the domain and, when known, the ref. */
export class GnttabError extends Error {
  override readonly name: string = 'GnttabError';
  constructor(
    /** errno name: 'EINVAL', 'EPERM', 'ESRCH', 'EBUSY', 'ENOSPC', 'ENODEV', ... */
    readonly code: string,
    readonly op: GnttabOp,
    /** The other domain (grantee when sharing, grantor when mapping). */
    readonly domid: number,
    /** The grant reference at fault, when one is. */
    readonly ref?: number,
    detail?: string,
  ) {
    super(`gnttab ${op} d${domid}${ref === undefined ? '' : ` ref ${ref}`}: ${code}${detail ? ` (${detail})` : ''}`);
  }
}

/** `isGnttabError(e, code?)` is whether `e` is a GnttabError (with `code`, when given). */
export function isGnttabError(e: unknown, code?: string): e is GnttabError {
  return e instanceof GnttabError && (code === undefined || e.code === code);
}
