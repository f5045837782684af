# Helpers for the dom0 side of real-Xen tests (sourced by test/xen/tests/*.sh, run by boot.sh
# with XENBLK_REPO, XENBLK_CACHE, XENBLK_RUN, XENBLK_WORK, XENBLK_NODE and XENBLK_HOTPLUG set).
# A test prints what it checks, ends with exit 0 when every check held, and calls fail
# otherwise; domUs run test/xen/domu/workload.sh and answer with "XENBLK-DOMU <key> <value>"
# lines on their console, which xenconsoled logs in dom0.
set -u -o pipefail

CONSOLE_LOGS=/var/log/xen/console

# Names of the domUs this test started: their consoles are shown when it fails.
DOMUS=

fail() {
	local d
	for d in $DOMUS; do
		echo "--- last console lines of domU $d"
		domu_console "$d" | tail -n 60 | sed 's/^/domU| /'
	done
	echo "FAIL: $*"
	exit 1
}

note() {
	echo "# $*"
}

# md5 FILE [SKIP_MIB COUNT_MIB]: md5 of FILE, or of COUNT_MIB MiB of it from SKIP_MIB MiB on.
md5() {
	if [ $# -eq 1 ]; then
		md5sum <"$1" | cut -d' ' -f1
	else
		dd if="$1" bs=1M skip="$2" count="$3" status=none | md5sum | cut -d' ' -f1
	fi
}

# domu_start NAME MODE DISK [KEY=VALUE...]: xl create a PV domU that runs workload MODE
# (memory: $DOMU_MEMORY MiB, default 256).
# DISK is one xl disk spec (xl-disk-configuration(5)) or "" for none; each KEY=VALUE reaches the domU's
# workload as $XB_KEY (passed as xenblk.KEY=VALUE on its kernel command line).
domu_start() {
	local name=$1 mode=$2 disk=$3
	shift 3
	local extra="console=hvc0 loglevel=7 xenblk.mode=$mode" kv disks=
	for kv in "$@"; do extra="$extra xenblk.$kv"; done
	[ -n "$disk" ] && disks="'$disk'"
	cat >"$XENBLK_WORK/$name.cfg" <<-EOF
		name = "$name"
		type = "pv"
		kernel = "$XENBLK_CACHE/vmlinux"
		ramdisk = "$XENBLK_RUN/domU-initrd.gz"
		extra = "$extra"
		memory = ${DOMU_MEMORY:-256}
		vcpus = 1
		on_poweroff = "destroy"
		on_reboot = "destroy"
		on_crash = "destroy"
		disk = [ $disks ]
	EOF
	rm -f "$CONSOLE_LOGS/guest-$name.log"
	DOMUS="$DOMUS $name"
	note "xl create $name: disk '$disk', $extra"
	local t0=$SECONDS
	timeout 120 xl create -q "$XENBLK_WORK/$name.cfg" || fail "xl create $name failed"
	note "xl create $name took $((SECONDS - t0)) s"
}

# domu_console NAME: the domU's console log so far, without carriage returns.
domu_console() {
	tr -d '\r' <"$CONSOLE_LOGS/guest-$1.log" 2>/dev/null
}

# domu_wait NAME TIMEOUT_S: wait for the workload's EXIT line, show the console, return its status.
domu_wait() {
	local name=$1 limit=$2 t0=$SECONDS rc
	while ! domu_console "$name" | grep -q '^XENBLK-DOMU EXIT '; do
		if [ $((SECONDS - t0)) -ge "$limit" ]; then
			fail "domU $name printed no EXIT line within $limit s"
		fi
		if ! xl domid "$name" >/dev/null 2>&1; then
			fail "domU $name is gone before its workload finished"
		fi
		sleep 1
	done
	domu_console "$name" | sed 's/^/domU| /'
	rc=$(domu_value "$name" EXIT)
	note "domU $name workload finished in $((SECONDS - t0)) s with status $rc"
	return "$rc"
}

# domu_value NAME KEY: the value of the domU's last "XENBLK-DOMU KEY value" line.
domu_value() {
	domu_console "$1" | sed -n "s/^XENBLK-DOMU $2 //p" | tail -n 1
}

# domu_destroy NAME: xl destroy NAME, which waits for the backends to reach Closed; fail if it hangs.
domu_destroy() {
	local name=$1 domid t0=$SECONDS
	domid=$(xl domid "$name") || fail "no domain $name to destroy"
	timeout 90 xl destroy "$name" || fail "xl destroy $name failed or hung"
	xl domid "$name" >/dev/null 2>&1 && fail "domain $name still exists after xl destroy"
	note "xl destroy $name took $((SECONDS - t0)) s"
	if xenstore-exists "/local/domain/0/backend/vbd/$domid"; then
		xenstore-ls -f "/local/domain/0/backend/vbd/$domid"
		fail "backend/vbd/$domid is still in xenstore after xl destroy"
	fi
}
