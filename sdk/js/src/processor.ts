/**
 * PromptSpanProcessor: copies the app.prompt.key / app.prompt.label baggage entries onto every
 * span as it starts (contract §1; Python `PromptBaggageSpanProcessor`).
 *
 * It implements the OpenTelemetry JS SDK's `SpanProcessor` interface structurally, so this
 * package has no runtime (or type) dependency on @opentelemetry/sdk-trace-base: pass it to the
 * provider, `new NodeTracerProvider({ spanProcessors: [new PromptSpanProcessor(), ...] })`.
 * `onStart` runs synchronously inside `tracer.startSpan()`: it reads the parent context's
 * baggage, sets at most two attributes, never throws.
 */

import { type Attributes, type Context, propagation } from "@opentelemetry/api";

import * as c from "./contract.js";
import { MAX_KEY_LENGTH, MAX_LABEL_LENGTH, isValidEntry } from "./validate.js";

/** The span most recently seen by any PromptSpanProcessor: withPrompt() checks that its own
 * fetch span went through one, and warns once if not (the processor is not on the provider). */
export const seen: { span: unknown } = { span: undefined };

/** The entries of `ctx`'s baggage that look like ones promptstamp writes. */
export function promptAttributes(ctx: Context): Attributes {
  const bag = propagation.getBaggage(ctx);
  if (!bag) return {};
  const found: Attributes = {};
  const key = bag.getEntry(c.PROMPT_KEY)?.value;
  if (isValidEntry(key, MAX_KEY_LENGTH)) found[c.PROMPT_KEY] = key;
  const label = bag.getEntry(c.PROMPT_LABEL)?.value;
  if (isValidEntry(label, MAX_LABEL_LENGTH)) found[c.PROMPT_LABEL] = label;
  return found;
}

export class PromptSpanProcessor {
  onStart(span: { setAttributes(attributes: Attributes): unknown }, parentContext: Context): void {
    seen.span = span;
    try {
      const attributes = promptAttributes(parentContext);
      if (Object.keys(attributes).length) span.setAttributes(attributes);
    } catch {
      // never let telemetry break the app
    }
  }

  onEnd(_span: unknown): void {}

  forceFlush(): Promise<void> {
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}
