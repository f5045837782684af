// Conformance: the Xen ABI facts under gnttab/, evtchn/ and the simulator, against Xen's and
// Linux's own headers (Debian libxen-dev) compiled with gcc: ioctl request numbers and argument
// layouts of /dev/xen/gntdev, gntalloc and evtchn, encoded arguments byte for byte, the
// grant_entry_v1 layout and GTF_* bits the simulated grant tables use, EVTCHNSTAT_* and DOMID_*.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as G from '../../gnttab/linux-ioctl.ts';
import * as E from '../../evtchn/linux-ioctl.ts';
import { DOMID_FIRST_RESERVED, DOMID_SELF, GRANT_ENTRY_V1, GRANT_ENTRY_V1_SIZE, GTF } from '../../gnttab/grant-entry.ts';
import { UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT } from '../../gnttab/sim.ts';
import { EVTCHNSTAT } from '../../evtchn/sim-shared-info.ts';
import { compileC, runC } from '../support/cc.ts';

function facts(): Map<string, string> {
  const bin = compileC({ name: 'sim-xen-abi', sources: ['test/conformance/c/sim-xen-abi.c'] });
  const m = new Map<string, string>();
  for (const line of runC(bin).trim().split('\n')) {
    const [k, v] = line.split(' ');
    m.set(k!, v!);
  }
  return m;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** `gntst(name)` is the status our GNTST_NAMES table gives `name` (checked against grant_table.h). */
function gntst(name: string): number {
  const e = Object.entries(G.GNTST_NAMES).find(([, n]) => n === name);
  assert.ok(e !== undefined, `GNTST_NAMES has no ${name}`);
  return Number(e[0]);
}

test('ioctl request numbers, struct sizes and offsets match xen/sys/{gntdev,gntalloc,evtchn}.h', (t) => {
  const f = facts();
  const num = (k: string): number => {
    const v = f.get(k);
    assert.ok(v !== undefined, `the C program printed no ${k}`);
    return Number(v);
  };
  const checks: [string, number][] = [
    ['IOCTL_GNTDEV_MAP_GRANT_REF', G.IOCTL_GNTDEV_MAP_GRANT_REF],
    ['IOCTL_GNTDEV_UNMAP_GRANT_REF', G.IOCTL_GNTDEV_UNMAP_GRANT_REF],
    ['IOCTL_GNTDEV_SET_UNMAP_NOTIFY', G.IOCTL_GNTDEV_SET_UNMAP_NOTIFY],
    ['IOCTL_GNTDEV_GRANT_COPY', G.IOCTL_GNTDEV_GRANT_COPY],
    ['IOCTL_GNTALLOC_ALLOC_GREF', G.IOCTL_GNTALLOC_ALLOC_GREF],
    ['IOCTL_GNTALLOC_DEALLOC_GREF', G.IOCTL_GNTALLOC_DEALLOC_GREF],
    ['IOCTL_GNTALLOC_SET_UNMAP_NOTIFY', G.IOCTL_GNTALLOC_SET_UNMAP_NOTIFY],
    ['IOCTL_EVTCHN_BIND_VIRQ', E.IOCTL_EVTCHN_BIND_VIRQ],
    ['IOCTL_EVTCHN_BIND_INTERDOMAIN', E.IOCTL_EVTCHN_BIND_INTERDOMAIN],
    ['IOCTL_EVTCHN_BIND_UNBOUND_PORT', E.IOCTL_EVTCHN_BIND_UNBOUND_PORT],
    ['IOCTL_EVTCHN_UNBIND', E.IOCTL_EVTCHN_UNBIND],
    ['IOCTL_EVTCHN_NOTIFY', E.IOCTL_EVTCHN_NOTIFY],
    ['IOCTL_EVTCHN_RESET', E.IOCTL_EVTCHN_RESET],
    ['IOCTL_EVTCHN_RESTRICT_DOMID', E.IOCTL_EVTCHN_RESTRICT_DOMID],
    ['sizeof.ioctl_gntdev_grant_ref', G.GNTDEV_SIZES.grant_ref],
    ['sizeof.ioctl_gntdev_map_grant_ref', G.GNTDEV_SIZES.map_grant_ref],
    ['offsetof.ioctl_gntdev_map_grant_ref.count', 0],
    ['offsetof.ioctl_gntdev_map_grant_ref.index', 8],
    ['offsetof.ioctl_gntdev_map_grant_ref.refs', 16],
    ['sizeof.ioctl_gntdev_unmap_grant_ref', G.GNTDEV_SIZES.unmap_grant_ref],
    ['offsetof.ioctl_gntdev_unmap_grant_ref.count', 8],
    ['sizeof.ioctl_gntdev_unmap_notify', G.GNTDEV_SIZES.unmap_notify],
    ['offsetof.ioctl_gntdev_unmap_notify.action', 8],
    ['offsetof.ioctl_gntdev_unmap_notify.event_channel_port', 12],
    ['sizeof.ioctl_gntdev_grant_copy', G.GNTDEV_SIZES.grant_copy],
    ['offsetof.ioctl_gntdev_grant_copy.segments', 8],
    ['sizeof.ioctl_gntdev_grant_copy_segment', G.GNTDEV_SIZES.grant_copy_segment],
    ['offsetof.ioctl_gntdev_grant_copy_segment.dest', 8],
    ['offsetof.ioctl_gntdev_grant_copy_segment.len', 16],
    ['offsetof.ioctl_gntdev_grant_copy_segment.flags', 18],
    ['offsetof.ioctl_gntdev_grant_copy_segment.status', 20],
    ['GNTCOPY_source_gref', G.GNTCOPY_SOURCE_GREF],
    ['GNTCOPY_dest_gref', G.GNTCOPY_DEST_GREF],
    ['-GNTST_bad_gntref', -gntst('GNTST_bad_gntref')],
    ['-GNTST_permission_denied', -gntst('GNTST_permission_denied')],
    ['-GNTST_bad_copy_arg', -gntst('GNTST_bad_copy_arg')],
    ['sizeof.ioctl_gntalloc_alloc_gref', G.GNTALLOC_SIZES.alloc_gref],
    ['offsetof.ioctl_gntalloc_alloc_gref.flags', 2],
    ['offsetof.ioctl_gntalloc_alloc_gref.count', 4],
    ['offsetof.ioctl_gntalloc_alloc_gref.index', 8],
    ['offsetof.ioctl_gntalloc_alloc_gref.gref_ids', 16],
    ['sizeof.ioctl_gntalloc_dealloc_gref', G.GNTALLOC_SIZES.dealloc_gref],
    ['sizeof.ioctl_evtchn_bind_interdomain', E.EVTCHN_SIZES.bind_interdomain],
    ['offsetof.ioctl_evtchn_bind_interdomain.remote_port', 4],
    ['sizeof.ioctl_evtchn_bind_unbound_port', E.EVTCHN_SIZES.bind_unbound_port],
    ['sizeof.ioctl_evtchn_notify', E.EVTCHN_SIZES.notify],
    ['sizeof.ioctl_evtchn_restrict_domid', E.EVTCHN_SIZES.restrict_domid],
    ['GNTALLOC_FLAG_WRITABLE', G.GNTALLOC_FLAG_WRITABLE],
    ['UNMAP_NOTIFY_CLEAR_BYTE', UNMAP_NOTIFY_CLEAR_BYTE],
    ['UNMAP_NOTIFY_SEND_EVENT', UNMAP_NOTIFY_SEND_EVENT],
    ['sizeof.grant_entry_v1', GRANT_ENTRY_V1_SIZE],
    ['offsetof.grant_entry_v1.flags', GRANT_ENTRY_V1.flags],
    ['offsetof.grant_entry_v1.domid', GRANT_ENTRY_V1.domid],
    ['offsetof.grant_entry_v1.frame', GRANT_ENTRY_V1.frame],
    ['GTF_permit_access', GTF.permit_access],
    ['GTF_type_mask', GTF.type_mask],
    ['GTF_readonly', GTF.readonly],
    ['GTF_reading', GTF.reading],
    ['GTF_writing', GTF.writing],
    ['GTF_sub_page', GTF.sub_page],
    ['DOMID_SELF', DOMID_SELF],
    ['DOMID_FIRST_RESERVED', DOMID_FIRST_RESERVED],
    ['EVTCHNSTAT_closed', EVTCHNSTAT.closed],
    ['EVTCHNSTAT_unbound', EVTCHNSTAT.unbound],
    ['EVTCHNSTAT_interdomain', EVTCHNSTAT.interdomain],
  ];
  for (const [k, ours] of checks) assert.equal(ours, num(k), k);
  const msg = `${checks.length} numbers matched the headers`;
  t.diagnostic(msg);
  console.log(msg);
});

test('encoded ioctl arguments and a grant entry are byte-identical to the C structs', () => {
  const f = facts();
  const map = G.encodeMapGrantRef(7, [100, 101, 102]);
  assert.equal(hex(map), f.get('enc.map_grant_ref'));
  assert.equal(hex(G.encodeUnmapGrantRef(0x123456789000, 11)), f.get('enc.unmap_grant_ref'));
  const segs = new Uint8Array(2 * G.GNTDEV_SIZES.grant_copy_segment);
  const sv = new DataView(segs.buffer);
  G.encodeGrantCopySegment(sv, 0, 0x7f0012345600, 7, 0x1234, 512, 3584, true);
  G.encodeGrantCopySegment(sv, 1, 0x1000, 7, 9, 0, 4096, false);
  assert.equal(hex(segs), f.get('enc.grant_copy_segments'));
  const copyArg = new Uint8Array(G.GNTDEV_SIZES.grant_copy);
  G.encodeGrantCopy(new DataView(copyArg.buffer), 0x55aa00001000, 2);
  assert.equal(hex(copyArg), f.get('enc.grant_copy'));
  assert.equal(hex(G.encodeUnmapNotify(0x1005, UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT, 42)), f.get('enc.unmap_notify'));
  assert.equal(hex(G.encodeAllocGref(3, G.GNTALLOC_FLAG_WRITABLE, 4)), f.get('enc.alloc_gref'));
  assert.equal(hex(G.encodeDeallocGref(0x5000, 2)), f.get('enc.dealloc_gref'));
  assert.equal(hex(E.encodeBindInterdomain(5, 0x1234)), f.get('enc.bind_interdomain'));
  assert.equal(hex(E.encodeBindUnboundPort(0x7fef)), f.get('enc.bind_unbound_port'));
  assert.equal(hex(E.encodePort(4095)), f.get('enc.notify'));
  // What gnttab/sim.ts writes for a read-only grant of frame 0x12345 to d2.
  const entry = new Uint8Array(GRANT_ENTRY_V1_SIZE);
  const v = new DataView(entry.buffer);
  v.setUint16(GRANT_ENTRY_V1.flags, GTF.permit_access | GTF.readonly, true);
  v.setUint16(GRANT_ENTRY_V1.domid, 2, true);
  v.setUint32(GRANT_ENTRY_V1.frame, 0x12345, true);
  assert.equal(hex(entry), f.get('enc.grant_entry_v1'));
});
