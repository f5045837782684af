#!/bin/busybox sh
# PID 1 of dom0's initramfs (baked into dom0-initrd.gz by images.ts): load the modules that
# reach the root disk (virtio-blk, ext4) and the 9p shares, mount /dev/vda and hand over to
# /sbin/xenblk-init on it. Any failure reboots, which ends QEMU (-no-reboot) at once.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

die() {
	echo "XENBLK-BOOT-FAIL initramfs: $*"
	echo b > /proc/sysrq-trigger
	sleep 60
}

echo "xenblk-boot: initramfs: loading $(wc -l </modules/order) modules"
for m in $(cat /modules/order); do
	insmod "/modules/$m" || echo "xenblk-boot: initramfs: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || die "no /dev/vda (virtio-blk) after 20 s"
mount -t ext4 /dev/vda /newroot || die "cannot mount /dev/vda as ext4"
[ -x /newroot/sbin/xenblk-init ] || die "/sbin/xenblk-init missing on /dev/vda"
echo "xenblk-boot: initramfs: root mounted, switching to it"
for fs in dev proc sys; do mount --move "/$fs" "/newroot/$fs"; done
exec switch_root /newroot /sbin/xenblk-init
