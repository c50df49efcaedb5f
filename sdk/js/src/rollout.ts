/**
 * Following a guarded rollout's plan (Python `promptstamp_contract.rollout_plan` and
 * `promptstamp/_rollout.py`): where the plan lives, what the app reads of it, which side of the
 * split a subject is on, and the plan's cache entry with its lookup policy.
 *
 * The plan is a Langfuse text prompt of its own, `promptstamp-rollout/<label>/<name>`, the plan
 * in force labelled `active`; its `config` says `format`, `prompt`, `label`, `from_version`,
 * `to_version`, `state`, `share_percent`, `salt` (the rest is the relay's controller's,
 * docs/rollouts.md). A subject is on the new side when `subjectPoint(subject, salt) * 100` is
 * below the share: the same BLAKE2b point as labelFor (split.ts), so the same side as Python's
 * `RolloutPlan.new_side` (shared vectors: tests/vectors/rollout_side.json). The subject is only
 * hashed: it never goes into baggage, spans, logs or warnings.
 *
 * PlanEntry caches the answer per prompt name and label for the prompt's TTL — a plan, or "no
 * plan" (a 404, the common case: one request per TTL, not one per call) — and always fails safe
 * to the label's own version: a lookup that fails keeps the last known answer while Langfuse
 * gave it at most `maxStaleSeconds` ago, else no plan, the next attempt waiting
 * FAILURE_BACKOFF_SECONDS, one warning per outage; while the label's own fetch is failing the
 * plan is not asked for (the same Langfuse: one timeout is enough); a plan that does not parse
 * is no plan, one warning per plan version.
 */

import { unitInterval } from "./split.js";

export const PLAN_FORMAT = "promptstamp.rollout/1";
export const PLAN_PREFIX = "promptstamp-rollout/";
/** The label on the plan version in force. */
export const PLAN_LABEL = "active";

export const STATE_RUNNING = "running";
export const STATE_BREACHED = "breached";
export const STATE_ABORTED = "aborted";
export const STATE_SUCCEEDED = "succeeded";
export const STATES: readonly string[] = [STATE_RUNNING, STATE_BREACHED, STATE_ABORTED, STATE_SUCCEEDED];

/** `p.rollout`: handed the rollout's new version, or kept on the label's version while a running
 * rollout applies to it. */
export type RolloutSide = "new" | "old";
export const NEW_SIDE: RolloutSide = "new";
export const OLD_SIDE: RolloutSide = "old";

/** The Langfuse prompt that holds the rollout plan of `name` under `label`. */
export function planPromptName(name: string, label: string): string {
  return `${PLAN_PREFIX}${label}/${name}`;
}

/** A uniform point in [0, 1) for `subject` under `salt`: Python's `subject_point`, bit for bit. */
export function subjectPoint(subject: string, salt: string): number {
  return unitInterval(subject, salt);
}

/** The part of a plan the app acts on. */
export class RolloutPlan {
  constructor(
    readonly prompt: string,
    readonly label: string,
    readonly fromVersion: number,
    readonly toVersion: number,
    readonly state: string,
    readonly sharePercent: number,
    readonly salt: string,
    /** The plan prompt's version this was read from. */
    readonly planVersion: number,
  ) {
    Object.freeze(this);
  }

  get running(): boolean {
    return this.state === STATE_RUNNING;
  }

  /** Whether `subject` gets `toVersion` now: by the share while running; everyone once
   * succeeded (an app whose cached label still says `fromVersion` must not send subjects back
   * to it); no one after a breach or an abort. */
  newSide(subject: string): boolean {
    if (this.state === STATE_SUCCEEDED) return true;
    if (!this.running || this.sharePercent <= 0) return false;
    if (this.sharePercent >= 100) return true;
    return subjectPoint(subject, this.salt) * 100 < this.sharePercent;
  }

