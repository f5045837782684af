#!/bin/bash
# dom0's test driver. The host copies this file into the per-run share; /sbin/xenblk-init runs
# it once the share is mounted. It brings up what a Xen toolstack host needs without systemd
# (xenfs, the /dev/xen devices, xenstored, xenconsoled, xen-init-dom0), mounts the other
# shares, runs every test listed in tests.list and prints the markers the host parses:
#   XENBLK-BOOTED <dom0 uptime s>
#   XENBLK-START <name>
#   XENBLK-TEST <name> PASS|FAIL <seconds>
#   XENBLK-DONE <passed> <failed>
# Markers also go to the file `markers` in the share, in case the console garbles a line.
set -u
RUN=/xenblk/run
XEN_BIN=/usr/lib/xen-4.17/bin
export PATH=$XEN_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() {
	echo "$*"
	echo "$*" >>"$RUN/markers"
}
setup_fail() {
	say "XENBLK-BOOT-FAIL dom0 setup: $*"
	exit 1
}
mount_share() { # tag dir
	mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,ro" "$1" "$2" || setup_fail "cannot mount 9p share $1 on $2"
}

step() { echo "xenblk-boot: $*"; }
step "boot.sh: mounts"
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
mountpoint -q /run || mount -t tmpfs -o mode=0755 tmpfs /run
mountpoint -q /tmp || mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/xen /run/xenstored /run/lock /var/lib/xen /var/log/xen/console /var/tmp/xenblk
mount_share xenblk-repo /xenblk/repo
mount_share xenblk-cache /xenblk/cache
mount_share xenblk-node /xenblk/node
mkdir -p "$RUN/logs"
# shellcheck source=/dev/null
. "$RUN/env"

step "boot.sh: modules"
# Xen's dom0 devices. xen-blkback stays unloaded: a test that wants Linux's backend loads it.
modprobe -a xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd loop || setup_fail "modprobe of the Xen dom0 drivers failed"
mountpoint -q /proc/xen || mount -t xenfs xenfs /proc/xen || setup_fail "cannot mount xenfs on /proc/xen"
step "boot.sh: xenstored"
xenstored --pid-file=/run/xenstored.pid || setup_fail "xenstored did not start"
i=0
while [ ! -S /run/xenstored/socket ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -S /run/xenstored/socket ] || setup_fail "xenstored made no socket in 30 s"
step "boot.sh: xenconsoled, xen-init-dom0"
xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/run/xenconsoled.pid || setup_fail "xenconsoled did not start"
xen-init-dom0 >/dev/null || setup_fail "xen-init-dom0 failed"
# libxl runs the script named in a disk's script= key; ours only reports the device (see the script).
install -m 0755 /xenblk/repo/test/xen/dom0/hotplug-block.sh /etc/xen/scripts/xenblk-block
export XENBLK_REPO=/xenblk/repo XENBLK_CACHE=/xenblk/cache XENBLK_RUN=$RUN XENBLK_HOTPLUG=/etc/xen/scripts/xenblk-block
say "XENBLK-BOOTED $(cut -d' ' -f1 /proc/uptime)"

# Between tests: nothing of one test may leak into the next.
leftovers() {
	xl list 2>/dev/null | awk 'NR > 1 && $1 != "Domain-0" { print $1 }' | while read -r d; do
		echo "harness: destroying leftover domain $d"
		timeout 60 xl destroy "$d"
	done
	losetup -D 2>/dev/null
}

pass=0
fail=0
while read -r name tmo cmd <&3; do
	[ -n "$name" ] || continue
	say "XENBLK-START $name"
	work=/var/tmp/xenblk/$name
	mkdir -p "$work"
	t0=$(date +%s.%N)
	# Shortly before the limit, record what is still running and where it waits: the clue to a hang.
	(
		sleep $((tmo > 20 ? tmo - 10 : tmo))
		echo "harness: $name near its $tmo s limit; processes:"
		ps -eo pid,ppid,stat,wchan:24,etime,args | grep -v '\]$'
	) >>"$RUN/logs/$name.hang" 2>&1 &
	watchdog=$!
	(cd /xenblk/repo && XENBLK_WORK=$work exec timeout -k 15 "$tmo" bash -c "$cmd" </dev/null) 2>&1 | tee "$RUN/logs/$name.log"
	rc=${PIPESTATUS[0]}
	t1=$(date +%s.%N)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	kill "$watchdog" 2>/dev/null
	wait "$watchdog" 2>/dev/null
	[ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "harness: $name timed out after $tmo s" | tee -a "$RUN/logs/$name.log"
	if [ "$rc" = 0 ]; then
		pass=$((pass + 1))
		say "XENBLK-TEST $name PASS $secs"
	else
		fail=$((fail + 1))
		say "XENBLK-TEST $name FAIL $secs"
	fi
	leftovers
	rm -rf "$work"
done 3<"$RUN/tests.list"
say "XENBLK-DONE $pass $fail"
