// A Host is everything a device end needs from the platform. lib/host/open.ts returns one for
// real Xen (/dev/xen present) or for the simulator; nothing above this file knows which.
import type { Xenstore } from '../../xenstore/xenstore.ts';
import type { GrantMapper, GrantSharer } from '../../gnttab/gnttab.ts';
import type { EventChannels } from '../../evtchn/evtchn.ts';

export interface Host {
  readonly kind: 'xen' | 'sim';
  /** This domain's id (0 for dom0). */
  readonly domid: number;
  readonly xenstore: Xenstore;
  readonly sharer: GrantSharer;
  readonly mapper: GrantMapper;
  readonly evtchn: EventChannels;
  /** `close()` releases every grant, mapping, channel and the xenstore connection. */
  close(): Promise<void>;
}
