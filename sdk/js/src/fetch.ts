/**
 * Fetching prompts through @langfuse/client's `prompt.get()`, and the runtime fallback policy
 * (Python `_fetch.py`, docs/fetch-policy.md).
 *
 * promptstamp keeps its own cache per (name, label) and always calls `prompt.get()` with
 * `cacheTtlSeconds: 0` (@langfuse/client then always makes the request and throws on failure;
 * with a TTL it would return an expired copy and refresh in the background, saying nothing), so
 * `source` can be trusted: `langfuse` (fresh, or younger than the TTL), `cache` (last known good
 * after a failed fetch, at most `maxStaleSeconds` old), `fallback` (the app's code-embedded
 * prompt). A 404 fails closed. After a failed fetch the next one for that name+label waits
 * FAILURE_BACKOFF_SECONDS; one fetch per name+label is in flight at a time.
 *
 * Facts about @langfuse/client 5.x this relies on (read from its source, tested in
 * test/fetch.test.ts against a loopback server): a 404 throws `NotFoundError` (`statusCode`
 * 404); a 5xx throws `LangfuseAPIError` with that `statusCode`; a timeout and a connection
 * error throw `LangfuseAPIError` without a status (on Node the client's timeout abort reaches it
 * as the string "timeout", not an AbortError, so `LangfuseAPITimeoutError` is never thrown);
 * `maxRetries` is the HTTP layer's retry count for 408/429/5xx (default 2; 0 here);
 * `fetchTimeoutMs` unset (or 0) means the API client's 60 s, so promptstamp defaults it to 5 s.
 */

import * as c from "./contract.js";
import { PromptNotFoundError, PromptUnavailableError } from "./errors.js";
import { type PromptType, type Template, fromLangfuse } from "./template.js";

export const DEFAULT_CACHE_TTL_SECONDS = 60;
export const DEFAULT_MAX_STALE_SECONDS = 300;
export const DEFAULT_FETCH_TIMEOUT_MS = 5000;
export const FAILURE_BACKOFF_SECONDS = 5;
export const RELAY_SERVER_HEADER = "promptstamp-relay";

/** The part of @langfuse/client's LangfuseClient that promptstamp uses. */
export interface LangfuseLike {
  prompt: {
    get(
      name: string,
      options: {
        label?: string;
        cacheTtlSeconds?: number;
        maxRetries?: number;
        fetchTimeoutMs?: number;
      },
    ): Promise<{ name: string; version: number; config: unknown; prompt: unknown }>;
  };
}

export interface Resolution {
  readonly template: Template;
  readonly source: c.Source;
  readonly errorType?: string | undefined;
}

export interface FetchSettings {
  cacheTtlSeconds: number;
  maxStaleSeconds: number;
  fetchTimeoutMs: number;
  maxRetries: number;
}

interface Entry {
  good?: { template: Template; at: number } | undefined;
  failedAt?: number | undefined;
  errorType?: string | undefined;
  inFlight?: Promise<unknown> | undefined;
}

/** Monotonic seconds; tests replace it (`setClock`). */
let now: () => number = () => performance.now() / 1000;

export function setClock(clock: (() => number) | undefined): void {
  now = clock ?? (() => performance.now() / 1000);
}

export function checkSeconds(what: string, value: unknown): number {
  if (typeof value !== "number" || !(value >= 0) || !Number.isFinite(value)) {
    throw new RangeError(`${what} must be a finite number >= 0, got ${String(value)}`);
  }
  return value;
}

/** The class name of an error, as Python's `type(error).__name__` gives it (the JS client's
 * bundled classes are named `_NotFoundError` etc.; the underscore is dropped). */
export function errorTypeOf(error: unknown): string {
  if (error instanceof Error) {
    const ctor = error.constructor?.name;
    const name = ctor && ctor !== "Error" ? ctor : error.name;
    return name.replace(/^_+/, "") || "Error";
  }
  return typeof error;
}

function statusOf(error: unknown): unknown {
  return error !== null && typeof error === "object" ? (error as { statusCode?: unknown }).statusCode : undefined;
}

/** The answer came from a promptstamp relay (its `Server` header): LANGFUSE_BASE_URL points at
 * the relay, which serves OTLP only, never the prompts API. */
function answeredByRelay(error: unknown): boolean {
  const raw = error !== null && typeof error === "object" ? (error as { rawResponse?: unknown }).rawResponse : undefined;
  const headers = raw !== null && typeof raw === "object" ? (raw as { headers?: unknown }).headers : undefined;
  if (headers === null || typeof headers !== "object" || typeof (headers as Headers).get !== "function") return false;
  return ((headers as Headers).get("server") ?? "").startsWith(RELAY_SERVER_HEADER);
}

export class Fetcher {
  private readonly entries = new Map<string, Entry>();
  private client: LangfuseLike | undefined;
  private building: Promise<LangfuseLike> | undefined;

  constructor(readonly settings: FetchSettings) {}

