/* Prints, one "name value" per line, the Xen ABI facts xenblk's grant-table and event-channel
 * code relies on, taken from the installed headers (Debian libxen-dev): ioctl request numbers
 * and argument layouts of /dev/xen/gntdev, gntalloc and evtchn, the grant_entry_v1 layout and
 * GTF_* bits, EVTCHNSTAT_* and DOMID_* values, and sample encoded arguments as hex bytes.
 * Compared field by field by test/conformance/sim-xen-abi.test.ts. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/sys/gntdev.h>
#include <xen/sys/gntalloc.h>
#include <xen/sys/evtchn.h>

#define P(name, v) printf("%s %lu\n", name, (unsigned long)(v))
#define SZ(s) P("sizeof." #s, sizeof(struct s))
#define OFF(s, f) P("offsetof." #s "." #f, offsetof(struct s, f))

static void hex(const char *name, const void *p, size_t n)
{
    const unsigned char *b = p;
    printf("%s ", name);
    for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
    printf("\n");
}

int main(void)
{
    P("IOCTL_GNTDEV_MAP_GRANT_REF", IOCTL_GNTDEV_MAP_GRANT_REF);
    P("IOCTL_GNTDEV_UNMAP_GRANT_REF", IOCTL_GNTDEV_UNMAP_GRANT_REF);
    P("IOCTL_GNTDEV_SET_UNMAP_NOTIFY", IOCTL_GNTDEV_SET_UNMAP_NOTIFY);
    P("IOCTL_GNTDEV_GRANT_COPY", IOCTL_GNTDEV_GRANT_COPY);
    P("IOCTL_GNTALLOC_ALLOC_GREF", IOCTL_GNTALLOC_ALLOC_GREF);
    P("IOCTL_GNTALLOC_DEALLOC_GREF", IOCTL_GNTALLOC_DEALLOC_GREF);
    P("IOCTL_GNTALLOC_SET_UNMAP_NOTIFY", IOCTL_GNTALLOC_SET_UNMAP_NOTIFY);
    P("IOCTL_EVTCHN_BIND_VIRQ", IOCTL_EVTCHN_BIND_VIRQ);
    P("IOCTL_EVTCHN_BIND_INTERDOMAIN", IOCTL_EVTCHN_BIND_INTERDOMAIN);
    P("IOCTL_EVTCHN_BIND_UNBOUND_PORT", IOCTL_EVTCHN_BIND_UNBOUND_PORT);
    P("IOCTL_EVTCHN_UNBIND", IOCTL_EVTCHN_UNBIND);
    P("IOCTL_EVTCHN_NOTIFY", IOCTL_EVTCHN_NOTIFY);
    P("IOCTL_EVTCHN_RESET", IOCTL_EVTCHN_RESET);
    P("IOCTL_EVTCHN_RESTRICT_DOMID", IOCTL_EVTCHN_RESTRICT_DOMID);

    SZ(ioctl_gntdev_grant_ref);
    SZ(ioctl_gntdev_map_grant_ref);
    OFF(ioctl_gntdev_map_grant_ref, count);
    OFF(ioctl_gntdev_map_grant_ref, index);
    OFF(ioctl_gntdev_map_grant_ref, refs);
    SZ(ioctl_gntdev_unmap_grant_ref);
    OFF(ioctl_gntdev_unmap_grant_ref, count);
    SZ(ioctl_gntdev_unmap_notify);
    OFF(ioctl_gntdev_unmap_notify, action);
    OFF(ioctl_gntdev_unmap_notify, event_channel_port);
    SZ(ioctl_gntdev_grant_copy);
    OFF(ioctl_gntdev_grant_copy, segments);
    SZ(ioctl_gntdev_grant_copy_segment);
    OFF(ioctl_gntdev_grant_copy_segment, dest);
    OFF(ioctl_gntdev_grant_copy_segment, len);
    OFF(ioctl_gntdev_grant_copy_segment, flags);
    OFF(ioctl_gntdev_grant_copy_segment, status);
    P("GNTCOPY_source_gref", GNTCOPY_source_gref);
    P("GNTCOPY_dest_gref", GNTCOPY_dest_gref);
    P("-GNTST_bad_gntref", -(GNTST_bad_gntref));
    P("-GNTST_permission_denied", -(GNTST_permission_denied));
    P("-GNTST_bad_copy_arg", -(GNTST_bad_copy_arg));
    SZ(ioctl_gntalloc_alloc_gref);
    OFF(ioctl_gntalloc_alloc_gref, flags);
    OFF(ioctl_gntalloc_alloc_gref, count);
    OFF(ioctl_gntalloc_alloc_gref, index);
    OFF(ioctl_gntalloc_alloc_gref, gref_ids);
    SZ(ioctl_gntalloc_dealloc_gref);
    SZ(ioctl_evtchn_bind_interdomain);
    OFF(ioctl_evtchn_bind_interdomain, remote_port);
    SZ(ioctl_evtchn_bind_unbound_port);
    SZ(ioctl_evtchn_notify);
    SZ(ioctl_evtchn_restrict_domid);
    P("GNTALLOC_FLAG_WRITABLE", GNTALLOC_FLAG_WRITABLE);
    P("UNMAP_NOTIFY_CLEAR_BYTE", UNMAP_NOTIFY_CLEAR_BYTE);
    P("UNMAP_NOTIFY_SEND_EVENT", UNMAP_NOTIFY_SEND_EVENT);

    P("sizeof.grant_entry_v1", sizeof(grant_entry_v1_t));
    P("offsetof.grant_entry_v1.flags", offsetof(grant_entry_v1_t, flags));
    P("offsetof.grant_entry_v1.domid", offsetof(grant_entry_v1_t, domid));
    P("offsetof.grant_entry_v1.frame", offsetof(grant_entry_v1_t, frame));
    P("GTF_permit_access", GTF_permit_access);
    P("GTF_type_mask", GTF_type_mask);
    P("GTF_readonly", GTF_readonly);
    P("GTF_reading", GTF_reading);
    P("GTF_writing", GTF_writing);
    P("GTF_sub_page", GTF_sub_page);
    P("DOMID_SELF", DOMID_SELF);
    P("DOMID_FIRST_RESERVED", DOMID_FIRST_RESERVED);
    P("EVTCHNSTAT_closed", EVTCHNSTAT_closed);
    P("EVTCHNSTAT_unbound", EVTCHNSTAT_unbound);
    P("EVTCHNSTAT_interdomain", EVTCHNSTAT_interdomain);

    /* Encoded samples: the same values the test encodes with our functions. */
    {
        unsigned char buf[sizeof(struct ioctl_gntdev_map_grant_ref) + 2 * sizeof(struct ioctl_gntdev_grant_ref)];
        struct ioctl_gntdev_map_grant_ref *m = (void *)buf;
        memset(buf, 0, sizeof(buf));
        m->count = 3;
        for (int i = 0; i < 3; i++) {
            m->refs[i].domid = 7;
            m->refs[i].ref = 100 + i;
        }
        hex("enc.map_grant_ref", buf, offsetof(struct ioctl_gntdev_map_grant_ref, refs) + 3 * sizeof(struct ioctl_gntdev_grant_ref));
    }
    {
        /* A copy into ref 0x1234 at 512 of d7 from local 0x7f0012345600, then out of ref 9 at 0 into 0x1000. */
        struct ioctl_gntdev_grant_copy_segment seg[2];
        memset(seg, 0, sizeof(seg));
        seg[0].source.virt = (void *)0x7f0012345600ULL;
        seg[0].dest.foreign.ref = 0x1234;
        seg[0].dest.foreign.offset = 512;
        seg[0].dest.foreign.domid = 7;
        seg[0].len = 3584;
        seg[0].flags = GNTCOPY_dest_gref;
        seg[1].source.foreign.ref = 9;
        seg[1].source.foreign.offset = 0;
        seg[1].source.foreign.domid = 7;
        seg[1].dest.virt = (void *)0x1000ULL;
        seg[1].len = 4096;
        seg[1].flags = GNTCOPY_source_gref;
        hex("enc.grant_copy_segments", seg, sizeof(seg));
        struct ioctl_gntdev_grant_copy c;
        memset(&c, 0, sizeof(c));
        c.count = 2;
        c.segments = (void *)0x55aa00001000ULL;
        hex("enc.grant_copy", &c, sizeof(c));
    }
    {
        struct ioctl_gntdev_unmap_grant_ref u;
        memset(&u, 0, sizeof(u));
        u.index = 0x123456789000ULL;
        u.count = 11;
        hex("enc.unmap_grant_ref", &u, sizeof(u));
    }
    {
        struct ioctl_gntdev_unmap_notify n;
        memset(&n, 0, sizeof(n));
        n.index = 0x1005;
        n.action = UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT;
        n.event_channel_port = 42;
        hex("enc.unmap_notify", &n, sizeof(n));
    }
    {
        unsigned char buf[sizeof(struct ioctl_gntalloc_alloc_gref) + 4 * sizeof(uint32_t)];
        struct ioctl_gntalloc_alloc_gref *a = (void *)buf;
        memset(buf, 0, sizeof(buf));
        a->domid = 3;
        a->flags = GNTALLOC_FLAG_WRITABLE;
        a->count = 4;
        hex("enc.alloc_gref", buf, offsetof(struct ioctl_gntalloc_alloc_gref, gref_ids) + 4 * sizeof(uint32_t));
    }
    {
        struct ioctl_gntalloc_dealloc_gref d;
        memset(&d, 0, sizeof(d));
        d.index = 0x5000;
        d.count = 2;
        hex("enc.dealloc_gref", &d, sizeof(d));
    }
    {
        struct ioctl_evtchn_bind_interdomain b = { .remote_domain = 5, .remote_port = 0x1234 };
        hex("enc.bind_interdomain", &b, sizeof(b));
        struct ioctl_evtchn_bind_unbound_port u = { .remote_domain = 0x7fef };
        hex("enc.bind_unbound_port", &u, sizeof(u));
        struct ioctl_evtchn_notify n = { .port = 4095 };
        hex("enc.notify", &n, sizeof(n));
    }
    {
        grant_entry_v1_t e;
        memset(&e, 0, sizeof(e));
        e.flags = GTF_permit_access | GTF_readonly;
        e.domid = 2;
        e.frame = 0x12345;
        hex("enc.grant_entry_v1", &e, sizeof(e));
    }
    return 0;
}
