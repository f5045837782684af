// Guest RAM on 2 MiB pages. Xen's domain builder populates a guest's memory with superpages
// where it can (tools/libs/guest/xg_dom_x86.c, meminit_pv/meminit_hvm: extents of
// SUPERPAGE_2MB_SHIFT first, 4 KiB ones for what is left), so a
// guest's consecutive frames are mostly machine-contiguous, and a backend's block I/O on them
// reaches the disk in few segments. The simulator's RAM file is tmpfs, whose pages come one by
// one from wherever the host's allocator has them: a 1 MiB buffer is then up to 256 physical
// segments, and the block layer stops merging at the device's max_segments (254 on a virtio
// disk). Measured on the development machine (block_rq_issue tracepoint): blkback's 1 MiB reads
// into a guest's pages reached the disk as 1016 KiB + 8 KiB requests; with the RAM on 2 MiB
// pages, whole.
//
// How: the file's pages are allocated (MADV_POPULATE_WRITE, Linux 5.14) and then gathered into
// 2 MiB folios by MADV_COLLAPSE (Linux 6.1), which works on tmpfs whatever
// /sys/kernel/mm/transparent_hugepage/shmem_enabled says (except "deny"). It costs the whole RAM
// up front (no longer sparse) and ~3 ms per MiB, so it is an option of the simulator, not its
// default.
import { MADV, errno, errnoName, libc } from '../../native/libc.ts';
import { Mapping } from '../../native/memory.ts';

/** 2 MiB: the x86-64 and arm64 (4 KiB granule) PMD size MADV_COLLAPSE builds. */
export const SUPERPAGE = 2 << 20;

/** What backing a RAM file with superpages did: `ok`, or why not (the step that failed and its errno). */
export type SuperpagesResult = { readonly ok: true } | { readonly ok: false; readonly why: string };

/**
 * `backWithSuperpages(fd, bytes)` allocates every page of the tmpfs file `fd` (of `bytes`, a
 * multiple of SUPERPAGE for all of it to be collapsed) and gathers them into 2 MiB pages. The
 * file's contents stay what they were (zeros for a fresh file). Nothing is thrown: a kernel
 * without MADV_COLLAPSE, or a host that denies huge pages, leaves the file as ordinary pages.
 */
export function backWithSuperpages(fd: number, bytes: number): SuperpagesResult {
  // A file's page can be mapped by a PMD only at an address congruent to its offset modulo
  // 2 MiB (thp_vma_suitable_order), and MADV_COLLAPSE works on such ranges of a mapping: the
  // file is placed at a 2 MiB-aligned address inside a reservation a superpage larger.
  let m: Mapping;
  try {
    m = Mapping.reserve(bytes + SUPERPAGE);
  } catch (e) {
    return { ok: false, why: (e as Error).message };
  }
  try {
    const at = Math.ceil(m.address / SUPERPAGE) * SUPERPAGE;
    m.place(at - m.address, fd, 0, bytes, true, 'RAM file');
    if (libc.madvise(at, bytes, MADV.POPULATE_WRITE) !== 0) return { ok: false, why: `MADV_POPULATE_WRITE: ${errnoName(errno())}` };
    if (libc.madvise(at, bytes, MADV.COLLAPSE) !== 0) return { ok: false, why: `MADV_COLLAPSE: ${errnoName(errno())}` };
    return { ok: true };
  } catch (e) {
    return { ok: false, why: (e as Error).message };
  } finally {
    m.unmap(); // no views were handed out: a plain munmap
  }
}
