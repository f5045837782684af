#!/bin/bash
# Linux xen-blkfront against `xenblk serve --grant-copy`: linux-blkfront-xenblk-blkback.sh with
# the data moved by GNTTABOP_copy instead of grant mappings (see its header).
XB_GRANT_COPY=1 exec bash "$XENBLK_REPO/test/xen/tests/linux-blkfront-xenblk-blkback.sh"
