/**
 * labelFor: a deterministic, sticky, weighted A/B split over prompt labels — the same label as
 * Python's `promptstamp.label_for` for the same inputs (shared vectors:
 * tests/vectors/label_for.json).
 *
 * BLAKE2b with an 8-byte digest over `<byte length of salt>:<salt><subject>` (UTF-8), read as a
 * big-endian unsigned 64-bit integer and divided by 2^64, picks a label by cumulative weight,
 * labels in sorted order. The subject is only hashed: never put into baggage, spans or logs.
 */

import { blake2b } from "./blake2b.js";
import { validateLabel } from "./validate.js";

const encoder = new TextEncoder();
const SCALE = 2 ** 64;

function utf8(what: string, value: unknown): Uint8Array {
  if (typeof value !== "string") throw new TypeError(`${what} must be a string, not ${typeof value}`);
  // Python's str.encode("utf-8") refuses a lone surrogate; TextEncoder would replace it.
  if (!value.isWellFormed()) throw new TypeError(`${what} contains a lone surrogate (not valid UTF-8)`);
  return encoder.encode(value);
}

/** The subject's point in [0, 1). */
export function unitInterval(subject: string, salt: string): number {
  const saltBytes = utf8("salt", salt);
  const subjectBytes = utf8("subject", subject);
  const prefix = encoder.encode(`${saltBytes.length}:`);
  const material = new Uint8Array(prefix.length + saltBytes.length + subjectBytes.length);
  material.set(prefix, 0);
  material.set(saltBytes, prefix.length);
  material.set(subjectBytes, prefix.length + saltBytes.length);
  const digest = blake2b(material, 8);
  let n = 0n;
  for (const byte of digest) n = (n << 8n) | BigInt(byte);
  // Number(bigint) rounds to nearest, ties to even, as Python's int -> float does.
  return Number(n) / SCALE;
}

function checkedWeights(weights: Readonly<Record<string, number>> | ReadonlyMap<string, number>): [string, number][] {
  if (weights === null || typeof weights !== "object") {
    throw new TypeError("weights must map label to weight");
  }
  const entries: [string, unknown][] =
    weights instanceof Map ? [...weights.entries()] : Object.entries(weights as Record<string, unknown>);
  if (entries.length === 0) throw new RangeError("weights must name at least one label");
  for (const [label] of entries) validateLabel(label);
  // Code-unit order equals Python's code-point order here: labels are ASCII.
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const checked: [string, number][] = [];
  for (const [label, weight] of entries) {
    if (typeof weight !== "number") {
      throw new RangeError(`weight for label ${JSON.stringify(label)} must be a number, got ${String(weight)}`);
    }
    if (!Number.isFinite(weight) || weight < 0) {
      throw new RangeError(`weight for label ${JSON.stringify(label)} must be finite and >= 0, got ${weight}`);
    }
    checked.push([label, weight]);
  }
  if (sum(checked) <= 0) throw new RangeError("weights must add up to more than 0");
  return checked;
}

/** Left-to-right float addition, as Python 3.10/3.11's sum() (see README: Python 3.12+). */
function sum(checked: [string, number][]): number {
  let total = 0;
  for (const [, weight] of checked) total += weight;
  return total;
}

/**
 * Pick the prompt label for `subject`: deterministic, sticky, weighted.
 *
 * `weights` maps label to a non-negative weight (they need not sum to 1); a label with weight 0
 * is never picked. `salt` names the experiment. Throws RangeError for an empty mapping, a
 * negative, NaN or infinite weight, weights summing to 0, or a label that could not go into
 * baggage; TypeError for a non-string subject or salt.
 */
export function labelFor(
  subject: string,
  weights: Readonly<Record<string, number>> | ReadonlyMap<string, number>,
  salt = "",
): string {
  utf8("subject", subject);
  utf8("salt", salt);
  const checked = checkedWeights(weights);
  const point = unitInterval(subject, salt) * sum(checked);
  let cumulative = 0;
  let chosen = "";
  for (const [label, weight] of checked) {
    if (weight <= 0) continue;
    chosen = label;
    cumulative += weight;
    if (point < cumulative) return label;
  }
  return chosen; // only reachable through float rounding at the very top of the range
}
