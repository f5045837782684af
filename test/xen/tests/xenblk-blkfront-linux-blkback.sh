#!/bin/bash
# xenblk's blkfront (`xenblk attach --xen`, the built dist/xenblk.mjs) in dom0, as dom0's own
# frontend, against Linux's xen-blkback serving a loop device. `xl block-attach 0` makes the
# vbd directories as a toolstack does; our frontend shares its ring and data pages through
# /dev/xen/gntalloc and signals through /dev/xen/evtchn. Checks: the size and features it
# reports, a pattern written at an offset (then flushed) landing in the backing file, a discarded
# MiB (Linux blkback discards on the loop device, which punches a hole in the file) reading as
# zeros, a whole-disk read equal to the backing file, and a clean detach.
. "$XENBLK_REPO/test/xen/dom0/lib.sh"

MIB=32
img=$XENBLK_WORK/disk.img
loop=
attached=
cleanup() {
	[ -n "$attached" ] && timeout 60 xl block-detach 0 xvdb
	[ -n "$loop" ] && losetup -d "$loop"
	rmmod xen-blkback 2>/dev/null
}
trap cleanup EXIT

modprobe xen-blkback || fail "modprobe xen-blkback"
dd if=/dev/urandom of="$img" bs=1M count=$MIB status=none || fail "cannot make $img"
loop=$(losetup -f --show "$img") || fail "losetup $img"
timeout 60 xl block-attach 0 "phy:$loop,xvdb,w,script=$XENBLK_HOTPLUG" || fail "xl block-attach 0 failed"
attached=1
be=/local/domain/0/backend/vbd/0/51728
for _ in $(seq 1 60); do [ "$(xenstore-read "$be/state" 2>/dev/null)" = 2 ] && break; sleep 1; done
[ "$(xenstore-read "$be/state" 2>/dev/null)" = 2 ] || { xenstore-ls -f "$be"; fail "Linux blkback did not reach InitWait"; }
note "Linux blkback at InitWait offers: $(for k in max-ring-page-order multi-queue-max-queues feature-max-indirect-segments; do printf '%s=%s ' $k "$(xenstore-read "$be/$k" 2>/dev/null)"; done)"

head -c $((3 * 1024 * 1024 + 4096)) /dev/urandom >"$XENBLK_WORK/pattern"
zero_md5=$(head -c 1048576 /dev/zero | md5sum | cut -d' ' -f1)
[ "$(md5 "$img" 1 1)" != "$zero_md5" ] || fail "the random backing file already holds zeros at 1 MiB"
t0=$SECONDS
"$XENBLK_NODE" dist/xenblk.mjs attach --xen --vdev xvdb --write "$XENBLK_WORK/pattern" --offset $((5 * 1024 * 1024)) \
	--discard $((1024 * 1024)):$((1024 * 1024)) --dump "$XENBLK_WORK/dump" --info >"$XENBLK_WORK/info.json" 2>"$XENBLK_WORK/attach.err" ||
	{ cat "$XENBLK_WORK/attach.err"; fail "xenblk attach failed"; }
note "xenblk attach (write 3 MiB + 4 KiB, flush, discard 1 MiB, flush, read $MIB MiB) took $((SECONDS - t0)) s"
cat "$XENBLK_WORK/attach.err" "$XENBLK_WORK/info.json"
# The dump reads into I/O buffers (gntalloc pages granted once): Linux blkback serves them in place.
grep -Eq 'dumped [0-9]+ bytes.*; [1-9][0-9]* requests granted in place' "$XENBLK_WORK/attach.err" ||
	fail "the dump's reads were not granted in place from I/O buffers"
grep -q "\"sectors\": *$((MIB * 2048))" "$XENBLK_WORK/info.json" || fail "attach --info does not report $((MIB * 2048)) sectors"
grep -q '"discard": *true' "$XENBLK_WORK/info.json" || fail "attach --info does not report discard negotiated"
note "xenblk blkfront negotiated with Linux blkback: $("$XENBLK_NODE" -e 'console.log(JSON.stringify(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).features))' "$XENBLK_WORK/info.json")"

# Every byte the frontend read is the backing file, which holds the pattern at 5 MiB.
sync
[ "$(md5 "$XENBLK_WORK/dump")" = "$(md5 "$img")" ] || fail "the whole-disk read differs from the backing file"
[ "$(dd if="$img" bs=4096 skip=1280 count=769 status=none | md5sum | cut -d' ' -f1)" = "$(md5 "$XENBLK_WORK/pattern")" ] ||
	fail "the backing file at 5 MiB does not hold the written pattern"
[ "$(md5 "$img" 1 1)" = "$zero_md5" ] || fail "the discarded MiB at 1 MiB does not read as zeros in the backing file"
note "pattern written at 5 MiB is in the backing file; the discarded MiB at 1 MiB reads as zeros; whole-disk read equals the backing file"
[ "$(xenstore-read "$be/state")" = 6 ] || [ "$(xenstore-read "$be/state")" = 2 ] ||
	fail "after attach disconnected, Linux blkback is in state $(xenstore-read "$be/state") (expected Closed or InitWait)"
timeout 60 xl block-detach 0 xvdb || fail "xl block-detach 0 xvdb failed"
attached=
xenstore-exists "$be" && fail "backend directory left behind after xl block-detach"
note "xl block-detach completed"
