/**
 * @promptstamp/sdk — promptstamp for TypeScript/Node (mirrors the Python SDK, sdk/README.md).
 *
 *     install({ tracerProvider });            // once, after the app's OpenTelemetry set-up
 *     await withPrompt("order-status-answer", { label: "production" }, async (p) => {
 *       const messages = p.compile({ query, region });
 *       return callTheModel(p.config.model, messages); // its spans carry app.prompt.key/label
 *     });
 *
 * Inside the callback the prompt's key and label are W3C baggage (contract §1), copied onto
 * every span by PromptSpanProcessor; each prompt handed out is recorded on a short
 * `promptstamp.fetch` span with an `app.prompt.fetch` event (contract §2) and, with a
 * LoggerProvider, as an `app.prompt.fetch` log record. The callback runs in an OTel context made
 * current with `context.with()`: the app must have registered a ContextManager
 * (`NodeTracerProvider.register()`, `@opentelemetry/sdk-node`, or
 * `context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())`).
 *
 * While a guarded rollout of the label runs (its plan is the Langfuse prompt
 * `promptstamp-rollout/<label>/<name>`, rollout.ts), the subjects on its new side are handed its
 * `to_version` under the same label: the subject is the `subject` option, else the trace id of
 * the span active at entry (or of the scope span opened when none is). Only hashed.
 */

import { randomBytes } from "node:crypto";

import { type Context, type Span, SpanStatusCode, type TracerProvider, context, propagation, trace } from "@opentelemetry/api";

import * as c from "./contract.js";
import {
  DEFAULT_CACHE_TTL_SECONDS,
  DEFAULT_FETCH_TIMEOUT_MS,
  DEFAULT_MAX_STALE_SECONDS,
  Fetcher,
  type LangfuseLike,
  type Resolution,
  checkSeconds,
  errorTypeOf,
} from "./fetch.js";
import { PromptSpanProcessor, seen } from "./processor.js";
import { type Emit, type LoggerProviderLike, begin, failed, handedOut, loggerEmit } from "./record.js";
import type { RolloutSide } from "./rollout.js";
import { labelFor } from "./split.js";
import { type ChatMessage, type ChatPart, type PromptType, type Template, type Variables, fromFallback } from "./template.js";
import { validateKey, validateLabel } from "./validate.js";
import { VERSION } from "./version.js";

export { PromptError, PromptNotFoundError, PromptUnavailableError, PromptVariableError } from "./errors.js";
export { FAILURE_BACKOFF_SECONDS, type LangfuseLike } from "./fetch.js";
export { PromptSpanProcessor } from "./processor.js";
export type { LoggerProviderLike } from "./record.js";
export { RolloutPlan, type RolloutSide, parsePlan, planPromptName, subjectPoint } from "./rollout.js";
export { labelFor } from "./split.js";
export type { ChatMessage, ChatPart, PromptType, Variables } from "./template.js";
export { VERSION } from "./version.js";
export * as contract from "./contract.js";

export const SCOPE_NAME = "promptstamp";

export interface InstallOptions {
  /** Where the fetch and scope spans go; default the global provider. */
  tracerProvider?: TracerProvider;
  /** Also emit each fetch record as a log record (e.g. an @opentelemetry/sdk-logs LoggerProvider). */
  loggerProvider?: LoggerProviderLike;
  /** A LangfuseClient (@langfuse/client); default one built on first use from LANGFUSE_*. */
  langfuse?: LangfuseLike;
  /** Serve a copy Langfuse returned less than this long ago without a request (default 60). */
  cacheTtlSeconds?: number;
  /** After a failed fetch, serve the last known good copy at most this old (default 300). */
  maxStaleSeconds?: number;
  /** Timeout of one prompt request (default 5000; @langfuse/client's own default is 60 s). */
  fetchTimeoutMs?: number;
  /** @langfuse/client's HTTP retries for 408/429/5xx (default 0). */
  maxRetries?: number;
}

const runtime = {
  tracerProvider: undefined as TracerProvider | undefined,
  emit: undefined as Emit | undefined,
  fetcher: new Fetcher({
    cacheTtlSeconds: DEFAULT_CACHE_TTL_SECONDS,
    maxStaleSeconds: DEFAULT_MAX_STALE_SECONDS,
    fetchTimeoutMs: DEFAULT_FETCH_TIMEOUT_MS,
    maxRetries: 0,
  }),
  withProcessor: new WeakSet<object>(),
  warned: new Set<string>(),
};

function warnOnce(code: string, message: string): void {
  if (runtime.warned.has(code)) return;
  runtime.warned.add(code);
  process.emitWarning(message, { type: "PromptstampWarning", code });
}

/** Add PromptSpanProcessor to a provider that still takes processors (OpenTelemetry JS 1.x's
 * `addSpanProcessor`; 2.x providers take them only in their constructor). */
