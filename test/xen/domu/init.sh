#!/bin/busybox sh
# PID 1 of the test domUs (a busybox initramfs the host packs per run). Words
# xenblk.KEY=VALUE on the kernel command line become $XB_KEY; XB_blkfront holds
# comma-separated xen-blkfront module parameters (e.g. max_indirect_segments=256,
# max_ring_page_order=4). Runs /workload.sh, prints "XENBLK-DOMU EXIT <status>", then
# powers off when XB_after=poweroff, or waits to be destroyed (the default: dom0 tests
# teardown with xl destroy while the disk is still attached).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for w in $(cat /proc/cmdline); do
	case $w in
	xenblk.*=*)
		k=${w%%=*}
		export "XB_${k#xenblk.}=${w#*=}"
		;;
	esac
done
for m in $(cat /modules/order); do
	args=
	[ "$m" = xen-blkfront.ko ] && args=$(echo "${XB_blkfront:-}" | tr , ' ')
	# shellcheck disable=SC2086
	insmod "/modules/$m" $args || echo "XENBLK-DOMU insmod-failed $m"
done
sh /workload.sh
echo "XENBLK-DOMU EXIT $?"
if [ "${XB_after:-hold}" = poweroff ]; then
	sync
	poweroff -f
fi
while :; do sleep 3600; done