  /** Whether the plan acts on a hand-out of the label's `currentVersion`: only while the label
   * still points where the rollout started (a label moved by hand ends the plan's say), and only
   * while running or just succeeded (the label was moved to `toVersion`, which an app's cached
   * copy of the label may not show yet). */
  appliesTo(currentVersion: number | undefined): boolean {
    return (this.running || this.state === STATE_SUCCEEDED) && currentVersion === this.fromVersion;
  }
}

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

function show(value: unknown): string {
  if (value === undefined) return "missing";
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function positiveInt(config: Record<string, unknown>, key: string, errors: string[]): number {
  const value = config[key];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
    errors.push(`${key} must be a positive integer, got ${show(value)}`);
    return 0;
  }
  return value;
}

/** The plan in a plan prompt's `config`, checked as Python's `parse_plan` checks it;
 * `[undefined, why]` when it is not usable. */
export function parsePlan(
  config: unknown,
  { name, label, planVersion }: { name: string; label: string; planVersion: number },
): [RolloutPlan | undefined, string] {
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    return [undefined, `config is ${typeName(config)}, not an object`];
  }
  const c = config as Record<string, unknown>;
  if (c.format !== PLAN_FORMAT) return [undefined, `format is ${show(c.format)}, not ${show(PLAN_FORMAT)}`];
  const errors: string[] = [];
  if (c.prompt !== name) errors.push(`prompt is ${show(c.prompt)}, not ${show(name)}`);
  if (c.label !== label) errors.push(`label is ${show(c.label)}, not ${show(label)}`);
  const fromVersion = positiveInt(c, "from_version", errors);
  const toVersion = positiveInt(c, "to_version", errors);
  const state = c.state;
  if (typeof state !== "string" || !STATES.includes(state)) {
    errors.push(`state is ${show(state)}, not one of ${STATES.join(", ")}`);
  }
  let share = c.share_percent;
  if (typeof share !== "number" || !Number.isFinite(share) || !(share >= 0 && share <= 100)) {
    errors.push(`share_percent must be a number from 0 to 100, got ${show(share)}`);
    share = 0;
  }
  const salt = c.salt;
  if (typeof salt !== "string" || !salt) errors.push(`salt must be a non-empty string, got ${show(salt)}`);
  if (errors.length) return [undefined, errors.join("; ")];
  return [new RolloutPlan(name, label, fromVersion, toVersion, state as string, share as number, salt as string, planVersion), ""];
}

/** What a plan lookup returns of the plan prompt (a prompt client, or the API's prompt). */
export interface FetchedPlan {
  version?: unknown;
  config?: unknown;
}

/** The cached answer is missing or older than the TTL: a lookup is needed. */
export const NOT_FRESH: unique symbol = Symbol("NOT_FRESH");
export type NotFresh = typeof NOT_FRESH;

/** An error's message on one line, at most 200 characters (the client's carry the body). */
export function oneLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/\s+/g, " ").trim().slice(0, 200);
}

export function warn(code: string, message: string): void {
  process.emitWarning(message, { type: "PromptstampWarning", code });
}

export interface LookupOptions {
  ttl: number;
  maxStale: number;
  backoff: number;
  now: () => number;
  fetch: () => Promise<FetchedPlan>;
  isNotFound: (error: unknown) => boolean;
  errorTypeOf: (error: unknown) => string;
  /** The label's own fetch just failed with this: Langfuse is not asked. */
  labelError: string | undefined;
}

/** The plan of one (name, label) as last learned, and the state of its lookups. */
export class PlanEntry {
  /** The last answer Langfuse gave (a plan, or undefined for no plan / an unusable plan), and when. */
  known: { plan: RolloutPlan | undefined; at: number } | undefined;
  failedAt: number | undefined;
  outageWarned = false;
  readonly badVersionsWarned = new Set<number>();
  private inFlight: Promise<RolloutPlan | undefined> | undefined;

