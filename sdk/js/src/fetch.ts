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
 * A guarded rollout's plan (rollout.ts) is looked up beside each name+label and cached the same
 * way; while one runs, the subjects on its new side are handed `to_version` instead of the
 * label's version, fetched by version and cached per name+version with the same policy (no
 * fallback). Every failure there fails safe to the label's version, with one warning.
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
import { PromptError, PromptNotFoundError, PromptUnavailableError } from "./errors.js";
import {
  type FetchedPlan,
  NEW_SIDE,
  NOT_FRESH,
  OLD_SIDE,
  PLAN_LABEL,
  PlanEntry,
  type RolloutPlan,
  type RolloutSide,
  oneLine,
  planPromptName,
  warn,
} from "./rollout.js";
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
        version?: number;
        type?: "text";
        cacheTtlSeconds?: number;
        maxRetries?: number;
        fetchTimeoutMs?: number;
      },
    ): Promise<{ name: string; version: number; config: unknown; prompt: unknown }>;
  };
  /** LangfuseClient's API client (optional): when present, the rollout plan is looked up with
   * `api.prompts.get()`, which does not log the common "no plan" 404 at error level as
   * `prompt.get()` does on every lookup. */
  api?: {
    prompts?: {
      get?(
        name: string,
        request: { label?: string; version?: number },
        options: { maxRetries?: number; timeoutInSeconds?: number },
      ): PromiseLike<unknown>;
    };
  };
}

export interface Resolution {
  readonly template: Template;
  readonly source: c.Source;
  readonly errorType?: string | undefined;
  /** A running rollout's side: "new" (`template` is its to_version), "old" (the label's version,
   * which the rollout applies to), undefined (no rollout applies). */
  readonly rollout?: RolloutSide | undefined;
}

export interface FetchSettings {
  cacheTtlSeconds: number;
  maxStaleSeconds: number;
  fetchTimeoutMs: number;
  maxRetries: number;
}

/** Cache state of one (name, label), or of one (name, version) a rollout hands out. */
interface Entry {
  good?: { template: Template; at: number } | undefined;
  failedAt?: number | undefined;
  errorType?: string | undefined;
  inFlight?: Promise<unknown> | undefined;
  /** (name, label) entries: the label's rollout plan. */
  plan?: PlanEntry | undefined;
  /** (name, version) entries: "cannot hand out the new version" was warned. */
  warned?: boolean | undefined;
  /** (name, version) entries: when Langfuse last answered 404. */
  missingAt?: number | undefined;
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

export interface ResolveOptions {
  cacheTtlSeconds?: number | undefined;
  maxStaleSeconds?: number | undefined;
  fallback?: Template | undefined;
  /** Who a running rollout splits on (only hashed); "" when no rollout is looked at. */
  subject?: string | undefined;
}

export class Fetcher {
  private readonly entries = new Map<string, Entry>();
  private readonly versions = new Map<string, Entry>();
  private client: LangfuseLike | undefined;
  private building: Promise<LangfuseLike> | undefined;

  constructor(readonly settings: FetchSettings) {}

  setClient(client: LangfuseLike | undefined): void {
    if (client === this.client) return;
    this.client = client;
    this.building = undefined;
    this.clear();
  }

