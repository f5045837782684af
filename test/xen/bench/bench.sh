#!/bin/bash
# dom0 side of the real-Xen benchmark (test/xen/bench.ts boots it as boot.sh's one "test"). One
# backing file serves one Linux PV domU twice at once:
#   xvda: Linux's xen-blkback on a loop device over the file (direct I/O: no dom0 page cache)
#   xvdb: xenblk's blkback, `node dist/xenblk.mjs serve FILE --xen` (O_DIRECT on this ext4),
#         hot-plugged under backend/xenblk/ so that xen-blkback, which claims every directory
#         under backend/vbd/, leaves it alone (Linux blkfront follows the frontend's backend key)
# The domU (test/xen/domu/bench.sh) runs every job on both disks in turn; its BENCH lines are
# copied to $XENBLK_RUN/bench.results as they come (the host shows progress and parses them),
# along with NOTE lines on what was negotiated. Settings: $XENBLK_RUN/bench.env (XB_* below).
. "$XENBLK_REPO/test/xen/dom0/lib.sh"
# shellcheck source=/dev/null
. "$XENBLK_RUN/bench.env"

DOMU=xb-bench
img=$XENBLK_WORK/disk.img
results=$XENBLK_RUN/bench.results
slog=$XENBLK_RUN/logs/xen-bench.serve.log
loop=
serve=
tracer=
kperf=
TRACE_FIFO=/run/xenblk-cpu-trace.fifo
# A FIFO nobody writes to: read -t on it is a sleep without a process (the loops below).
PAUSE_FIFO=/run/xenblk-bench-pause.fifo
cleanup() {
	[ -n "$tracer" ] && kill "$tracer" 2>/dev/null
	[ -n "$kperf" ] && kill -INT "$kperf" 2>/dev/null
	rm -f "$TRACE_FIFO" "$PAUSE_FIFO"
	[ -n "$serve" ] && kill -9 "$serve" 2>/dev/null
	xl domid "$DOMU" >/dev/null 2>&1 && timeout 60 xl destroy "$DOMU"
	[ -n "$loop" ] && losetup -d "$loop"
	rmmod xen-blkback 2>/dev/null
}
trap cleanup EXIT
: >"$results"
# While the backends are measured this loop shares dom0's two CPUs with them, so it forks
# nothing: under TCG a fork and exec in a PV dom0 costs tenths of a second of a CPU. A dom0
# profile (perf, cpu-clock) of the loop it replaces, which piped the whole console log through
# tr, grep and sed and renamed a results file every 2 s, put the harness's processes at ~37% of
# dom0's sampled time, taken from serve, which needs more of dom0's CPU than the kernel path.
# follow_console reads the domU's console log through one descriptor kept open, a line at a time
# (a line still being written stays in $partial), copies BENCH lines to the results file as they
# come and sets $exited on the EXIT line.
con=
partial=
exited=
follow_console() {
	local l
	if [ -z "$con" ]; then
		[ -e "$CONSOLE_LOGS/guest-$DOMU.log" ] || return 0
		exec {con}<"$CONSOLE_LOGS/guest-$DOMU.log"
	fi
	while :; do
		if IFS= read -r -u "$con" l; then
			l=$partial$l
			partial=
		else
			partial+=$l
			return 0
		fi
		l=${l//$'\r'/}
		case $l in
		'XENBLK-DOMU BENCH '*) echo "${l#XENBLK-DOMU }" >>"$results" ;;
		'XENBLK-DOMU EXIT '*) exited=1 ;;
		esac
	done
}
result_note() {
	note "$*"
	echo "NOTE $*" >>"$results"
}

modprobe xen-blkback || fail "modprobe xen-blkback"
# A file of real blocks (not sparse: holes read back without touching the disk), its first
# MiB random so that the domU can tell both disks are this file.
t0=$SECONDS
dd if=/dev/zero of="$img" bs=1M count="$XB_MIB" conv=fsync status=none || fail "cannot make $img"
dd if=/dev/urandom of="$img" bs=1M count=1 conv=notrunc,fsync status=none || fail "cannot write $img"
md5=$(md5 "$img" 0 1)
sync
echo 3 >/proc/sys/vm/drop_caches
loop=$(losetup -f --show --direct-io=on "$img") || fail "losetup $img"
dio=$(cat "/sys/block/${loop#/dev/}/loop/dio" 2>/dev/null)
result_note "backing file: $XB_MIB MiB on dom0's ext4 (virtio disk), made in $((SECONDS - t0)) s; loop direct I/O: ${dio:-?}"

DOMU_MEMORY=512 domu_start $DOMU bench "phy:$loop,xvda,w,script=$XENBLK_HOTPLUG" \
	disks=linux-blkback:xvda,xenblk:xvdb jobs="$XB_JOBS" reps="$XB_REPS" secs="$XB_SECS" \
	ramp="$XB_RAMP" warm="$XB_WARM" md5="$md5" wait=180
