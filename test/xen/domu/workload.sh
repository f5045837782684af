#!/bin/sh
# Disk workloads a test domU runs against /dev/xvda (Linux xen-blkfront), chosen by XB_mode.
# Results go to the console as "XENBLK-DOMU <key> <value>" lines; the dom0 side of the test
# (test/xen/tests/*.sh) reads them from xenconsoled's log and checks the backing store.
#
# pattern: the disk (hot-plugged within XB_wait s, default 30) has XB_sectors sectors; its first XB_mib MiB (default 8) hash to
#   XB_read_md5 (written by dom0 before boot); fresh random data written at XB_write_at MiB
#   (default 16) in 1 MiB direct writes reads back intact, and its md5 is reported as
#   write-md5 for dom0 to find in the backing file; then scattered 4 KiB direct writes,
#   reported as small-md5 (the md5 of the 4 KiB blocks XB_small_at.. in order).
DEV=/dev/xvda
say() { echo "XENBLK-DOMU $*"; }
fail() {
	say "FAIL $*"
	exit 1
}
md5() { md5sum | cut -d' ' -f1; }
# Reads after drop_caches come from the backend, not from this domU's page cache.
drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}

# XB_wait: seconds to wait for the disk (a backend in dom0 may hot-plug it after boot).
wait=${XB_wait:-30}
i=0
while [ ! -b $DEV ] && [ $i -lt $((wait * 10)) ]; do
	sleep 0.1
	i=$((i + 1))
done
[ -b $DEV ] || fail "no $DEV after $wait s"
say disk-appeared

report_queue() {
	# What blkfront negotiated: its dmesg line, and the request limits it gave the block layer
	# (max_segments > 11 only with indirect descriptors; blkfront.c blkif_set_queue_limits).
	dmesg | grep -E 'blkfront: |xen[-_]blk' | grep -v 'ommand line' | while read -r l; do say dmesg "$l"; done
	for q in max_segments max_hw_sectors_kb discard_max_bytes write_cache; do
		[ -r /sys/block/xvda/queue/$q ] && say "queue-$q" "$(cat /sys/block/xvda/queue/$q)"
	done
}

pattern() {
	mib=${XB_mib:-8}
	at=${XB_write_at:-16}
	sectors=$(cat /sys/block/xvda/size)
	say sectors "$sectors"
	[ -z "${XB_sectors:-}" ] || [ "$sectors" = "$XB_sectors" ] || fail "xvda has $sectors sectors, dom0 made $XB_sectors"

	drop_caches
	got=$(dd if=$DEV bs=1M count="$mib" iflag=direct 2>/dev/null | md5)
	say read-md5 "$got"
	[ -z "${XB_read_md5:-}" ] || [ "$got" = "$XB_read_md5" ] || fail "first $mib MiB read as $got, dom0 wrote $XB_read_md5"

	dd if=/dev/urandom of=/tmp/pattern bs=1M count="$mib" 2>/dev/null
	want=$(md5 </tmp/pattern)
	# /sys/block/xvda/stat fields 5 and 7: write requests completed and sectors written. Requests
	# averaging more than 88 sectors cannot all be direct (blkif.h: 11 segments of at most 4 KiB).
	set -- $(cat /sys/block/xvda/stat)
	w0=$5 s0=$7
	dd if=/tmp/pattern of=$DEV bs=1M seek="$at" oflag=direct conv=fsync 2>/dev/null || fail "1 MiB direct writes at $at MiB failed"
	set -- $(cat /sys/block/xvda/stat)
	say big-writes "$(($5 - w0)) requests $(($7 - s0)) sectors"
	drop_caches
	back=$(dd if=$DEV bs=1M skip="$at" count="$mib" iflag=direct 2>/dev/null | md5)
	[ "$back" = "$want" ] || fail "read back $back from $at MiB after writing $want"
	say write-md5 "$want"

	# 4 KiB direct writes in scrambled order, each its own request.
	small_at=${XB_small_at:-0}
	dd if=/dev/urandom of=/tmp/small bs=4096 count=64 2>/dev/null
	for k in 5 60 17 33 0 48 9 63 21 40 2 55 12 29 44 7 36 51 19 62 3 26 58 14 38 46 10 31 53 24 1 42 \
		16 61 28 6 49 35 11 57 22 45 4 32 59 18 39 8 52 27 13 47 34 20 56 41 15 30 50 37 23 43 54 25; do
		dd if=/tmp/small of=$DEV bs=4096 skip=$k seek=$((small_at + k)) count=1 oflag=direct 2>/dev/null ||
			fail "4 KiB direct write of block $((small_at + k)) failed"
	done
	sync
	drop_caches
	back=$(dd if=$DEV bs=4096 skip="$small_at" count=64 iflag=direct 2>/dev/null | md5)
	want=$(md5 </tmp/small)
	[ "$back" = "$want" ] || fail "64 scattered 4 KiB blocks read back as $back, wrote $want"
	say small-md5 "$want"
	report_queue
}

case ${XB_mode:-} in
pattern) pattern ;;
*) fail "unknown workload mode '${XB_mode:-}'" ;;
esac
