#!/bin/bash
# xenblk's XenStore client (xenstore/connect.ts) against Xen's C xenstored in dom0, over the
# xenstored socket and over /dev/xen/xenbus; see test/xen/dom0/xenstore-client.ts.
. "$XENBLK_REPO/test/xen/dom0/lib.sh"
t0=$SECONDS
"$XENBLK_NODE" --import tsx test/xen/dom0/xenstore-client.ts || fail "xenstore client checks failed"
note "xenstore client checks took $((SECONDS - t0)) s (tsx start-up included)"
