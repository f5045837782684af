#!/bin/bash
# Linux xen-blkfront in a PV domU against xenblk's blkback (`xenblk serve --xen`, the built
# dist/xenblk.mjs) in dom0, with Linux's xen-blkback not loaded. `serve` acts as the toolstack
# too and hot-plugs the disk into the running domU (as `xl block-attach` would). Linux blkfront
# is loaded allowing a 16-page ring and 64 indirect segments (defaults: 1 page, 32), so both
# must be negotiated and used. Checks: the disk's size, the domU's data in the backing file (and dom0's data in the
# domU), the features Linux reports, the ring order it chose, requests too large to be direct,
# a clean hot-unplug on SIGTERM (both ends Closed, directories gone), then xl destroy.
# With XB_GRANT_COPY=1 (linux-blkfront-xenblk-blkback-grant-copy.sh) serve runs with
# --grant-copy: every byte goes through GNTTABOP_copy, no persistent grants are offered, and
# Linux blkfront must then run without them (granting its request pages directly).
. "$XENBLK_REPO/test/xen/dom0/lib.sh"

copy=${XB_GRANT_COPY:-0}
DOMU=xb-xenback
MIB=64
img=$XENBLK_WORK/disk.img
slog=$XENBLK_RUN/logs/linux-blkfront-xenblk-blkback.serve.log
serveopts=
if [ "$copy" = 1 ]; then
	DOMU=xb-xenback-copy
	slog=$XENBLK_RUN/logs/linux-blkfront-xenblk-blkback-grant-copy.serve.log
	serveopts=--grant-copy
fi
serve=
cleanup() {
	[ -n "$serve" ] && kill -9 "$serve" 2>/dev/null
	xl domid "$DOMU" >/dev/null 2>&1 && timeout 60 xl destroy "$DOMU"
}
trap cleanup EXIT

lsmod | grep -q '^xen_blkback' && fail "xen-blkback is loaded; this test needs it absent"
dd if=/dev/urandom of="$img" bs=1M count=$MIB status=none || fail "cannot make $img"
read_md5=$(md5 "$img" 0 8)

# Linux blkfront preallocates every grant page of the ring when it bounces (its "bounce buffer"
# mode): 512 requests x (64 segments + 1 indirect page) x 4 KiB = 130 MiB, hence the memory.
DOMU_MEMORY=512 domu_start $DOMU pattern "" blkfront=max_ring_page_order=4,max_indirect_segments=64 wait=240 \
	sectors=$((MIB * 2048)) read_md5="$read_md5" write_at=16 small_at=8192
domid=$(xl domid $DOMU) || fail "no domid for $DOMU"
# shellcheck disable=SC2086
"$XENBLK_NODE" dist/xenblk.mjs serve "$img" --domid "$domid" --vdev xvda --xen $serveopts >"$slog" 2>&1 &
serve=$!
note "xenblk serve started (pid $serve) for domain $domid"

# The frontend's choice of ring size is visible in xenstore only while it is connected.
fe=/local/domain/$domid/device/vbd/51712
order=
for _ in $(seq 1 240); do
	[ "$(xenstore-read "$fe/state" 2>/dev/null)" = 4 ] && order=$(xenstore-read "$fe/ring-page-order" 2>/dev/null) && break
	kill -0 "$serve" 2>/dev/null || { cat "$slog"; fail "xenblk serve exited before the frontend connected"; }
	xl domid $DOMU >/dev/null 2>&1 || { cat "$slog"; fail "domU $DOMU died before its frontend connected"; }
	sleep 1
done
[ -n "$order" ] || { cat "$slog"; xl list; xenstore-ls -f "$fe"; fail "Linux blkfront did not connect with a ring-page-order"; }
note "Linux blkfront connected with ring-page-order $order"
[ "$order" = 4 ] || fail "Linux blkfront chose ring-page-order $order, expected 4 (both ends allow 4)"

domu_wait $DOMU 300 || { cat "$slog"; fail "the domU workload failed"; }
write_md5=$(domu_value $DOMU write-md5)
small_md5=$(domu_value $DOMU small-md5)
features=$(domu_console $DOMU | grep -o "flush diskcache.*" | tail -n 1)
note "Linux blkfront against xenblk blkback: $features"
note "1 MiB direct writes went out as: $(domu_value $DOMU big-writes); queue max_segments $(domu_value $DOMU queue-max_segments)"
case $features in *"indirect descriptors: enabled"*) ;; *) fail "Linux blkfront did not enable indirect descriptors" ;; esac
if [ "$copy" = 1 ]; then
	case $features in *"persistent grants: disabled"*) ;; *) fail "Linux blkfront enabled persistent grants, which a grant-copy backend does not offer" ;; esac
	grep -q 'grant copy' "$slog" || { cat "$slog"; fail "serve did not report serving by grant copy"; }
	# Nothing of the guest stays mapped in serve: only the ring pages (one gntdev mapping).
	maps=$(grep -c '/dev/xen/gntdev' "/proc/$serve/maps")
	[ "$maps" -le 1 ] || fail "serve holds $maps gntdev mappings in grant copy mode (expected the ring's only)"
	note "serve holds $maps gntdev mapping(s) after the workload (the ring)"
else
	case $features in *"persistent grants: enabled"*) ;; *) fail "Linux blkfront did not enable persistent grants" ;; esac
fi
case $features in *"flush diskcache: enabled"*) ;; *) fail "Linux blkfront did not enable flush" ;; esac
set -- $(domu_value $DOMU big-writes)
[ "$1" -gt 0 ] && [ $(($3 / $1)) -gt 88 ] || fail "the 1 MiB writes averaged $(($3 / $1)) sectors a request: no request needed indirect segments"

# Hot-unplug: SIGTERM makes serve close the disk with the frontend and remove its directories.
t0=$SECONDS
kill -TERM "$serve"
for _ in $(seq 1 60); do kill -0 "$serve" 2>/dev/null || break; sleep 1; done
kill -0 "$serve" 2>/dev/null && { cat "$slog"; fail "xenblk serve still running 60 s after SIGTERM"; }
wait "$serve"
rc=$?
serve=
cat "$slog"
[ "$rc" = 0 ] || fail "xenblk serve exited with $rc"
grep -q 'did not close in time' "$slog" && fail "Linux blkfront did not reach Closed when unplugged"
xenstore-exists "/local/domain/0/backend/vbd/$domid/51712" && fail "backend directory left behind"
xenstore-exists "$fe" && fail "frontend directory left behind"
note "hot-unplug took $((SECONDS - t0)) s"
domu_destroy $DOMU

[ "$(md5 "$img" 16 8)" = "$write_md5" ] || fail "backing file at 16 MiB does not hold the domU's 1 MiB writes ($write_md5)"
[ "$(dd if="$img" bs=4096 skip=8192 count=64 status=none | md5sum | cut -d' ' -f1)" = "$small_md5" ] ||
	fail "backing file at 32 MiB does not hold the domU's 4 KiB writes ($small_md5)"
note "backing file holds what the domU wrote through xenblk blkback"
