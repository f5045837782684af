// Node names as xenstored checks and transforms them (xenstored_core.c is_valid_nodename,
// canonicalize, get_parent; xenstored_watch.c is_child), plus the C number parsers whose
// leniency the daemon's replies depend on (atoi for domids and offsets, strtol base 0 for
// permission entries).

/** `NAME_CHARS` are the characters xenstored accepts in a node name (valid_chars). */
const VALID = /^[A-Za-z0-9\-/_@]*$/;

/** `isValidNodename(name, pathMax)` is whether xenstored accepts `name` as an absolute node path. */
export function isValidNodename(name: string, pathMax: number): boolean {
  if (!name.startsWith('/')) return false;
  if (name.endsWith('/') && name !== '/') return false;
  if (name.includes('//')) return false;
  // The length limit counts from after /local/domain/<id>/ when the path is inside a domain's
  // home (sscanf "/local/domain/%5u/%n"), from the start otherwise.
  let localOff = 0;
  const m = /^\/local\/domain\/([+-]?[0-9]+)\//.exec(name);
  if (m && m[1]!.length <= 5) localOff = m[0].length;
  if (name.length > localOff + pathMax) return false;
  return VALID.test(name);
}

/** `domainPath(domid)` is /local/domain/<domid>, the home of a domain's relative paths. */
export function domainPath(domid: number): string {
  return `/local/domain/${domid >>> 0}`;
}

/** `canonicalize(implicit, name)` is `name` made absolute: relative names live under `implicit`. */
export function canonicalize(implicit: string, name: string | undefined): string | undefined {
  if (name === undefined || name.startsWith('/') || name.startsWith('@')) return name;
  return `${implicit}/${name}`;
}

/** `getParent(name)` is the parent of absolute `name` ("/" for top-level nodes). */
export function getParent(name: string): string {
  const slash = name.lastIndexOf('/');
  return slash <= 0 ? '/' : name.slice(0, slash);
}

/** `basename(name)` is the last component of absolute `name`. */
export function basename(name: string): string {
  return name.slice(name.lastIndexOf('/') + 1);
}

/** `childName(parent, child)` is the absolute name of `child` under `parent`. */
export function childName(parent: string, child: string): string {
  return parent === '/' ? `/${child}` : `${parent}/${child}`;
}

/** `isChild(child, parent)` is whether `child` is `parent` or below it ("/" contains everything). */
export function isChild(child: string, parent: string): boolean {
  if (parent === '/') return true;
  if (!child.startsWith(parent)) return false;
  const c = child.charAt(parent.length);
  return c === '/' || c === '';
}

/** `cAtoi(s)` is C's atoi(s) as a 32-bit int: optional space and sign, leading digits, 0 if none. */
export function cAtoi(s: string): number {
  const m = /^[ \t\n\v\f\r]*([+-]?)([0-9]*)/.exec(s)!;
  if (m[2] === '') return 0;
  const v = BigInt.asIntN(32, BigInt(m[1] === '-' ? `-${m[2]}` : m[2]!));
  return Number(v);
}

/**
 * `cStrtolBase0(s)` is C's strtol(s, &end, 0) on LP64: the value as a 64-bit long (saturated
 * as strtol saturates) and the index of `end`; `end` is 0 when no digits were parsed.
 */
export function cStrtolBase0(s: string): { value: bigint; end: number } {
  const m = /^([ \t\n\v\f\r]*)([+-]?)/.exec(s)!;
  let i = m[0].length;
  const neg = m[2] === '-';
  let base = 10;
  let digits = '';
  if (s.startsWith('0x', i) || s.startsWith('0X', i)) {
    const hex = /^[0-9a-fA-F]+/.exec(s.slice(i + 2));
    if (hex) {
      base = 16;
      digits = hex[0];
      i += 2 + digits.length;
    } else {
      // "0x" without hex digits parses as the single digit 0, end after the 0.
      digits = '0';
      i += 1;
    }
  } else if (s.charAt(i) === '0') {
    base = 8;
    digits = /^[0-7]+/.exec(s.slice(i))![0];
    i += digits.length;
  } else {
    const dec = /^[0-9]+/.exec(s.slice(i));
    if (!dec) return { value: 0n, end: 0 };
    digits = dec[0];
    i += digits.length;
  }
  let v = 0n;
  for (const ch of digits) v = v * BigInt(base) + BigInt(parseInt(ch, base));
  const LONG_MAX = (1n << 63n) - 1n;
  if (neg) v = v > LONG_MAX + 1n ? -(LONG_MAX + 1n) : -v;
  else if (v > LONG_MAX) v = LONG_MAX;
  return { value: v, end: i };
}
