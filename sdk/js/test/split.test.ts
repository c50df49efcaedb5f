/** labelFor and BLAKE2b against the vectors Python wrote (tests/vectors/label_for.json). */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { labelFor } from "@promptstamp/sdk";

import { blake2b } from "../dist/blake2b.js";
import { unitInterval } from "../dist/split.js";

interface Case {
  subject: string;
  salt: string;
  weights: Record<string, number | string>;
  digest?: string;
  point?: number;
  label?: string;
  error?: string;
}

const vectors = JSON.parse(
  readFileSync(new URL("../../../tests/vectors/label_for.json", import.meta.url), "utf-8"),
) as { cases: Case[]; blake2b: { data: string; digest_size: number; digest: string }[] };

const SPECIAL: Record<string, number> = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };
const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");
const material = (subject: string, salt: string): Uint8Array => {
  const s = Buffer.from(salt, "utf-8");
  return Buffer.concat([Buffer.from(`${s.length}:`), s, Buffer.from(subject, "utf-8")]);
};

test("the vector file has the cases it promises", () => {
  assert.ok(vectors.cases.length >= 300, `${vectors.cases.length} cases`);
  assert.ok(vectors.cases.some((c) => c.error));
  assert.ok(vectors.cases.some((c) => /[^\x00-\x7f]/.test(c.subject)));
  assert.ok(vectors.cases.some((c) => Object.values(c.weights).includes(0)));
});

test("BLAKE2b equals Python's hashlib.blake2b for every length and digest size", () => {
  for (const v of vectors.blake2b) {
    assert.equal(hex(blake2b(Buffer.from(v.data, "hex"), v.digest_size)), v.digest, `${v.data.length / 2} bytes, size ${v.digest_size}`);
  }
});

test("BLAKE2b-512 equals node:crypto's blake2b512 (a second, independent reference)", () => {
  for (const length of [0, 1, 127, 128, 129, 1000, 4096]) {
    const data = Buffer.alloc(length, 0x61 + (length % 7));
    assert.equal(hex(blake2b(data, 64)), createHash("blake2b512").update(data).digest("hex"));
  }
});

test("an 8-byte BLAKE2b is not a truncated BLAKE2b-512", () => {
  const data = Buffer.from("4:exp1user-1");
  assert.notEqual(hex(blake2b(data, 8)), hex(blake2b(data, 64)).slice(0, 16));
});

test("digest, point and label equal Python's for every vector", () => {
  let checked = 0;
  for (const c of vectors.cases) {
    const weights = Object.fromEntries(Object.entries(c.weights).map(([k, v]) => [k, typeof v === "string" ? SPECIAL[v]! : v]));
    const what = JSON.stringify([c.subject, c.salt, c.weights]);
    if (c.error) {
      assert.throws(() => labelFor(c.subject, weights, c.salt), RangeError, what);
      continue;
    }
    assert.equal(hex(blake2b(material(c.subject, c.salt), 8)), c.digest, what);
    assert.equal(unitInterval(c.subject, c.salt), c.point, what);
    assert.equal(labelFor(c.subject, weights, c.salt), c.label, what);
    assert.equal(labelFor(c.subject, new Map(Object.entries(weights).reverse()), c.salt), c.label, what);
    checked++;
  }
  assert.ok(checked >= 300);
});

test("labelFor refuses what Python refuses", () => {
  assert.throws(() => labelFor("u", {}), RangeError);
  assert.throws(() => labelFor("u", { a: true as unknown as number }), RangeError);
  assert.throws(() => labelFor(1 as unknown as string, { a: 1 }), TypeError);
  assert.throws(() => labelFor("lone \ud800 surrogate", { a: 1 }), TypeError); // Python: UnicodeEncodeError
  assert.equal(labelFor("u", { a: 1 }), "a");
});