function addProcessor(provider: TracerProvider): void {
  const delegate = (provider as { getDelegate?: () => TracerProvider }).getDelegate?.() ?? provider;
  const add = (delegate as { addSpanProcessor?: (p: PromptSpanProcessor) => void }).addSpanProcessor;
  if (typeof add !== "function" || runtime.withProcessor.has(delegate)) return;
  add.call(delegate, new PromptSpanProcessor());
  runtime.withProcessor.add(delegate);
}

/**
 * Wire promptstamp into the app's OpenTelemetry set-up; call once at start. Idempotent: an
 * option left out keeps its current value. With OpenTelemetry JS 2.x, also pass
 * `new PromptSpanProcessor()` in the provider's `spanProcessors` (the first withPrompt() warns if
 * its fetch span did not go through one).
 */
export function install(options: InstallOptions = {}): void {
  const s = runtime.fetcher.settings;
  if (options.cacheTtlSeconds !== undefined) s.cacheTtlSeconds = checkSeconds("cacheTtlSeconds", options.cacheTtlSeconds);
  if (options.maxStaleSeconds !== undefined) s.maxStaleSeconds = checkSeconds("maxStaleSeconds", options.maxStaleSeconds);
  if (options.fetchTimeoutMs !== undefined) {
    const ms = checkSeconds("fetchTimeoutMs", options.fetchTimeoutMs);
    if (ms <= 0) throw new RangeError("fetchTimeoutMs must be > 0");
    s.fetchTimeoutMs = ms;
  }
  if (options.maxRetries !== undefined) {
    if (!Number.isInteger(options.maxRetries) || options.maxRetries < 0) throw new RangeError("maxRetries must be an integer >= 0");
    s.maxRetries = options.maxRetries;
  }
  if (options.tracerProvider !== undefined) runtime.tracerProvider = options.tracerProvider;
  addProcessor(runtime.tracerProvider ?? trace.getTracerProvider());
  if (options.loggerProvider !== undefined) runtime.emit = loggerEmit(options.loggerProvider, SCOPE_NAME, VERSION);
  if (options.langfuse !== undefined) runtime.fetcher.setClient(options.langfuse);
}

/** Forget every cached prompt and installed option (for tests). */
export function reset(): void {
  runtime.tracerProvider = undefined;
  runtime.emit = undefined;
  runtime.fetcher.setClient(undefined);
  Object.assign(runtime.fetcher.settings, {
    cacheTtlSeconds: DEFAULT_CACHE_TTL_SECONDS,
    maxStaleSeconds: DEFAULT_MAX_STALE_SECONDS,
    fetchTimeoutMs: DEFAULT_FETCH_TIMEOUT_MS,
    maxRetries: 0,
  });
  runtime.warned.clear();
}

/** A prompt handed out by withPrompt(): one version, and where it came from. Read-only. */
abstract class PromptBase {
  /** @internal */
  constructor(
    /** The prompt name (`app.prompt.key`). */
    readonly name: string,
    /** The label it was fetched by (`app.prompt.label`). */
    readonly label: string,
    protected readonly resolution: Resolution,
  ) {}

  /** The Langfuse version handed out; undefined for a code-embedded fallback. */
  get version(): number | undefined {
    return this.resolution.template.version;
  }

  /** "langfuse" (Langfuse, or its copy younger than the TTL), "cache" (last known good after a
   * failed fetch) or "fallback" (the app's code-embedded prompt). */
  get source(): c.Source {
    return this.resolution.source;
  }

  /** Class name of the fetch error behind a "cache" or "fallback" hand-out. */
  get errorType(): string | undefined {
    return this.resolution.errorType;
  }

  /** A guarded rollout's side: "new" (handed the rollout's new version, under this label),
   * "old" (a running rollout applies to this label's version and this subject keeps it, or the
   * new version could not be fetched), undefined (no rollout applies). */
  get rollout(): RolloutSide | undefined {
    return this.resolution.rollout;
  }

  get type(): PromptType {
    return this.resolution.template.type;
  }

  /** The version's Langfuse config (model, temperature, ...): a copy, {} if none. */
  get config(): Record<string, any> {
    return structuredClone(this.resolution.template.config) as Record<string, any>;
  }

  /** The variables (and chat placeholders) compile() needs. */
  get variables(): readonly string[] {
    return this.resolution.template.variables;
  }
}

export class ChatPrompt extends PromptBase {
  /** The uncompiled messages, in Langfuse's shape (a copy). */
  get prompt(): ChatPart[] {
    return this.resolution.template.raw() as ChatPart[];
  }

  /** Fill the template; throws PromptVariableError naming every missing variable. A chat
   * placeholder takes an array of messages, inserted as given. */
  compile(variables: Variables = {}): ChatMessage[] {
    return this.resolution.template.compileChat(variables);
  }
}

