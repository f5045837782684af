// xenstored treats paths and tokens as C strings of bytes. The server keeps them as JS strings
// with one char per byte (latin1), which is lossless both ways and keeps lengths equal to
// byte counts; values stay Uint8Array throughout.

/** `latin1` converts between bytes and one-char-per-byte strings. */
export const latin1 = {
  /** `decode(b)` is `b` as a string of chars 0..255. */
  decode(b: Uint8Array): string {
    let s = '';
    for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
    return s;
  },
  /** `encode(s)` is the bytes of a string of chars 0..255 (higher chars are truncated to 8 bits). */
  encode(s: string): Uint8Array {
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  },
};