domid=$(xl domid $DOMU) || fail "no domid for $DOMU"
# With XB_PROFILE=v8 (bench --profile with XENBLK_BENCH_XEN_PROFILE=v8) serve records a V8 CPU
# profile of the workload only (test/xen/bench/profile-hook.mjs: started by SIGUSR2 once both
# disks are connected, written by the next SIGUSR2 when the domU is done) into $XENBLK_RUN/prof/,
# sampled every 4 ms (at 1 ms the sampling thread took as much CPU as serve); the host
# summarises it with the others.
nodeopts=
if [ "${XB_PROFILE:-0}" = v8 ]; then
	mkdir -p "$XENBLK_RUN/prof"
	nodeopts="--import $XENBLK_REPO/test/xen/bench/profile-hook.mjs"
	export XENBLK_PROFILE_OUT=$XENBLK_RUN/prof/xen-serve.cpuprofile
fi
# shellcheck disable=SC2086
"$XENBLK_NODE" $nodeopts dist/xenblk.mjs serve "$img" --domid "$domid" --vdev xvdb --xen --kind xenblk ${XB_SERVE_ARGS:-} >"$slog" 2>&1 &
serve=$!
note "xenblk serve started (pid $serve) for domain $domid"

# cpu_trace DOMID: every second, the clock ticks so far (utime + stime) of
# serve's main thread (the event loop), of all of serve's threads and of Linux blkback's thread,
# and dom0's per-CPU /proc/stat lines (user nice system idle iowait irq softirq steal): which side
# was saturated while each disk was driven (serve's ticks move only on its turns, the kernel
# thread's on the other disk's). Bash builtins only (read, EPOCHREALTIME, read -t as the sleep):
# a fork and exec in a PV dom0 under TCG costs more than a second of a CPU.
cpu_trace() {
	local kt= f c line pid rest
	local -a st
	# A FIFO nobody writes to: read -t 1 on it is a sleep without a process.
	rm -f "$TRACE_FIFO"
	mkfifo "$TRACE_FIFO" || return
	exec {sleepfd}<>"$TRACE_FIFO"
	while read -r -t 1 -u "$sleepfd" _ || true; do
		if [ -z "$kt" ]; then
			for pid in /proc/[0-9]*; do
				read -r c <"$pid/comm" 2>/dev/null || continue
				case $c in "$1.xvda"* | "blkback.$1.xvda"*) kt=${pid#/proc/} ;; esac
			done
		fi
		line="$EPOCHREALTIME"
		for f in "/proc/$serve/task/$serve/stat" "/proc/$serve/stat" "/proc/${kt:-0}/stat"; do
			st=(0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0)
			read -r -a st 2>/dev/null <"$f"
			line+=" $((st[13] + st[14]))"
		done
		while read -r c rest; do
			case $c in cpu[0-9]*) line+=" $c:${rest// /,}" ;; esac
		done </proc/stat
		echo "$line"
	done
}

# What each frontend negotiated, once both are connected.
fe=/local/domain/$domid/device/vbd
shown=
t0=$SECONDS
rm -f "$PAUSE_FIFO"
mkfifo "$PAUSE_FIFO" || fail "mkfifo $PAUSE_FIFO"
exec {pausefd}<>"$PAUSE_FIFO"
alive_at=$SECONDS
while follow_console; [ -z "$exited" ]; do
	if [ -z "$shown" ] && [ "$(xenstore-read "$fe/51712/state" 2>/dev/null)" = 4 ] && [ "$(xenstore-read "$fe/51728/state" 2>/dev/null)" = 4 ]; then
		for dev in 51712:linux-blkback 51728:xenblk; do
			p=$fe/${dev%%:*}
			be=$(xenstore-read "$p/backend")
			result_note "${dev#*:}: backend $be; ring-page-order $(xenstore-read "$p/ring-page-order" 2>/dev/null || echo 0), persistent $(xenstore-read "$p/feature-persistent" 2>/dev/null || echo -), backend offers max-ring-page-order $(xenstore-read "$be/max-ring-page-order" 2>/dev/null || echo -), indirect $(xenstore-read "$be/feature-max-indirect-segments" 2>/dev/null || echo -)"
		done
		shown=1
		result_note "both disks connected $((SECONDS - t0)) s after xenblk serve started"
		if [ "${XB_PROFILE:-0}" = v8 ]; then kill -USR2 "$serve"; fi
		mkdir -p "$XENBLK_RUN/prof"
		cpu_trace "$domid" >"$XENBLK_RUN/prof/cpu-trace.txt" 2>&1 &
		tracer=$!
		# With XB_PROFILE=perf (bench --profile), a profile of all of dom0 (kernel and user, call
		# chains) on the trace's clock: test/xen/dom0-profile.ts splits it by the trace's windows.
		if [ "${XB_PROFILE:-0}" = perf ] && ! command -v perf >/dev/null; then
			result_note "no perf in dom0: no dom0 profile"
		elif [ "${XB_PROFILE:-0}" = perf ]; then
			perf record -a -g -F 99 -k CLOCK_REALTIME -o "$XENBLK_RUN/prof/dom0.perf.data" >"$XENBLK_RUN/prof/perf-record.log" 2>&1 &
			kperf=$!
		fi
	fi
	[ $((SECONDS - t0)) -ge "$XB_LIMIT" ] && fail "the domU did not finish within $XB_LIMIT s"
	# xl is the one process left here: every 30 s, so that a domU that died is noticed.
	if [ $((SECONDS - alive_at)) -ge 30 ]; then
		xl domid $DOMU >/dev/null 2>&1 || fail "domU $DOMU is gone before its workload finished"
		alive_at=$SECONDS
	fi
	kill -0 "$serve" 2>/dev/null || { cat "$slog"; fail "xenblk serve exited during the benchmark"; }
	read -r -t 2 -u "$pausefd" _ || true