export class TextPrompt extends PromptBase {
  /** The uncompiled template. */
  get prompt(): string {
    return this.resolution.template.raw() as string;
  }

  /** Fill the template; throws PromptVariableError naming every missing variable. */
  compile(variables: Variables = {}): string {
    return this.resolution.template.compileText(variables);
  }
}

/** An A/B split: the label is `labelFor(id, weights, salt)`; `id` is also the rollout subject. */
export interface Subject {
  id: string;
  weights: Readonly<Record<string, number>> | ReadonlyMap<string, number>;
  salt?: string;
}

interface CommonOptions {
  /** The label to fetch (default "production"). */
  label?: string;
  /**
   * Who a guarded rollout splits on: a user or conversation id, so that one user stays on one
   * version for the whole rollout (default, or "": the trace id). Only hashed: never put into
   * baggage, spans or logs. An object `{ id, weights, salt? }` also picks the label by A/B split
   * (labelFor), not together with `label`; its `id` is then the subject.
   */
  subject?: string | Subject;
  cacheTtlSeconds?: number;
  maxStaleSeconds?: number;
}

export interface ChatOptions extends CommonOptions {
  type?: "chat";
  /** An explicit code-embedded prompt, used only when Langfuse cannot be reached and no cached
   * copy is young enough: `source: "fallback"`, no version, never linked. Never for a 404. */
  fallback?: readonly { role: string; content: string }[];
}

export interface TextOptions extends CommonOptions {
  type: "text";
  fallback?: string;
}

function tracer(): ReturnType<TracerProvider["getTracer"]> {
  return (runtime.tracerProvider ?? trace.getTracerProvider()).getTracer(SCOPE_NAME, VERSION);
}

/**
 * Fetch prompt `name` by label and run `fn` with it in scope: every span started inside (the
 * model call's, any downstream service's) carries `app.prompt.key` and `app.prompt.label`.
 * Resolves to what `fn` returns.
 *
 * Rejects with PromptNotFoundError (404: fail closed; also a chat/text type mismatch) or
 * PromptUnavailableError (fetch failed, nothing usable cached, no fallback) before `fn` runs.
 * Throws at once (synchronously) for a name or label that could not travel in baggage
 * (RangeError) or bad options (TypeError, RangeError).
 */
export function withPrompt<T>(name: string, options: TextOptions, fn: (p: TextPrompt) => T | Promise<T>): Promise<T>;
export function withPrompt<T>(name: string, options: ChatOptions, fn: (p: ChatPrompt) => T | Promise<T>): Promise<T>;
export function withPrompt<T>(name: string, fn: (p: ChatPrompt) => T | Promise<T>): Promise<T>;
export function withPrompt<T>(
  name: string,
  optionsOrFn: ChatOptions | TextOptions | ((p: ChatPrompt) => T | Promise<T>),
  maybeFn?: ((p: ChatPrompt) => T | Promise<T>) | ((p: TextPrompt) => T | Promise<T>),
): Promise<T> {
  // Checked at once, before anything is fetched (a programming error, not a fetch outcome).
  const options: ChatOptions | TextOptions = typeof optionsOrFn === "function" ? {} : optionsOrFn;
  const fn = (typeof optionsOrFn === "function" ? optionsOrFn : maybeFn) as (p: PromptBase) => T | Promise<T>;
  if (typeof fn !== "function") throw new TypeError("withPrompt(name, options, fn): fn must be a function");
  const key = validateKey(name);
  const { label, subject } = labelAndSubject(options);
  const type: PromptType = options.type ?? "chat";
  if (type !== "chat" && type !== "text") throw new TypeError(`type must be "chat" or "text", got ${String(type)}`);
  const cacheTtlSeconds = options.cacheTtlSeconds === undefined ? undefined : checkSeconds("cacheTtlSeconds", options.cacheTtlSeconds);
  const maxStaleSeconds = options.maxStaleSeconds === undefined ? undefined : checkSeconds("maxStaleSeconds", options.maxStaleSeconds);
  const fallback: Template | undefined = options.fallback === undefined ? undefined : fromFallback(key, type, options.fallback);
  return run(key, label, type, { cacheTtlSeconds, maxStaleSeconds, fallback, subject }, fn);
}

/** The label to fetch and the rollout subject ("" for the trace id), checked. */
function labelAndSubject(options: CommonOptions): { label: string; subject: string } {
  const subject: unknown = options.subject;
  if (subject === undefined || typeof subject === "string") {
    if (subject !== undefined && !subject.isWellFormed()) {
      throw new TypeError("subject contains a lone surrogate (not valid UTF-8)");
    }
    return { label: validateLabel(options.label ?? "production"), subject: subject ?? "" };
  }
  if (subject === null || typeof subject !== "object") {
    throw new TypeError(`subject must be a string or { id, weights, salt? }, not ${subject === null ? "null" : typeof subject}`);
  }
  if (options.label !== undefined) throw new TypeError("withPrompt(): give either label or subject, not both");
  const split = subject as Subject;
  return { label: validateLabel(labelFor(split.id, split.weights, split.salt ?? "")), subject: split.id };
}

