#!/bin/bash
# dom0 sanity: the Xen host every other real-Xen test stands on. Xen runs with dom0 listed,
# xenstored answers, the devices a userspace backend and frontend use exist, and the host's
# Node (handed in over 9p) runs here and loads the project's TypeScript through tsx.
. "$XENBLK_REPO/test/xen/dom0/lib.sh"

xl info | grep -E '^(xen_version|xen_caps|nr_cpus|total_memory|free_memory|xen_commandline)' || fail "xl info failed"
xl list | grep -q '^Domain-0 ' || fail "xl list shows no Domain-0"
[ "$(xenstore-read /local/domain/0/name)" = Domain-0 ] || fail "xenstore has no /local/domain/0/name = Domain-0"
n=$(xenstore-ls / | wc -l)
[ "$n" -gt 5 ] || fail "xenstore-ls / listed only $n lines"
note "xenstore-ls / lists $n lines"
for d in xenbus xenbus_backend gntdev gntalloc evtchn privcmd; do
	[ -c "/dev/xen/$d" ] || fail "/dev/xen/$d is missing"
done
note "/dev/xen: $(ls /dev/xen | tr '\n' ' ')"

v=$("$XENBLK_NODE" -e 'process.stdout.write(process.version)') || fail "the host's node does not run in dom0 ($XENBLK_NODE)"
note "node $v in dom0"
case $v in v2[0-9].* | v[3-9][0-9].*) ;; *) fail "node $v in dom0, need >= 20" ;; esac

t0=$SECONDS
s=$("$XENBLK_NODE" --import tsx -e "import('./protocol/xenbus-state.ts').then((m) => process.stdout.write(m.xenbusStateName(4)))") ||
	fail "node --import tsx cannot load protocol/xenbus-state.ts in dom0"
[ "$s" = Connected ] || fail "protocol/xenbus-state.ts under tsx in dom0 said '$s' for state 4"
note "tsx loads the project's TypeScript in dom0 ($((SECONDS - t0)) s for one import)"