  setClient(client: LangfuseLike | undefined): void {
    if (client === this.client) return;
    this.client = client;
    this.building = undefined;
    this.entries.clear();
  }

  clear(): void {
    this.entries.clear();
  }

  private async langfuse(): Promise<LangfuseLike> {
    if (this.client) return this.client;
    // Built on first use from LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY / LANGFUSE_BASE_URL;
    // imported here so an app that passes its own client never loads the module.
    this.building ??= import("@langfuse/client").then(({ LangfuseClient }) => {
      const client = new LangfuseClient() as unknown as LangfuseLike;
      this.client ??= client;
      return this.client;
    });
    return this.building;
  }

  private entry(name: string, label: string): Entry {
    const key = `${name}\u0000${label}`;
    let entry = this.entries.get(key);
    if (!entry) this.entries.set(key, (entry = {}));
    return entry;
  }

  /** A copy Langfuse returned less than the TTL ago, without any I/O; else undefined. */
  fresh(name: string, label: string, type: PromptType, ttl = this.settings.cacheTtlSeconds): Resolution | undefined {
    const good = this.entry(name, label).good;
    if (!good || now() - good.at >= ttl) return undefined;
    return handOut(good.template, name, label, type, c.SOURCE_LANGFUSE, undefined);
  }

  /** Hand out (name, label) by the policy. */
  async resolve(
    name: string,
    label: string,
    type: PromptType,
    options: { cacheTtlSeconds?: number | undefined; maxStaleSeconds?: number | undefined; fallback?: Template | undefined } = {},
  ): Promise<Resolution> {
    const ttl = options.cacheTtlSeconds ?? this.settings.cacheTtlSeconds;
    const maxStale = options.maxStaleSeconds ?? this.settings.maxStaleSeconds;
    const entry = this.entry(name, label);
    for (;;) {
      const hit = this.fresh(name, label, type, ttl);
      if (hit) return hit;
      if (entry.inFlight) {
        // Another scope is fetching this name+label: wait for it, then decide again.
        await entry.inFlight.catch(() => undefined);
        continue;
      }
      if (entry.failedAt !== undefined && now() - entry.failedAt < FAILURE_BACKOFF_SECONDS) {
        return degraded(entry, name, label, type, maxStale, options.fallback, entry.errorType ?? "", undefined);
      }
      const fetching = this.fetch(name, label);
      entry.inFlight = fetching;
      let template: Template;
      try {
        template = await fetching;
      } catch (error) {
        const errorType = errorTypeOf(error);
        if (answeredByRelay(error)) {
          throw new PromptNotFoundError(
            name,
            label,
            "BaseUrlIsRelay",
            "the Langfuse client's baseUrl (LANGFUSE_BASE_URL) points at a promptstamp relay, which does " +
              "not serve the prompts API: keep it at Langfuse and export spans to the relay",
          );
        }
        if (statusOf(error) === 404) {
          // Fail closed, and forget the copy: the label has moved or gone.
          entry.good = entry.failedAt = entry.errorType = undefined;
          throw new PromptNotFoundError(name, label, errorType);
        }
        entry.failedAt = now();
        entry.errorType = errorType;
        return degraded(entry, name, label, type, maxStale, options.fallback, errorType, error);
      } finally {
        entry.inFlight = undefined;
      }
      entry.good = { template, at: now() };
      entry.failedAt = entry.errorType = undefined;
      return handOut(template, name, label, type, c.SOURCE_LANGFUSE, undefined);
    }
  }

  private async fetch(name: string, label: string): Promise<Template> {
    const client = await this.langfuse();
    const fetched = await client.prompt.get(name, {
      label,
      cacheTtlSeconds: 0, // never the client's silent stale copy
      maxRetries: this.settings.maxRetries,
      fetchTimeoutMs: this.settings.fetchTimeoutMs,
    });
    return fromLangfuse(fetched);
  }
}

function degraded(
  entry: Entry,
  name: string,
  label: string,
  type: PromptType,
  maxStale: number,
  fallback: Template | undefined,
  errorType: string,
  cause: unknown,
): Resolution {
  let staleSeconds: number | undefined;
  const good = entry.good;
  if (good) {
    staleSeconds = now() - good.at;
    if (staleSeconds <= maxStale) return handOut(good.template, name, label, type, c.SOURCE_CACHE, errorType);
  }
  if (fallback) return { template: fallback, source: c.SOURCE_FALLBACK, errorType };
  const error = new PromptUnavailableError(name, label, errorType, staleSeconds);
  if (cause !== undefined) (error as { cause?: unknown }).cause = cause;
  throw error;
}

function handOut(
  template: Template,
  name: string,
  label: string,
  type: PromptType,
  source: c.Source,
  errorType: string | undefined,
): Resolution {
  if (template.type !== type) {
    // Not a fetch failure but a configuration one: fail closed like a missing label.
    throw new PromptNotFoundError(name, label, "PromptTypeMismatch", `it is a ${template.type} prompt, not ${type}`);
  }
  return { template, source, errorType };
}
