#!/bin/sh
# The benchmark domU's workload (packed as /workload.sh into the bench initramfs by
# test/xen/bench.ts, run by test/xen/domu/init.sh): fio jobs against several disks that Linux
# xen-blkfront sees, each job repeated with the disks taken in turn (a, b, a, b, ...) so that
# drift of the busy, emulated machine hits every disk alike. fio is Debian's, with its libraries
# under /fio/lib. Settings come from the kernel command line (xenblk.KEY=VALUE -> $XB_KEY):
#   XB_disks  NAME:DEV,...          e.g. linux-blkback:xvda,xenblk:xvdb (the order within a repetition)
#   XB_jobs   ID:RW:BS:QD,...       fio --rw (randread, randwrite, read, write), block size in bytes, iodepth
#   XB_reps   repetitions per job and disk; XB_secs seconds measured per sample after XB_ramp
#             seconds of ramp-up; XB_warm seconds of one unmeasured run per job and disk first
#   XB_md5    md5 of each disk's first MiB (dom0 wrote it): proves all disks are the same file
#   XB_wait   seconds to wait for the disks (dom0 hot-plugs some after boot)
# Results, on the console for dom0 (test/xen/bench/bench.sh) to collect:
#   XENBLK-DOMU BENCH <job> <disk name> <rep> <IOPS> <KiB/s>   (from KiB moved and runtime: not rounded)
DEV_WAIT=${XB_wait:-120}
FIO=/fio/bin/fio
export LD_LIBRARY_PATH=/fio/lib
say() { echo "XENBLK-DOMU $*"; }
fail() {
	say "FAIL $*"
	exit 1
}

mkdir -p /dev/shm
mountpoint -q /dev/shm || mount -t tmpfs tmpfs /dev/shm
v=$($FIO --version 2>&1) || fail "fio does not run here: $v"
say engine "$v"

disks=$(echo "${XB_disks:?}" | tr , ' ')
for d in $disks; do
	dev=/dev/${d#*:}
	i=0
	while [ ! -b "$dev" ] && [ $i -lt $((DEV_WAIT * 10)) ]; do
		sleep 0.1
		i=$((i + 1))
	done
	[ -b "$dev" ] || fail "no $dev (${d%%:*}) after $DEV_WAIT s"
	m=$(dd if="$dev" bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
	[ -z "${XB_md5:-}" ] || [ "$m" = "$XB_md5" ] || fail "$dev (${d%%:*}): first MiB hashes to $m, dom0 wrote $XB_md5"
	say disk "${d%%:*} $dev $(cat "/sys/block/${d#*:}/size") sectors, max_segments $(cat "/sys/block/${d#*:}/queue/max_segments")"
done
dmesg | grep -E 'blkfront: ' | while read -r l; do say dmesg "$l"; done

# One fio process per job (fio starts slowly here: ~60 libraries, relocated at once under TCG):
# its sections run one after another (stonewall), the warm-ups first, then repetition after
# repetition the disks in XB_disks order. Terse output (version 3, fio HOWTO "Terse output")
# has one line per section: field 3 the section name, fields 6 and 9 the KiB read and the read
# runtime in ms, fields 47 and 50 the same for writes; ramp-up time is not counted in them.
for job in $(echo "${XB_jobs:?}" | tr , ' '); do
	IFS=: read -r id rw bs qd <<-EOF
		$job
	EOF
	f=/tmp/$id.fio
	printf '[global]\nrw=%s\nbs=%s\niodepth=%s\nioengine=libaio\ndirect=1\ntime_based\nnorandommap\nrandrepeat=0\n' \
		"$rw" "$bs" "$qd" >"$f"
	if [ "${XB_warm:-0}" -gt 0 ]; then
		for d in $disks; do
			printf '[warm.%s]\nfilename=/dev/%s\nruntime=%s\nstonewall\n' "${d%%:*}" "${d#*:}" "$XB_warm" >>"$f"
		done
	fi
	rep=1
	while [ $rep -le "${XB_reps:-5}" ]; do
		for d in $disks; do
			printf '[%s.%s]\nfilename=/dev/%s\nruntime=%s\nramp_time=%s\nstonewall\n' \
				"$rep" "${d%%:*}" "${d#*:}" "${XB_secs:-5}" "${XB_ramp:-1}" >>"$f"
		done
		rep=$((rep + 1))
	done
	$FIO --output-format=terse --terse-version=3 "$f" >"/tmp/$id.out" 2>"/tmp/$id.err" || {
		sed 's/^/fio: /' "/tmp/$id.err"
		fail "fio failed on $id"
	}
	case $rw in *write) kb=47 ms=50 ;; *) kb=6 ms=9 ;; esac
	awk -F';' -v id="$id" -v bs="$bs" -v kb=$kb -v ms=$ms '
		$1 == 3 && $3 !~ /^warm\./ && $ms > 0 {
			split($3, w, ".")
			printf "XENBLK-DOMU BENCH %s %s %s %.2f %.1f\n", id, w[2], w[1], $kb * 1024 / bs / ($ms / 1000), $kb / ($ms / 1000)
			n++
		}
		END { print n + 0 >"/tmp/count" }' "/tmp/$id.out"
	[ "$(cat /tmp/count)" = $((${XB_reps:-5} * $(echo $disks | wc -w))) ] || fail "$id: fio reported $(cat /tmp/count) measured sections"
done
