// xen/io/xs_wire.h: the XenStore wire format. (Codec and parser: see the protocol issue.)

/** One entry of a node's permission list: `n`one, `r`ead, `w`rite, `b`oth, for `domid`. */
export interface XsPermission {
  readonly domid: number;
  readonly perm: 'n' | 'r' | 'w' | 'b';
}