  /** The plan (or undefined) Langfuse gave less than `ttl` ago, without I/O; else NOT_FRESH. */
  fresh(ttl: number, now: number): RolloutPlan | undefined | NotFresh {
    const known = this.known;
    if (!known || now - known.at >= ttl) return NOT_FRESH;
    return known.plan;
  }

  /** The plan in force, looked up when the cached answer is older than the TTL. Never rejects
   * for a lookup that fails: the last known answer up to `maxStale`, else no plan. One lookup
   * per entry at a time: scopes arriving meanwhile share its answer. */
  lookup(name: string, label: string, o: LookupOptions): Promise<RolloutPlan | undefined> {
    const hit = this.fresh(o.ttl, o.now());
    if (hit !== NOT_FRESH) return Promise.resolve(hit);
    this.inFlight ??= this.look(name, label, o).finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  private async look(name: string, label: string, o: LookupOptions): Promise<RolloutPlan | undefined> {
    if (this.failedAt !== undefined && o.now() - this.failedAt < o.backoff) return this.lastKnown(o.maxStale, o.now());
    if (o.labelError !== undefined) {
      return this.failed(name, label, o.labelError, "not asked, the prompt's own fetch just failed with it", o.maxStale, o.now());
    }
    let plan: RolloutPlan | undefined;
    try {
      plan = this.parsed(await o.fetch(), name, label);
    } catch (error) {
      if (!o.isNotFound(error)) {
        return this.failed(name, label, o.errorTypeOf(error), oneLine(error), o.maxStale, o.now());
      }
      plan = undefined; // no plan prompt, or no version labelled active: no rollout
    }
    this.known = { plan, at: o.now() };
    this.failedAt = undefined;
    this.outageWarned = false;
    return plan;
  }

  private parsed(fetched: FetchedPlan, name: string, label: string): RolloutPlan | undefined {
    const version = fetched?.version;
    const planVersion = typeof version === "number" && Number.isSafeInteger(version) ? version : 0;
    const [plan, why] = parsePlan(fetched?.config, { name, label, planVersion });
    if (!plan && !this.badVersionsWarned.has(planVersion)) {
      this.badVersionsWarned.add(planVersion);
      warn(
        "PROMPTSTAMP_ROLLOUT_PLAN_UNUSABLE",
        `promptstamp: the rollout plan of prompt ${JSON.stringify(name)} (label ${JSON.stringify(label)}) cannot be ` +
          `used, so the label's own version is handed out: ${planPromptName(name, label)} version ${planVersion}: ${why}`,
      );
    }
    return plan;
  }

  private lastKnown(maxStale: number, now: number): RolloutPlan | undefined {
    const known = this.known;
    if (!known || now - known.at > maxStale) return undefined;
    return known.plan;
  }

  private failed(name: string, label: string, errorType: string, detail: string, maxStale: number, now: number): RolloutPlan | undefined {
    this.failedAt = now;
    const plan = this.lastKnown(maxStale, now);
    // No rollout at the last lookup, recent enough: the app goes on exactly as it was, and the
    // prompt's own failure is said where it happens. Nothing to add (yet).
    if (!plan && this.known && now - this.known.at <= maxStale) return plan;
    if (!this.outageWarned) {
      this.outageWarned = true;
      let keeping: string;
      if (plan) {
        keeping =
          `following the last known plan (version ${plan.planVersion}, ${plan.state} at ${plan.sharePercent} %) ` +
          `until it is ${maxStale} s old, then the label's own version`;
      } else {
        keeping = "the label's own version meanwhile";
      }
      warn(
        "PROMPTSTAMP_ROLLOUT_PLAN_UNAVAILABLE",
        `promptstamp: could not look up the rollout plan of prompt ${JSON.stringify(name)} (label ` +
          `${JSON.stringify(label)}, ${planPromptName(name, label)}): ${errorType}: ${detail}; ${keeping}`,
      );
    }
    return plan;
  }
}
