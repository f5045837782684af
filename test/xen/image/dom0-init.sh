#!/bin/sh
# PID 1 of dom0 (baked into dom0.img as /sbin/xenblk-init by images.ts). It only mounts the
# per-run 9p share and runs the boot script the host put there (test/xen/dom0/boot.sh), so
# everything that changes between runs lives outside the cached image. When that script ends,
# dom0 reboots: Xen then resets the machine and QEMU (-no-reboot) exits.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -o remount,rw /
echo "xenblk-boot: dom0 init: mounting the run share"
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 xenblk-run /xenblk/run && [ -f /xenblk/run/boot.sh ]; then
	/bin/bash /xenblk/run/boot.sh
	echo "XENBLK-BOOT-END $?"
else
	echo "XENBLK-BOOT-FAIL dom0: cannot mount the 9p share xenblk-run or it has no boot.sh"
fi
sync
echo b > /proc/sysrq-trigger
while :; do sleep 60; done
