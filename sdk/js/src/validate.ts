/**
 * What may go into the two app.prompt.* baggage entries: short, printable ASCII, no
 * surrounding whitespace (Python `_validate.py`). Anything else is refused up front.
 */

export const MAX_KEY_LENGTH = 200;
export const MAX_LABEL_LENGTH = 100;

const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;

function check(what: string, value: unknown, maxLength: number): string {
  if (typeof value !== "string") {
    throw new TypeError(`prompt ${what} must be a string, not ${typeof value}`);
  }
  if (!value) throw new RangeError(`prompt ${what} must not be empty`);
  if (value.length > maxLength) {
    throw new RangeError(
      `prompt ${what} ${JSON.stringify(value.slice(0, 40))}... is ${value.length} characters; ` +
        `the limit is ${maxLength} (it travels in the W3C baggage header)`,
    );
  }
  if (!PRINTABLE_ASCII.test(value)) {
    throw new RangeError(
      `prompt ${what} ${JSON.stringify(value)} must be printable ASCII (it travels in the W3C ` +
        "baggage header)",
    );
  }
  if (value !== value.trim()) {
    throw new RangeError(`prompt ${what} ${JSON.stringify(value)} must not start or end with whitespace`);
  }
  return value;
}

export function validateKey(name: unknown): string {
  return check("name", name, MAX_KEY_LENGTH);
}

export function validateLabel(label: unknown): string {
  return check("label", label, MAX_LABEL_LENGTH);
}

/** Whether a baggage value read back from a context is one promptstamp would have written. */
export function isValidEntry(value: unknown, maxLength: number): value is string {
  return (
    typeof value === "string" &&
    value.length > 0 &&
    value.length <= maxLength &&
    PRINTABLE_ASCII.test(value) &&
    value === value.trim()
  );
}