done
exec {pausefd}>&- {con}<&-
rm -f "$PAUSE_FIFO"
[ -n "$tracer" ] && kill "$tracer" 2>/dev/null
if [ -n "$kperf" ]; then
	kill -INT "$kperf"
	wait "$kperf"
	kperf=
	# Symbols resolve here (dom0's kallsyms); every sample's task, then serve's with call chains.
	perf script -i "$XENBLK_RUN/prof/dom0.perf.data" -F comm,pid,time -G >"$XENBLK_RUN/prof/dom0-comms.txt" 2>>"$XENBLK_RUN/prof/perf-record.log"
	perf script -i "$XENBLK_RUN/prof/dom0.perf.data" --pid "$serve" -F time,ip,sym >"$XENBLK_RUN/prof/dom0-serve.txt" 2>>"$XENBLK_RUN/prof/perf-record.log"
	rm -f "$XENBLK_RUN/prof/dom0.perf.data"
fi
if [ "${XB_PROFILE:-0}" = v8 ]; then
	kill -USR2 "$serve"
	for _ in $(seq 1 30); do [ -s "$XENBLK_PROFILE_OUT" ] && break; sleep 1; done
fi
domu_console $DOMU | grep -v '^XENBLK-DOMU BENCH ' | sed 's/^/domU| /'
result_note "engine: $(domu_value $DOMU engine); domU workload took $((SECONDS - t0)) s"
rc=$(domu_value $DOMU EXIT)
[ "$rc" = 0 ] || fail "the domU benchmark failed (status $rc)"
domu_console $DOMU | sed -n 's/^XENBLK-DOMU dmesg \[[^]]*\] \(blkfront: .*\)$/\1/p' | while read -r l; do result_note "$l"; done
# What xenblk served with, and its own per-disk counters (as xen-blkback's sysfs statistics).
grep -E 'serving |queue\(s\) of' "$slog" | sed 's/^xenblk serve: //' | while read -r l; do result_note "xenblk serve: $l"; done
"$XENBLK_NODE" dist/xenblk.mjs stats 2>&1 | while read -r l; do result_note "xenblk stats: $l"; done
# Where dom0's CPU went (clock ticks of user + system time, /proc/PID/stat fields 14-15): the
# xenblk serve process (all its threads) against Linux's per-ring blkback kernel thread (named
# "<domid>.<dev>-<ring>" by xen-blkback xenbus.c, "blkback.<domid>.<dev>" in older kernels); the
# loop device's own work is not in the latter. Then serve's CPU time over 5 idle seconds: near
# zero unless it polls.
hz=$(getconf CLK_TCK)
cpu_s() { awk -v hz="$hz" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"; }
kthread=$(ps -eo pid=,comm= | awk -v d="$domid" '$2 ~ ("^(blkback\\.)?" d "\\.xvda") { print $1; exit }')
sysfs=/sys/bus/xen-backend/devices/vbd-$domid-51712/statistics
kreq=$(($(cat "$sysfs/rd_req" 2>/dev/null || echo 0) + $(cat "$sysfs/wr_req" 2>/dev/null || echo 0)))
kcpu='?'
[ -n "$kthread" ] && kcpu=$(cpu_s "$kthread")
scpu=$(cpu_s "$serve")
result_note "dom0 CPU over the run: xenblk serve $scpu s; Linux blkback thread $kcpu s for $kreq requests (sysfs rd_req + wr_req)"
# Which of serve's threads spent it (main: the JavaScript event loop; libuv-worker: preadv/pwritev
# of the thread pool; V8 threads: compiler and GC helpers), with context switches: a thread that
# is woken per request shows it there.
threads=$(for t in /proc/"$serve"/task/*; do
	awk -v hz="$hz" '{ c = ($14 + $15) / hz; if (c >= 0.05) printf "%s %.1f s, ", $2, c }' "$t/stat"
done)
result_note "xenblk serve threads: ${threads%, }"
result_note "xenblk serve context switches: $(awk '/^(non)?voluntary_ctxt_switches/ { printf "%s %s ", $1, $2 }' "/proc/$serve/status")"
sleep 5
result_note "xenblk serve while idle: $(awk -v a="$scpu" -v b="$(cpu_s "$serve")" 'BEGIN { printf "%.1f", b - a }') s of CPU in 5 s"

kill -TERM "$serve"
for _ in $(seq 1 60); do kill -0 "$serve" 2>/dev/null || break; sleep 1; done
wait "$serve"
src=$?
serve=
cat "$slog"
[ "$src" = 0 ] || fail "xenblk serve exited with $src"
domu_destroy $DOMU
