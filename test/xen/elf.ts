// What a dynamically linked ELF file asks of the loader: its interpreter (PT_INTERP), the
// shared libraries it needs (DT_NEEDED) and where it says to look (DT_RPATH, DT_RUNPATH). Read
// from the program headers and the dynamic segment as the System V gABI lays them out (ELF64,
// little-endian only: the harness packs x86-64 binaries). This is what `ldd` would show,
// without running a loader.
import { readFileSync } from 'node:fs';
import { HarnessError } from './exec.ts';

/** gABI program header types and dynamic tags used here. */
const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const DT_NULL = 0n;
const DT_NEEDED = 1n;
const DT_STRTAB = 5n;
const DT_RPATH = 15n;
const DT_RUNPATH = 29n;

/** The loader-facing part of one ELF file. */
export interface ElfDeps {
  /** PT_INTERP, e.g. `/lib64/ld-linux-x86-64.so.2`; undefined for a shared library or a static binary. */
  readonly interp: string | undefined;
  /** DT_NEEDED sonames, in order. */
  readonly needed: readonly string[];
  /** DT_RPATH then DT_RUNPATH directories (unexpanded: `$ORIGIN` stays). */
  readonly searchPath: readonly string[];
}

/** `isElf(path)` is whether `path` starts with the ELF magic. */
export function isElf(path: string): boolean {
  const b = readFileSync(path).subarray(0, 4);
  return b.length === 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}

/** `elfDeps(path)` is the interpreter, DT_NEEDED and search path of the ELF64 LE file `path`. */
export function elfDeps(path: string): ElfDeps {
  const b = readFileSync(path);
  const bad = (why: string): never => {
    throw new HarnessError(`${path}: ${why}`);
  };
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46) bad('not an ELF file');
  // e_ident[EI_CLASS] = 2 (ELFCLASS64), e_ident[EI_DATA] = 1 (ELFDATA2LSB).
  if (b[4] !== 2 || b[5] !== 1) bad('not a 64-bit little-endian ELF file');
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  const loads: { vaddr: bigint; offset: bigint; filesz: bigint }[] = [];
  let dyn: { offset: number; size: number } | undefined;
  let interp: string | undefined;
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 56 > b.length) bad('program header table runs past the end of the file');
    const type = b.readUInt32LE(at);
    const offset = b.readBigUInt64LE(at + 8);
    const vaddr = b.readBigUInt64LE(at + 16);
    const filesz = b.readBigUInt64LE(at + 32);
    if (type === PT_LOAD) loads.push({ vaddr, offset, filesz });
    else if (type === PT_DYNAMIC) dyn = { offset: Number(offset), size: Number(filesz) };
    else if (type === PT_INTERP) interp = b.toString('latin1', Number(offset), Number(offset + filesz)).replace(/\0.*$/s, '');
  }
  if (dyn === undefined) return { interp, needed: [], searchPath: [] };
  const entries: { tag: bigint; val: bigint }[] = [];
  for (let at = dyn.offset; at + 16 <= dyn.offset + dyn.size && at + 16 <= b.length; at += 16) {
    const tag = b.readBigInt64LE(at);
    if (tag === DT_NULL) break;
    entries.push({ tag, val: b.readBigUInt64LE(at + 8) });
  }
  const strtabVaddr = entries.find((e) => e.tag === DT_STRTAB)?.val ?? bad('dynamic segment has no DT_STRTAB');
  // DT_STRTAB is an address: find the loaded segment that holds it to get its file offset.
  const seg = loads.find((l) => strtabVaddr >= l.vaddr && strtabVaddr < l.vaddr + l.filesz) ?? bad('DT_STRTAB lies in no PT_LOAD segment');
  const strtab = Number(strtabVaddr - seg.vaddr + seg.offset);
  const str = (off: bigint): string => {
    const start = strtab + Number(off);
    const end = b.indexOf(0, start);
    if (start >= b.length || end < 0) bad('dynamic string runs past the end of the file');
    return b.toString('latin1', start, end);
  };
  const needed = entries.filter((e) => e.tag === DT_NEEDED).map((e) => str(e.val));
  const searchPath = [DT_RPATH, DT_RUNPATH].flatMap((t) =>
    entries.filter((e) => e.tag === t).flatMap((e) => str(e.val).split(':').filter((d) => d !== '')),
  );
  return { interp, needed, searchPath };
}