/** The trace id (32 hex digits) of the fetch span: the rollout subject when the app gives none.
 * With no valid trace id (no SDK tracer provider) each scope is a subject of its own. */
function traceSubject(span: Span): string {
  const spanContext = span.spanContext();
  return trace.isSpanContextValid(spanContext) ? spanContext.traceId : randomBytes(16).toString("hex");
}

async function run<T>(
  key: string,
  label: string,
  type: PromptType,
  options: {
    cacheTtlSeconds: number | undefined;
    maxStaleSeconds: number | undefined;
    fallback: Template | undefined;
    subject: string;
  },
  fn: (p: PromptBase) => T | Promise<T>,
): Promise<T> {
  const t = tracer();
  let parent: Context = context.active();
  let scopeSpan: ReturnType<typeof t.startSpan> | undefined;
  const active = trace.getSpan(parent);
  if (!active || !trace.isSpanContextValid(active.spanContext())) {
    // No active span: a span for the scope, so the fetch span and the scope's spans share a trace.
    scopeSpan = t.startSpan(c.SCOPE_SPAN_NAME, { attributes: { [c.PROMPT_KEY]: key, [c.PROMPT_LABEL]: label } }, parent);
    parent = trace.setSpan(parent, scopeSpan);
  }
  try {
    const fetching = begin(t, parent, key, label);
    checkSetUp(fetching.span);
    // The fetch span is in the trace of the span active at entry, or of the scope span.
    const subject = options.subject || traceSubject(fetching.span);
    let resolution: Resolution;
    try {
      resolution = await context.with(fetching.context, () =>
        runtime.fetcher.resolve(key, label, type, { ...options, subject }),
      );
    } catch (error) {
      failed(fetching, (error as { errorType?: string }).errorType ?? errorTypeOf(error));
      throw error;
    }
    try {
      handedOut(fetching, key, label, resolution, runtime.emit);
    } catch (error) {
      warnOnce("PROMPTSTAMP_RECORD_FAILED", `promptstamp: could not record the prompt fetch: ${String(error)}`);
    }
    const handle = type === "text" ? new TextPrompt(key, label, resolution) : new ChatPrompt(key, label, resolution);
    const bag = (propagation.getBaggage(parent) ?? propagation.createBaggage())
      .setEntry(c.PROMPT_KEY, { value: key })
      .setEntry(c.PROMPT_LABEL, { value: label });
    const scope = propagation.setBaggage(parent, bag);
    return await context.with(scope, () => {
      if (context.active() !== scope) warnOnce("PROMPTSTAMP_NO_CONTEXT_MANAGER", NO_CONTEXT_MANAGER);
      return fn(handle);
    });
  } catch (error) {
    if (scopeSpan) {
      if (error instanceof Error) scopeSpan.recordException(error);
      scopeSpan.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? `${error.name}: ${error.message}` : String(error) });
    }
    throw error;
  } finally {
    scopeSpan?.end();
  }
}

const NO_CONTEXT_MANAGER =
  "promptstamp: no OpenTelemetry ContextManager is registered, so spans started inside withPrompt() " +
  "do not see its baggage (no app.prompt.* on them) and are not children of its spans. Register one: " +
  "NodeTracerProvider.register(), @opentelemetry/sdk-node, or context.setGlobalContextManager(" +
  "new AsyncLocalStorageContextManager().enable()) from @opentelemetry/context-async-hooks.";

const NO_PROCESSOR =
  "promptstamp: the tracer provider did not run a PromptSpanProcessor for promptstamp's fetch span, so " +
  "spans will not carry app.prompt.key / app.prompt.label and the relay cannot link generations. Pass " +
  "`new PromptSpanProcessor()` in the provider's spanProcessors (OpenTelemetry JS 2.x), before the exporting processor.";

const NO_DELIVERY =
  "promptstamp: no SDK TracerProvider is registered (the fetch span does not record) and install() got no " +
  "loggerProvider, so the version the app was handed reaches nobody. Register a tracer provider exporting " +
  "OTLP to the relay before the first withPrompt(), or pass it: install({ tracerProvider }).";

function checkSetUp(fetchSpan: { isRecording(): boolean }): void {
  if (!fetchSpan.isRecording()) {
    if (!runtime.emit) warnOnce("PROMPTSTAMP_NO_DELIVERY", NO_DELIVERY);
    return;
  }
  if (seen.span !== fetchSpan) warnOnce("PROMPTSTAMP_NO_SPAN_PROCESSOR", NO_PROCESSOR);
}
