#!/bin/bash
# A hostile frontend in dom0 (pages shared through /dev/xen/gntalloc, so Xen's grant table does
# every check) against xenblk's blkback (`xenblk serve --xen`): garbage, flawed and well-formed
# requests mixed, req_prod jumping past the ring; the backend answers each with the right status,
# stays up, unmaps everything when the frontend closes, then serves a well-formed frontend.
# See test/xen/dom0/bad-frontend.ts.
. "$XENBLK_REPO/test/xen/dom0/lib.sh"

lsmod | grep -q '^xen_blkback' && fail "xen-blkback is loaded; this test needs it absent (both would claim backend/vbd)"
t0=$SECONDS
"$XENBLK_NODE" --import tsx test/xen/dom0/bad-frontend.ts || {
	for f in "$XENBLK_WORK"/serve-*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
	fail "xenblk blkback did not withstand the hostile frontend"
}
note "hostile frontend sessions took $((SECONDS - t0)) s (tsx start-up included)"
