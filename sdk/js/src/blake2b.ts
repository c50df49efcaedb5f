/**
 * BLAKE2b (RFC 7693), unkeyed, any digest length 1–64 bytes.
 *
 * Node's crypto offers only `blake2b512`; a shorter BLAKE2b digest is not a truncation of it
 * (the digest length is part of the parameter block), and Python's
 * `hashlib.blake2b(data, digest_size=8)`, which `label_for` uses, is such a digest. 64-bit words
 * are kept as pairs of 32-bit halves (low, high) in a Uint32Array.
 */

// The initialisation vector, as [low, high] 32-bit halves.
const IV = new Uint32Array([
  0xf3bcc908, 0x6a09e667, 0x84caa73b, 0xbb67ae85, 0xfe94f82b, 0x3c6ef372, 0x5f1d36f1, 0xa54ff53a,
  0xade682d1, 0x510e527f, 0x2b3e6c1f, 0x9b05688c, 0xfb41bd6b, 0x1f83d9ab, 0x137e2179, 0x5be0cd19,
]);

// The message schedule, 12 rounds (rounds 10 and 11 repeat 0 and 1), as indices into `m` (x2).
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
  [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
  [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
  [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
  [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];
const SCHEDULE = new Uint8Array(12 * 16);
for (let round = 0; round < 12; round++) {
  const row = SIGMA[round % 10]!;
  for (let i = 0; i < 16; i++) SCHEDULE[round * 16 + i] = row[i]! * 2;
}

const BLOCK = 128;

/** v[a] += v[b] (64-bit, indices of low halves). */
function add(v: Uint32Array, a: number, b: number): void {
  const lo = v[a]! + v[b]!;
  v[a + 1] = v[a + 1]! + v[b + 1]! + (lo >= 0x100000000 ? 1 : 0);
  v[a] = lo;
}

/** v[a] += (lo, hi). */
function addWord(v: Uint32Array, a: number, lo: number, hi: number): void {
  const sum = v[a]! + lo;
  v[a + 1] = v[a + 1]! + hi + (sum >= 0x100000000 ? 1 : 0);
  v[a] = sum;
}

/** The mixing function G on words a, b, c, d of v with message words x, y (all indices x2). */
function mix(v: Uint32Array, m: Uint32Array, a: number, b: number, c: number, d: number, x: number, y: number): void {
  add(v, a, b);
  addWord(v, a, m[x]!, m[x + 1]!);
  let lo = v[d]! ^ v[a]!;
  let hi = v[d + 1]! ^ v[a + 1]!;
  v[d] = hi; // rotate right 32
  v[d + 1] = lo;
  add(v, c, d);
  lo = v[b]! ^ v[c]!;
  hi = v[b + 1]! ^ v[c + 1]!;
  v[b] = (lo >>> 24) ^ (hi << 8); // rotate right 24
  v[b + 1] = (hi >>> 24) ^ (lo << 8);
  add(v, a, b);
  addWord(v, a, m[y]!, m[y + 1]!);
  lo = v[d]! ^ v[a]!;
  hi = v[d + 1]! ^ v[a + 1]!;
  v[d] = (lo >>> 16) ^ (hi << 16); // rotate right 16
  v[d + 1] = (hi >>> 16) ^ (lo << 16);
  add(v, c, d);
  lo = v[b]! ^ v[c]!;
  hi = v[b + 1]! ^ v[c + 1]!;
  v[b] = (hi >>> 31) ^ (lo << 1); // rotate right 63
  v[b + 1] = (lo >>> 31) ^ (hi << 1);
}

function compress(h: Uint32Array, block: Uint8Array, offset: number, counter: number, last: boolean): void {
  const v = new Uint32Array(32);
  const m = new Uint32Array(32);
  v.set(h, 0);
  v.set(IV, 16);
  v[24] = v[24]! ^ counter >>> 0; // t, low 64 bits (counter < 2^53)
  v[25] = v[25]! ^ Math.floor(counter / 0x100000000);
  if (last) {
    v[28] = ~v[28]!;
    v[29] = ~v[29]!;
  }
  for (let i = 0; i < 32; i++) {
    const j = offset + i * 4;
    m[i] = (block[j]! | (block[j + 1]! << 8) | (block[j + 2]! << 16) | (block[j + 3]! << 24)) >>> 0;
  }
  for (let round = 0; round < 12; round++) {
    const s = round * 16;
    const S = SCHEDULE;
    mix(v, m, 0, 8, 16, 24, S[s]!, S[s + 1]!);
    mix(v, m, 2, 10, 18, 26, S[s + 2]!, S[s + 3]!);
    mix(v, m, 4, 12, 20, 28, S[s + 4]!, S[s + 5]!);
    mix(v, m, 6, 14, 22, 30, S[s + 6]!, S[s + 7]!);
    mix(v, m, 0, 10, 20, 30, S[s + 8]!, S[s + 9]!);
    mix(v, m, 2, 12, 22, 24, S[s + 10]!, S[s + 11]!);
    mix(v, m, 4, 14, 16, 26, S[s + 12]!, S[s + 13]!);
    mix(v, m, 6, 8, 18, 28, S[s + 14]!, S[s + 15]!);
  }
  for (let i = 0; i < 16; i++) h[i] = h[i]! ^ v[i]! ^ v[i + 16]!;
}

/** The BLAKE2b digest of `data`, `digestSize` bytes long (1–64; Python's `digest_size`). */
export function blake2b(data: Uint8Array, digestSize = 64): Uint8Array {
  if (!Number.isInteger(digestSize) || digestSize < 1 || digestSize > 64) {
    throw new RangeError(`digestSize must be an integer from 1 to 64, got ${digestSize}`);
  }
  const h = new Uint32Array(IV);
  h[0] = h[0]! ^ 0x01010000 ^ digestSize; // parameter block: depth 1, fanout 1, no key
  let offset = 0;
  while (data.length - offset > BLOCK) {
    compress(h, data, offset, offset + BLOCK, false);
    offset += BLOCK;
  }
  const last = new Uint8Array(BLOCK); // the final block, zero-padded (also for empty input)
  last.set(data.subarray(offset));
  compress(h, last, 0, data.length, true);
  const out = new Uint8Array(digestSize);
  for (let i = 0; i < digestSize; i++) out[i] = h[i >> 2]! >>> (8 * (i & 3));
  return out;
}
