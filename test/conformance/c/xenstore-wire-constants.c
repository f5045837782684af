/*
 * Prints what xenblk's protocol/xs-wire.ts must agree with, taken from Xen's public headers
 * (xen/io/xs_wire.h, xenstore_lib.h) as installed by Debian libxen-dev: message types, error
 * names in table order, limits, struct layouts, and the bytes of encoded headers.
 * Output: one "key value" per line. Written for xenblk's conformance tests.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdbool.h>
#include <string.h>
#include <xen/io/xs_wire.h>
#include <xenstore_lib.h>

#define P(name) printf(#name " %ld\n", (long)(name))

int main(void)
{
    unsigned i;
    P(XS_CONTROL); P(XS_DIRECTORY); P(XS_READ); P(XS_GET_PERMS); P(XS_WATCH); P(XS_UNWATCH);
    P(XS_TRANSACTION_START); P(XS_TRANSACTION_END); P(XS_INTRODUCE); P(XS_RELEASE);
    P(XS_GET_DOMAIN_PATH); P(XS_WRITE); P(XS_MKDIR); P(XS_RM); P(XS_SET_PERMS);
    P(XS_WATCH_EVENT); P(XS_ERROR); P(XS_IS_DOMAIN_INTRODUCED); P(XS_RESUME); P(XS_SET_TARGET);
    P(XS_RESET_WATCHES); P(XS_DIRECTORY_PART); P(XS_TYPE_COUNT); P(XS_INVALID);
    P(XENSTORE_PAYLOAD_MAX); P(XENSTORE_ABS_PATH_MAX); P(XENSTORE_REL_PATH_MAX); P(XENSTORE_RING_SIZE);
    P(XS_WATCH_PATH); P(XS_WATCH_TOKEN);
    P(XS_PERM_NONE); P(XS_PERM_READ); P(XS_PERM_WRITE); P(XS_PERM_OWNER); P(XS_PERM_IGNORE);
    printf("XS_WRITE_NONE %s\nXS_WRITE_CREATE %s\nXS_WRITE_CREATE_EXCL %s\n", XS_WRITE_NONE, XS_WRITE_CREATE, XS_WRITE_CREATE_EXCL);
    printf("sizeof_xsd_sockmsg %zu\n", sizeof(struct xsd_sockmsg));
    printf("offset_type %zu\noffset_req_id %zu\noffset_tx_id %zu\noffset_len %zu\n",
           offsetof(struct xsd_sockmsg, type), offsetof(struct xsd_sockmsg, req_id),
           offsetof(struct xsd_sockmsg, tx_id), offsetof(struct xsd_sockmsg, len));
    printf("ring_req %zu\nring_rsp %zu\nring_req_cons %zu\nring_req_prod %zu\nring_rsp_cons %zu\nring_rsp_prod %zu\n"
           "ring_server_features %zu\nring_connection %zu\nring_error %zu\nring_size %zu\n",
           offsetof(struct xenstore_domain_interface, req), offsetof(struct xenstore_domain_interface, rsp),
           offsetof(struct xenstore_domain_interface, req_cons), offsetof(struct xenstore_domain_interface, req_prod),
           offsetof(struct xenstore_domain_interface, rsp_cons), offsetof(struct xenstore_domain_interface, rsp_prod),
           offsetof(struct xenstore_domain_interface, server_features), offsetof(struct xenstore_domain_interface, connection),
           offsetof(struct xenstore_domain_interface, error), sizeof(struct xenstore_domain_interface));
    for (i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)
        printf("error %u %s\n", i, xsd_errors[i].errstring);
    /* Encoded headers for a few (type, req_id, tx_id, len) tuples. */
    {
        static const uint32_t v[][4] = {
            { XS_WRITE, 1, 0, 9 }, { XS_WATCH_EVENT, 0, 0, 12 }, { XS_TRANSACTION_END, 0xfffffffe, 0x12345678, 2 },
            { XS_DIRECTORY_PART, 0x80000000, 7, XENSTORE_PAYLOAD_MAX },
        };
        for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
            struct xsd_sockmsg m = { .type = v[i][0], .req_id = v[i][1], .tx_id = v[i][2], .len = v[i][3] };
            const unsigned char *b = (const unsigned char *)&m;
            printf("header %u %u %u %u", m.type, m.req_id, m.tx_id, m.len);
            for (size_t j = 0; j < sizeof(m); j++)
                printf(" %02x", b[j]);
            printf("\n");
        }
    }
    return 0;
}
