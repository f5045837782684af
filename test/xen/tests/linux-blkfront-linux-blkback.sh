#!/bin/bash
# Baseline with no xenblk code at all: Linux xen-blkfront in a PV domU against Linux
# xen-blkback in dom0 serving a loop device. It proves the domU path, the hotplug script, the
# workload and the checks that the xenblk tests reuse with our endpoints in either place.
. "$XENBLK_REPO/test/xen/dom0/lib.sh"

DOMU=xb-base
MIB=64
img=$XENBLK_WORK/disk.img
loop=
cleanup() {
	xl domid "$DOMU" >/dev/null 2>&1 && timeout 60 xl destroy "$DOMU"
	[ -n "$loop" ] && losetup -d "$loop"
	rmmod xen-blkback 2>/dev/null
}
trap cleanup EXIT

modprobe xen-blkback || fail "modprobe xen-blkback"
dd if=/dev/urandom of="$img" bs=1M count=$MIB status=none || fail "cannot make $img"
read_md5=$(md5 "$img" 0 8)
loop=$(losetup -f --show "$img") || fail "losetup $img"

domu_start $DOMU pattern "phy:$loop,xvda,w,script=$XENBLK_HOTPLUG" \
	sectors=$((MIB * 2048)) read_md5="$read_md5" write_at=16 small_at=8192
domu_wait $DOMU 240 || fail "the domU workload failed"
write_md5=$(domu_value $DOMU write-md5)
small_md5=$(domu_value $DOMU small-md5)
features=$(domu_console $DOMU | grep -o "flush diskcache.*" | tail -n 1)
domu_destroy $DOMU

# What the domU wrote through Linux's backend is in the backing file.
[ "$(md5 "$img" 16 8)" = "$write_md5" ] || fail "backing file at 16 MiB does not hold the domU's 1 MiB writes ($write_md5)"
[ "$(dd if="$img" bs=4096 skip=8192 count=64 status=none | md5sum | cut -d' ' -f1)" = "$small_md5" ] ||
	fail "backing file at 32 MiB does not hold the domU's 4 KiB writes ($small_md5)"
note "backing file holds the domU's writes; Linux blkfront negotiated: $features"
