#!/bin/sh
# libxl's hotplug script for the harness's vbds (disk spec `script=/etc/xen/scripts/xenblk-block`).
# Debian's /etc/xen/scripts/block forks too much for a dom0 under TCG and overruns libxl's
# hotplug timeout. A vbd only needs what Linux xen-blkback reads before it opens the device
# (physical-device, "major:minor" in hex: xenbus.c backend_changed) and what libxl waits for
# (hotplug-status=connected). libxl runs it as `script add|remove` with XENBUS_PATH set.
[ "$1" = add ] || exit 0
dev=$(xenstore-read "$XENBUS_PATH/params") || exit 1
xenstore-write "$XENBUS_PATH/physical-device" "$(stat -L -c '%t:%T' "$dev")" \
	"$XENBUS_PATH/physical-device-path" "$dev" "$XENBUS_PATH/hotplug-status" connected