  /** Forget every cached prompt, version and plan. */
  clear(): void {
    this.entries.clear();
    this.versions.clear();
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

  private versionEntry(name: string, version: number): Entry {
    const key = `${name}\u0000${version}`;
    let entry = this.versions.get(key);
    if (!entry) this.versions.set(key, (entry = {}));
    return entry;
  }

  /** A copy Langfuse returned less than the TTL ago, without any I/O; else undefined. (The
   * label's copy alone: a running rollout is followed by resolve().) */
  fresh(name: string, label: string, type: PromptType, ttl = this.settings.cacheTtlSeconds): Resolution | undefined {
    return freshIn(this.entry(name, label), name, label, type, ttl);
  }

  /** Hand out (name, label) by the policy, following a running rollout's plan for `subject`. */
  async resolve(name: string, label: string, type: PromptType, options: ResolveOptions = {}): Promise<Resolution> {
    const ttl = options.cacheTtlSeconds ?? this.settings.cacheTtlSeconds;
    const maxStale = options.maxStaleSeconds ?? this.settings.maxStaleSeconds;
    const entry = this.entry(name, label);
    const base = await this.refresh(entry, name, label, type, ttl, maxStale, options.fallback);
    const version = base.template.version;
    if (version === undefined) return base; // the app's fallback: no rollout applies to it
    const planEntry = (entry.plan ??= new PlanEntry());
    let plan = planEntry.fresh(ttl, now());
    if (plan === NOT_FRESH) {
      plan = await planEntry.lookup(name, label, {
        ttl,
        maxStale,
        backoff: FAILURE_BACKOFF_SECONDS,
        now: () => now(),
        fetch: () => this.fetchPlan(name, label),
        isNotFound: (error) => statusOf(error) === 404,
        errorTypeOf,
        labelError: base.source !== c.SOURCE_LANGFUSE ? (base.errorType ?? "") : undefined,
      });
    }
    if (!plan || !plan.appliesTo(version)) return base;
    if (plan.newSide(options.subject ?? "")) {
      const handed = await this.newVersion(name, label, plan, type, ttl, maxStale, base);
      if (handed) return { ...handed, rollout: NEW_SIDE };
    }
    return { ...base, rollout: OLD_SIDE };
  }

  /** A rollout's new version by the prompt policy (no fallback); undefined when it cannot be
   * handed out (warned once until it can be again). */
  private async newVersion(
    name: string,
    label: string,
    plan: RolloutPlan,
    type: PromptType,
    ttl: number,
    maxStale: number,
    base: Resolution,
  ): Promise<Resolution | undefined> {
    const version = plan.toVersion;
    const entry = this.versionEntry(name, version);
    if (entry.missingAt !== undefined && now() - entry.missingAt < ttl) return undefined; // a 404, remembered for the TTL
    let handed: Resolution;
    try {
      const labelError = base.source !== c.SOURCE_LANGFUSE ? (base.errorType ?? "") : undefined;
      handed = await this.refresh(entry, name, `version ${version}`, type, ttl, maxStale, undefined, version, labelError);
    } catch (error) {
      if (!(error instanceof PromptError)) throw error;
      if (!entry.warned) {
        entry.warned = true;
        const cause = (error as { cause?: unknown }).cause;
        const detail = cause !== undefined ? `: ${oneLine(cause)}` : "";
        warn(
          "PROMPTSTAMP_ROLLOUT_VERSION_UNAVAILABLE",
          `promptstamp: the rollout of prompt ${JSON.stringify(name)} (label ${JSON.stringify(label)}) hands out ` +
            `version ${version} to some subjects, but that version cannot be fetched ` +
            `(${(error as { errorType?: string }).errorType ?? error.name}${detail}): they get the label's version ` +
            `${base.template.version} meanwhile`,
        );
      }
      return undefined;
    }
    if (entry.warned && handed.source === c.SOURCE_LANGFUSE) entry.warned = false;
    return handed;
  }

  /** Fetch (name, label) — or (name, version) — unless a fresh copy is cached, and apply the
   * policy. `labelError`: Langfuse just failed the label's fetch with it; do not ask. */
  private async refresh(
    entry: Entry,
    name: string,
    label: string,
    type: PromptType,
    ttl: number,
    maxStale: number,
    fallback: Template | undefined,
    version?: number,
    labelError?: string,
  ): Promise<Resolution> {
    for (;;) {
      const hit = freshIn(entry, name, label, type, ttl);
      if (hit) return hit;
      if (entry.inFlight) {
        // Another scope is fetching this name+label: wait for it, then decide again.
        await entry.inFlight.catch(() => undefined);
        continue;
      }
      if (labelError !== undefined) return degraded(entry, name, label, type, maxStale, fallback, labelError, undefined);
      if (entry.failedAt !== undefined && now() - entry.failedAt < FAILURE_BACKOFF_SECONDS) {
        return degraded(entry, name, label, type, maxStale, fallback, entry.errorType ?? "", undefined);
      }
      const fetching = this.fetch(name, version === undefined ? { label } : { version });
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
          if (version !== undefined) entry.missingAt = now();
          const notFound = new PromptNotFoundError(name, label, errorType);
          (notFound as { cause?: unknown }).cause = error;
          throw notFound;
        }
        entry.failedAt = now();
        entry.errorType = errorType;
        return degraded(entry, name, label, type, maxStale, fallback, errorType, error);
      } finally {
        entry.inFlight = undefined;
      }
      entry.good = { template, at: now() };
      entry.failedAt = entry.errorType = entry.missingAt = undefined;
      return handOut(template, name, label, type, c.SOURCE_LANGFUSE, undefined);
    }
  }

  private async fetch(name: string, where: { label: string } | { version: number }): Promise<Template> {
    const client = await this.langfuse();
    const fetched = await client.prompt.get(name, {
      ...where,
      cacheTtlSeconds: 0, // never the client's silent stale copy
      maxRetries: this.settings.maxRetries,
      fetchTimeoutMs: this.settings.fetchTimeoutMs,
    });
    return fromLangfuse(fetched);
  }

  /** The `active` version of the plan prompt, through the app's client, no retries; rejects as
   * the client does (no plan is a 404). */
  private async fetchPlan(name: string, label: string): Promise<FetchedPlan> {
    const client = await this.langfuse();
    const planName = planPromptName(name, label);
    const api = client.api?.prompts;
    if (typeof api?.get === "function") {
      // The API client's own fetch: the same request as prompt.get(), without its error-level
      // log line for the 404 that "no rollout" is, once per TTL per prompt and label.
      return (await api.get(
        planName,
        { label: PLAN_LABEL },
        { maxRetries: 0, timeoutInSeconds: this.settings.fetchTimeoutMs / 1000 },
      )) as FetchedPlan;
    }
    return client.prompt.get(planName, {
      label: PLAN_LABEL,
      type: "text",
      cacheTtlSeconds: 0,
      maxRetries: 0,
      fetchTimeoutMs: this.settings.fetchTimeoutMs,
    });
  }
}

function freshIn(entry: Entry, name: string, label: string, type: PromptType, ttl: number): Resolution | undefined {
  const good = entry.good;
  if (!good || now() - good.at >= ttl) return undefined;
  return handOut(good.template, name, label, type, c.SOURCE_LANGFUSE, undefined);
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
