// Errors of event-channel operations, with errno names as Linux's /dev/xen/evtchn and Xen's
// EVTCHNOP_* hypercalls report them (event_channel.h):
//   EINVAL  bad port, or the remote port is not unbound for us (EVTCHNOP_bind_interdomain)
//   ESRCH   no such domain
//   ENOSPC  no free port
//   EPERM   the port belongs to another process
//   ENODEV  the event-channel device is absent
//   ECONNRESET the simulator's hypervisor is gone

/** The operation an EvtchnError is about. */
export type EvtchnOp = 'open' | 'allocUnbound' | 'bindInterdomain' | 'notify' | 'unbind' | 'unmask' | 'read';

/** `EvtchnError` is a refused or failed event-channel operation, naming the domain and port. */
export class EvtchnError extends Error {
  override readonly name: string = 'EvtchnError';
  constructor(
    /** errno name: 'EINVAL', 'ESRCH', 'ENOSPC', 'ENODEV', ... */
    readonly code: string,
    readonly op: EvtchnOp,
    /** The remote domain, when the operation names one. */
    readonly domid?: number,
    /** The port at fault (remote port for bindInterdomain, local otherwise), when one is. */
    readonly port?: number,
    detail?: string,
  ) {
    super(`evtchn ${op}${domid === undefined ? '' : ` d${domid}`}${port === undefined ? '' : ` port ${port}`}: ${code}${detail ? ` (${detail})` : ''}`);
  }
}

/** `isEvtchnError(e, code?)` is whether `e` is an EvtchnError (with `code`, when given). */
export function isEvtchnError(e: unknown, code?: string): e is EvtchnError {
  return e instanceof EvtchnError && (code === undefined || e.code === code);
}
