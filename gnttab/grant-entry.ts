// grant_table.h: the version-1 grant entry, as a guest writes it in its own grant table and the
// hypervisor (or the simulator's daemon) reads and updates it:
//   struct grant_entry_v1 { uint16_t flags; domid_t domid; uint32_t frame; }  (8 bytes)
// flags and domid together form one aligned 32-bit word: Xen validates and updates them with a
// single cmpxchg on that word so a guest cannot change the domid between check and pin.

/** sizeof(grant_entry_v1_t). */
export const GRANT_ENTRY_V1_SIZE = 8;
/** offsetof(grant_entry_v1_t, flags / domid / frame). */
export const GRANT_ENTRY_V1 = { flags: 0, domid: 2, frame: 4 } as const;

/** grant_table.h GTF_* flag bits. */
export const GTF = {
  invalid: 0,
  permit_access: 1,
  accept_transfer: 2,
  transitive: 3,
  type_mask: 3,
  readonly: 1 << 2,
  reading: 1 << 3,
  writing: 1 << 4,
  sub_page: 1 << 8,
} as const;

/** xen.h DOMID_FIRST_RESERVED: domids at or above are special (DOMID_SELF 0x7FF0, ...). */
export const DOMID_FIRST_RESERVED = 0x7ff0;
/** xen.h DOMID_SELF. */
export const DOMID_SELF = 0x7ff0;

/** Linux reserves the first 8 refs (GNTTAB_NR_RESERVED_ENTRIES: console, xenstore, ...). */
export const GNTTAB_NR_RESERVED_ENTRIES = 8;

/** `isDomid(d)` is whether `d` names an ordinary domain (0 .. DOMID_FIRST_RESERVED-1). */
export function isDomid(d: unknown): d is number {
  return typeof d === 'number' && Number.isInteger(d) && d >= 0 && d < DOMID_FIRST_RESERVED;
}

/** `flagsAt(ref)` is the index of entry `ref`'s flags in a Uint16Array over the table. */
export function flagsAt(ref: number): number {
  return (ref * GRANT_ENTRY_V1_SIZE + GRANT_ENTRY_V1.flags) >>> 1;
}
/** `domidAt(ref)` is the index of entry `ref`'s domid in a Uint16Array over the table. */
export function domidAt(ref: number): number {
  return (ref * GRANT_ENTRY_V1_SIZE + GRANT_ENTRY_V1.domid) >>> 1;
}
/** `frameAt(ref)` is the index of entry `ref`'s frame in a Uint32Array over the table. */
export function frameAt(ref: number): number {
  return (ref * GRANT_ENTRY_V1_SIZE + GRANT_ENTRY_V1.frame) >>> 2;
}
/** `comboAt(ref)` is the index of entry `ref`'s flags|domid<<16 word in a Uint32Array over the table (little-endian). */
export function comboAt(ref: number): number {
  return (ref * GRANT_ENTRY_V1_SIZE + GRANT_ENTRY_V1.flags) >>> 2;
}
