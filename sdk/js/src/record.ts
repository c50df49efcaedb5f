/**
 * The fetch record (contract §2): on a span of its own, `promptstamp.fetch`, a child of the
 * span active at fetch time, started when the fetch begins and ended as soon as it resolves,
 * with one `app.prompt.fetch` event and the same attributes; and, when install() was given a
 * LoggerProvider, as an OTel log record with `eventName: "app.prompt.fetch"` (Python
 * `_fetchlog.py`). The version is a JS integer number, which OpenTelemetry JS's OTLP encoders
 * write as `intValue` (test/otlp.test.ts).
 */

import { type Attributes, type Context, type Span, SpanStatusCode, type Tracer, trace } from "@opentelemetry/api";

import * as c from "./contract.js";
import type { Resolution } from "./fetch.js";

/** The part of @opentelemetry/api-logs' LoggerProvider used here (structural: no import). */
export interface LoggerProviderLike {
  getLogger(name: string, version?: string): {
    emit(record: {
      eventName?: string;
      timestamp?: number;
      severityNumber?: number;
      severityText?: string;
      attributes?: Attributes;
      context?: Context;
    }): void;
  };
}

const SEVERITY_INFO = 9; // SeverityNumber.INFO

export interface Fetching {
  span: Span;
  parent: Context;
  context: Context; // parent with the fetch span current
}

export function begin(tracer: Tracer, parent: Context, key: string, label: string): Fetching {
  const span = tracer.startSpan(c.FETCH_SPAN_NAME, {}, parent);
  // set after the start: the baggage processor may have copied an outer prompt's entries
  span.setAttributes({ [c.PROMPT_KEY]: key, [c.PROMPT_LABEL]: label });
  return { span, parent, context: trace.setSpan(parent, span) };
}

export type Emit = (attributes: Attributes, context: Context, time: number) => void;

export function loggerEmit(provider: LoggerProviderLike, name: string, version: string): Emit {
  const logger = provider.getLogger(name, version);
  return (attributes, context, time) =>
    logger.emit({
      eventName: c.FETCH_EVENT_NAME,
      timestamp: time,
      severityNumber: SEVERITY_INFO,
      severityText: "INFO",
      attributes,
      context,
    });
}

/** Record a prompt handed out: the fetch span's event (ending it), the log record, and the
 * span active at fetch time. */
export function handedOut(fetching: Fetching, key: string, label: string, resolution: Resolution, emit?: Emit): void {
  // One time for the event, the span's end and the log record, in epoch milliseconds: the
  // OpenTelemetry JS SDK stamps a span's start with Date.now(), so a span started after the
  // fetch resolved never starts before this record (a sub-millisecond time could).
  const time = Date.now();
  const attributes: Attributes = { [c.PROMPT_KEY]: key, [c.PROMPT_LABEL]: label, [c.FETCH_SOURCE]: resolution.source };
  const version = resolution.template.version;
  if (version !== undefined) attributes[c.PROMPT_VERSION] = version; // an integer number: OTLP intValue
  if (resolution.errorType) attributes[c.FETCH_ERROR_TYPE] = resolution.errorType;
  const { span, parent } = fetching;
  span.setAttributes(attributes);
  span.addEvent(c.FETCH_EVENT_NAME, attributes, time);
  try {
    emit?.(attributes, fetching.context, time);
  } finally {
    span.end(time);
  }

  const active = trace.getSpan(parent);
  if (!active?.isRecording()) return;
  active.setAttribute(c.FETCH_SOURCE, resolution.source);
  if (resolution.errorType) active.setAttribute(c.FETCH_ERROR_TYPE, resolution.errorType);
  if (resolution.source === c.SOURCE_CACHE) {
    const event: Attributes = {
      [c.PROMPT_KEY]: key,
      [c.PROMPT_LABEL]: label,
      [c.FETCH_ERROR_TYPE]: resolution.errorType ?? "",
    };
    if (version !== undefined) event[c.PROMPT_VERSION] = version;
    active.addEvent(c.CACHE_FALLBACK_EVENT, event, time);
  }
}

/** Record that nothing was handed out: error status on the fetch span (no event, so no record)
 * and `source=unavailable` on the span active at fetch time. */
export function failed(fetching: Fetching, errorType: string): void {
  const { span, parent } = fetching;
  span.setAttribute(c.FETCH_SOURCE, c.SOURCE_UNAVAILABLE);
  span.setAttribute(c.FETCH_ERROR_TYPE, errorType);
  span.setStatus({ code: SpanStatusCode.ERROR, message: errorType });
  span.end();
  const active = trace.getSpan(parent);
  if (active?.isRecording()) {
    active.setAttribute(c.FETCH_SOURCE, c.SOURCE_UNAVAILABLE);
    active.setAttribute(c.FETCH_ERROR_TYPE, errorType);
  }
}
