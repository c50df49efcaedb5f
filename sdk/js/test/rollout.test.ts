/**
 * Following a guarded rollout's plan, with the real @langfuse/client against a loopback
 * Langfuse: the split against the vectors Python wrote (tests/vectors/rollout_side.json), the
 * plan's checks (parse_plan's), its lookup (one request per TTL, also for "no plan"), the
 * hand-out (share, stickiness, growth, states, a label moved by hand), every failure failing
 * safe to the label's version with one warning, and the fetch record carrying the version
 * actually handed out under the asked label, never the subject.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, beforeEach, test } from "node:test";

import { trace } from "@opentelemetry/api";
import {
  type LangfuseLike,
  RolloutPlan,
  contract as c,
  install,
  parsePlan,
  planPromptName,
  subjectPoint,
  withPrompt,
} from "@promptstamp/sdk";

import { blake2b } from "../dist/blake2b.js";
import { setClock } from "../dist/fetch.js";
import { FakeLangfuse, type PromptRequest } from "./support/fake-langfuse.js";
import { type Pipelines, pipelines } from "./support/otel.js";

const NAME = "order-status-answer";
const LABEL = "production";
const PLAN = planPromptName(NAME, LABEL);
const CHAT = [{ role: "user", content: "Question: {{query}}" }];
const TTL = 60;
const SALT = "r-test-7";

let clock = 1000;
setClock(() => clock);
const server = await new FakeLangfuse().start();
after(() => server.stop());
const { LangfuseClient } = await import("@langfuse/client");
const warnings: { code?: string; message: string }[] = [];
process.on("warning", (w: Error & { code?: string }) => warnings.push({ code: w.code, message: w.message }));
let otel: Pipelines;
let lf: InstanceType<typeof LangfuseClient>;

/** Let process warnings (delivered on a later tick) arrive. */
const settle = () => new Promise((r) => setImmediate(r));
const codes = async () => {
  await settle();
  return warnings.map((w) => w.code);
};

beforeEach(async () => {
  await settle();
  otel = pipelines();
  warnings.length = 0;
  server.prompts.length = 0;
  server.requests.length = 0;
  server.fail(undefined);
  server.delayMs = 0;
  server.create(NAME, CHAT, [LABEL], { model: "gpt-4o-mini" }); // v1: the label's
  server.create(NAME, CHAT, [], { model: "gpt-4o" }); // v2: the rollout's new version
  lf = new LangfuseClient({ publicKey: "pk", secretKey: "sk", baseUrl: server.baseUrl });
  install({ tracerProvider: otel.provider, loggerProvider: otel.loggerProvider, langfuse: lf, cacheTtlSeconds: TTL, fetchTimeoutMs: 500 });
});

type Config = Record<string, unknown>;

function planConfig(overrides: Config = {}): Config {
  return {
    format: "promptstamp.rollout/1",
    prompt: NAME,
    label: LABEL,
    from_version: 1,
    to_version: 2,
    state: "running",
    share_percent: 25,
    salt: SALT,
    guards: { error_rate: 0.02 }, // the controller's part: ignored by apps
    ...overrides,
  };
}

/** A new version of the plan prompt, labelled active (as the controller writes it). */
function writePlan(overrides: Config = {}): void {
  server.create(PLAN, "rollout plan", ["active"], planConfig(overrides));
}

function running(overrides: Partial<{ share: number; salt: string; from: number; to: number }> = {}): RolloutPlan {
  return new RolloutPlan(NAME, LABEL, overrides.from ?? 1, overrides.to ?? 2, "running", overrides.share ?? 25, overrides.salt ?? SALT, 1);
}

const handOut = (subject?: string) =>
  withPrompt(NAME, subject === undefined ? { label: LABEL } : { label: LABEL, subject }, (p) => ({
    version: p.version,
    label: p.label,
    source: p.source,
    rollout: p.rollout,
    model: p.config.model as string,
  }));

const subjects = (n: number) => Array.from({ length: n }, (_, i) => `user-${i}`);

async function versions(ids: string[]): Promise<Map<string, number | undefined>> {
  const out = new Map<string, number | undefined>();
  for (const id of ids) out.set(id, (await handOut(id)).version);
  return out;
}

/** Binomial 99.9 % two-sided bound on the count of successes. */
function within999(count: number, n: number, p: number): boolean {
  return Math.abs(count - n * p) <= 3.291 * Math.sqrt(n * p * (1 - p));
}

const isPlan = (r: PromptRequest) => r.name === PLAN;
const isVersion = (r: PromptRequest) => r.version !== null;

// -- the split ------------------------------------------------------------------------------

interface SideCase {
  subject: string;
  salt: string;
  share_percent: number;
  digest: string;
  point: number;
  new_side: boolean;
}

const vectors = JSON.parse(
  readFileSync(new URL("../../../tests/vectors/rollout_side.json", import.meta.url), "utf-8"),
) as { cases: SideCase[] };

test("the side equals Python's RolloutPlan.new_side for every vector (digest, point, comparison)", () => {
  assert.ok(vectors.cases.length >= 300, `${vectors.cases.length} cases`);
  assert.ok(vectors.cases.some((v) => v.new_side) && vectors.cases.some((v) => !v.new_side));
  assert.ok(vectors.cases.some((v) => /^[0-9a-f]{32}$/.test(v.subject)), "trace ids among the subjects");
  for (const v of vectors.cases) {
    const what = JSON.stringify([v.subject, v.salt, v.share_percent]);
    const s = Buffer.from(v.salt, "utf-8");
    const material = Buffer.concat([Buffer.from(`${s.length}:`), s, Buffer.from(v.subject, "utf-8")]);
    assert.equal(Buffer.from(blake2b(material, 8)).toString("hex"), v.digest, what);
    assert.equal(subjectPoint(v.subject, v.salt), v.point, what);
    const plan = new RolloutPlan("p", "production", 1, 2, "running", v.share_percent, v.salt, 1);
    assert.equal(plan.newSide(v.subject), v.new_side, what);
  }
});

test("parsePlan makes parse_plan's checks", () => {
  const parse = (config: unknown) => parsePlan(config, { name: NAME, label: LABEL, planVersion: 4 });
  const [plan, why] = parse(planConfig({ share_percent: 12.5 }));
  assert.equal(why, "");
  assert.deepEqual({ ...plan }, { prompt: NAME, label: LABEL, fromVersion: 1, toVersion: 2, state: "running", sharePercent: 12.5, salt: SALT, planVersion: 4 });
  assert.ok(plan?.appliesTo(1) && !plan.appliesTo(2) && !plan.appliesTo(undefined));
  const broken: [unknown, RegExp][] = [
    [null, /config is null, not an object/],
    [["x"], /config is array/],
    [planConfig({ format: "promptstamp.rollout/2" }), /format is "promptstamp.rollout\/2"/],
    [planConfig({ prompt: "other" }), /prompt is "other", not "order-status-answer"/],
    [planConfig({ label: "staging" }), /label is "staging"/],
    [planConfig({ from_version: 0 }), /from_version must be a positive integer, got 0/],
    [planConfig({ to_version: "2" }), /to_version must be a positive integer, got "2"/],
    [planConfig({ to_version: 2.5 }), /to_version must be a positive integer/],
    [planConfig({ from_version: true }), /from_version must be a positive integer, got true/],
    [planConfig({ state: "paused" }), /state is "paused", not one of running, breached, aborted, succeeded/],
    [planConfig({ share_percent: 101 }), /share_percent must be a number from 0 to 100, got 101/],
    [planConfig({ share_percent: -1 }), /share_percent must be a number from 0 to 100/],
    [planConfig({ share_percent: "25" }), /share_percent must be a number from 0 to 100/],
    [planConfig({ share_percent: false }), /share_percent must be a number from 0 to 100/],
    [planConfig({ salt: "" }), /salt must be a non-empty string/],
    [planConfig({ salt: undefined }), /salt must be a non-empty string, got missing/],
  ];
  for (const [config, expected] of broken) {
    const [none, reason] = parse(config);
    assert.equal(none, undefined, JSON.stringify(config));
    assert.match(reason, expected);
  }
  // several faults are all named
  assert.match(parse(planConfig({ prompt: "x", salt: 3 }))[1], /prompt is "x".*; salt must be/);
  // not running, or no share: nobody on the new side; 100: everybody
  assert.equal(new RolloutPlan(NAME, LABEL, 1, 2, "breached", 100, SALT, 1).newSide("u"), false);
  assert.equal(running({ share: 0 }).newSide("u"), false);
  assert.equal(running({ share: 100 }).newSide("u"), true);
});

// -- the lookup -----------------------------------------------------------------------------

test("no plan: the label's version, and one plan request per TTL, not per call", async () => {
  for (const id of subjects(50)) assert.deepEqual(await handOut(id), { version: 1, label: LABEL, source: "langfuse", rollout: undefined, model: "gpt-4o-mini" });
  assert.deepEqual(server.planRequests, [{ name: PLAN, label: "active", version: null }]);
  clock += TTL - 1;
  await handOut("u");
  assert.equal(server.planRequests.length, 1);
  clock += 1;
  await handOut("u");
  await handOut("v");
  assert.equal(server.planRequests.length, 2);
  assert.equal(server.promptRequests.length, 2);
  assert.deepEqual(await codes(), []); // a 404 for the plan is the normal answer
});

test("a running plan at 25 %: the share within a binomial 99.9 % bound, exactly the vectors' side, sticky", async () => {
  writePlan();
  const ids = subjects(2000);
  const first = await versions(ids);
  const plan = running();
  const onNew = ids.filter((id) => first.get(id) === 2);
  assert.ok(within999(onNew.length, 2000, 0.25), `${onNew.length} of 2000 on the new version`);
  for (const id of ids) assert.equal(first.get(id), plan.newSide(id) ? 2 : 1, id);
  // sticky: the same side at once and after the cache expired (the plan read again)
  clock += TTL;
  assert.deepEqual(await versions(ids), first);
  // what is handed out is the version's own content, under the asked label
  assert.deepEqual(await handOut(onNew[0]), { version: 2, label: LABEL, source: "langfuse", rollout: "new", model: "gpt-4o" });
  const old = ids.find((id) => first.get(id) === 1)!;
  assert.deepEqual(await handOut(old), { version: 1, label: LABEL, source: "langfuse", rollout: "old", model: "gpt-4o-mini" });
  // two TTLs: two plan lookups and two fetches of the new version, for 4000+ hand-outs
  assert.equal(server.planRequests.length, 2);
  assert.equal(server.requests.filter(isVersion).length, 2);
  assert.ok(server.requests.filter(isVersion).every((r) => r.version === 2 && r.label === null && r.name === NAME));
  assert.deepEqual(await codes(), []);
});

test("the share grows: nobody moves back, the new side within the bound again (learned within the TTL)", async () => {
  writePlan({ share_percent: 25 });
  const ids = subjects(2000);
  const at25 = await versions(ids);
  writePlan({ share_percent: 50 }); // the controller's next step: a new plan version
  clock += TTL - 1;
  assert.deepEqual(await versions(ids.slice(0, 50)), new Map([...at25].slice(0, 50))); // still cached
  clock += 1;
  const at50 = await versions(ids);
  for (const id of ids) if (at25.get(id) === 2) assert.equal(at50.get(id), 2, `${id} moved back`);
  const count = ids.filter((id) => at50.get(id) === 2).length;
  assert.ok(within999(count, 2000, 0.5), `${count} of 2000 at 50 %`);
  assert.ok(count > ids.filter((id) => at25.get(id) === 2).length);
  writePlan({ share_percent: 100 });
  clock += TTL;
  assert.ok([...(await versions(ids)).values()].every((v) => v === 2));
});

test("succeeded while the cached label still says from_version: the new version for everyone", async () => {
  writePlan({ state: "succeeded", share_percent: 100 });
  clock += TTL;
  for (const id of subjects(50)) assert.equal((await handOut(id)).version, 2);
});

test("breached, aborted: the label's version for everyone, no side", async () => {
  for (const state of ["breached", "aborted"]) {
    writePlan({ state, share_percent: 0 });
    clock += TTL;
    for (const id of subjects(200)) assert.deepEqual(await handOut(id), { version: 1, label: LABEL, source: "langfuse", rollout: undefined, model: "gpt-4o-mini" });
  }
  // a breached plan that still says 100 % hands out nothing new either
  writePlan({ state: "breached", share_percent: 100 });
  clock += TTL;
  assert.equal((await handOut("u")).version, 1);
  assert.equal(server.requests.filter(isVersion).length, 0);
});

test("the label moved away from from_version by hand: the plan is ignored", async () => {
  writePlan({ share_percent: 100 });
  assert.equal((await handOut("u")).version, 2);
  server.create(NAME, CHAT, [LABEL], { model: "gpt-5" }); // v3 takes the label
  clock += TTL;
  for (const id of subjects(100)) assert.deepEqual(await handOut(id), { version: 3, label: LABEL, source: "langfuse", rollout: undefined, model: "gpt-5" });
  // the label put back where the rollout started: the plan applies again
  server.setLabels(NAME, 1, [LABEL]);
  clock += TTL;
  assert.equal((await handOut("u")).version, 2);
});

// -- failing safe ---------------------------------------------------------------------------

test("an unusable plan: the label's version and one warning per plan version", async () => {
  writePlan({ share_percent: 250 });
  for (const id of subjects(100)) assert.deepEqual(await handOut(id), { version: 1, label: LABEL, source: "langfuse", rollout: undefined, model: "gpt-4o-mini" });
  clock += TTL;
  await handOut("u"); // the same plan version read again: no second warning
  assert.deepEqual(await codes(), ["PROMPTSTAMP_ROLLOUT_PLAN_UNUSABLE"]);
  assert.match(warnings[0]!.message, /order-status-answer.*promptstamp-rollout\/production\/order-status-answer version 1: share_percent must be a number from 0 to 100, got 250/);
  writePlan({ format: "something/else" }); // plan version 2, unusable too
  clock += TTL;
  assert.equal((await handOut("u")).version, 1);
  assert.deepEqual(await codes(), ["PROMPTSTAMP_ROLLOUT_PLAN_UNUSABLE", "PROMPTSTAMP_ROLLOUT_PLAN_UNUSABLE"]);
  writePlan({ share_percent: 100 }); // fixed
  clock += TTL;
  assert.equal((await handOut("u")).version, 2);
  assert.equal((await codes()).length, 2);
});

test("the plan lookup fails with no plan known: the label's version, one warning per outage, no retries", async () => {
  writePlan({ share_percent: 100 });
  server.fail(503, Infinity, isPlan);
  for (const id of subjects(20)) assert.deepEqual(await handOut(id), { version: 1, label: LABEL, source: "langfuse", rollout: undefined, model: "gpt-4o-mini" });
  assert.equal(server.planRequests.length, 1, "no retry, and the next attempt waits for the backoff");
  clock += 5; // FAILURE_BACKOFF_SECONDS
  assert.equal((await handOut("u")).version, 1);
  assert.equal(server.planRequests.length, 2);
  assert.deepEqual(await codes(), ["PROMPTSTAMP_ROLLOUT_PLAN_UNAVAILABLE"]); // once for the outage
  assert.match(warnings[0]!.message, /rollout plan of prompt "order-status-answer" \(label "production", promptstamp-rollout\/production\/order-status-answer\): LangfuseAPIError/);
  server.fail(undefined); // the outage ends
  clock += 5;
  assert.equal((await handOut("u")).version, 2);
  server.fail(503, Infinity, isPlan); // a new outage: a new warning
  clock += TTL;
  await handOut("u");
  assert.equal((await codes()).length, 2);
});

test("the plan lookup fails with a plan known: it is followed up to maxStaleSeconds, then the label's version", async () => {
  install({ maxStaleSeconds: 300 });
  writePlan({ share_percent: 100 });
  assert.equal((await handOut("u")).version, 2); // the plan read at t0
  server.fail(503, Infinity, isPlan);
  clock += TTL;
  assert.deepEqual(await handOut("u"), { version: 2, label: LABEL, source: "langfuse", rollout: "new", model: "gpt-4o" });
  clock += 300 - TTL; // the plan Langfuse gave is now exactly 300 s old: still followed
  assert.equal((await handOut("u")).version, 2);
  clock += 1;
  assert.deepEqual(await handOut("u"), { version: 1, label: LABEL, source: "langfuse", rollout: undefined, model: "gpt-4o-mini" });
  assert.deepEqual(await codes(), ["PROMPTSTAMP_ROLLOUT_PLAN_UNAVAILABLE"]);
  assert.match(warnings[0]!.message, /following the last known plan \(version 1, running at 100 %\) until it is 300 s old/);
});

test("Langfuse down: the label and the new version from cache, the plan kept, none of them asked for", async () => {
  writePlan({ share_percent: 100 });
  assert.equal((await handOut("u")).version, 2);
  server.fail(503);
  clock += TTL;
  const requests = server.requests.length;
  assert.deepEqual(await handOut("u"), { version: 2, label: LABEL, source: "cache", rollout: "new", model: "gpt-4o" });
  assert.equal(server.requests.length, requests + 1, "only the label's own fetch");
  assert.deepEqual(await codes(), ["PROMPTSTAMP_ROLLOUT_PLAN_UNAVAILABLE"]);
  assert.match(warnings[0]!.message, /not asked, the prompt's own fetch just failed/);
});

test("the new version is missing: the label's version (old side), one warning, the 404 remembered for the TTL", async () => {
  writePlan({ to_version: 7, share_percent: 100 });
  for (const id of subjects(30)) assert.deepEqual(await handOut(id), { version: 1, label: LABEL, source: "langfuse", rollout: "old", model: "gpt-4o-mini" });
  assert.deepEqual(server.requests.filter(isVersion), [{ name: NAME, label: null, version: 7 }]);
  clock += TTL;
  await handOut("u");
  assert.equal(server.requests.filter(isVersion).length, 2);
  assert.deepEqual(await codes(), ["PROMPTSTAMP_ROLLOUT_VERSION_UNAVAILABLE"]);
  assert.match(warnings[0]!.message, /hands out version 7 to some subjects, but that version cannot be fetched \(NotFoundError.*they get the label's version 1 meanwhile/);
  // it appears: handed out from the next lookup on
  for (let v = 3; v <= 7; v++) server.create(NAME, CHAT, [], { model: `m${v}` });
  clock += TTL;
  assert.deepEqual(await handOut("u"), { version: 7, label: LABEL, source: "langfuse", rollout: "new", model: "m7" });
});

test("the new version cannot be fetched (5xx) and nothing is cached: the label's version and one warning", async () => {
  writePlan({ share_percent: 100 });
  server.fail(503, Infinity, isVersion);
  for (const id of subjects(10)) assert.equal((await handOut(id)).rollout, "old");
  clock += 5;
  assert.equal((await handOut("u")).version, 1);
  assert.deepEqual(await codes(), ["PROMPTSTAMP_ROLLOUT_VERSION_UNAVAILABLE"]);
  server.fail(undefined);
  clock += 5;
  assert.equal((await handOut("u")).version, 2);
});

test("a new version of another type fails safe: the label's version and one warning", async () => {
  server.create(NAME, "a text prompt", [], {}); // v3
  writePlan({ to_version: 3, share_percent: 100 });
  assert.deepEqual(await handOut("u"), { version: 1, label: LABEL, source: "langfuse", rollout: "old", model: "gpt-4o-mini" });
  assert.deepEqual(await codes(), ["PROMPTSTAMP_ROLLOUT_VERSION_UNAVAILABLE"]);
  assert.match(warnings[0]!.message, /PromptTypeMismatch/);
});

test("a fallback hand-out: no rollout applies to it, the plan is not asked for", async () => {
  writePlan({ share_percent: 100 });
  server.fail(503);
  const got = await withPrompt(NAME, { fallback: [{ role: "system", content: "embedded" }] }, (p) => [p.version, p.source, p.rollout]);
  assert.deepEqual(got, [undefined, "fallback", undefined]);
  assert.equal(server.planRequests.length, 0);
});

// -- the subject ----------------------------------------------------------------------------

test("no subject: the trace id — of the active span, or of the scope span opened — and one side per trace", async () => {
  writePlan({ share_percent: 50 });
  const plan = running({ share: 50 });
  const sides = new Set<string | undefined>();
  for (let i = 0; i < 100; i++) {
    await trace.getTracer("app").startActiveSpan("handle_request", async (root) => {
      const traceId = root.spanContext().traceId;
      const a = await handOut();
      const b = await handOut(""); // "" is no subject too
      assert.equal(a.version, plan.newSide(traceId) ? 2 : 1);
      assert.equal(b.version, a.version, "every withPrompt of one trace gets the same side");
      sides.add(a.rollout);
      root.end();
    });
  }
  assert.deepEqual(sides, new Set(["new", "old"]));
  otel.spans.reset();
  for (let i = 0; i < 100; i++) {
    const got = await handOut();
    const scope = otel.byName(c.SCOPE_SPAN_NAME).at(-1)!;
    assert.equal(got.version, plan.newSide(scope.spanContext().traceId) ? 2 : 1);
  }
});

test("with no SDK tracer provider each scope is a subject of its own", async () => {
  writePlan({ share_percent: 50 });
  otel = pipelines();
  trace.disable();
  install({ loggerProvider: otel.loggerProvider, langfuse: lf });
  const seen = new Set<number | undefined>();
  for (let i = 0; i < 64; i++) seen.add((await handOut()).version);
  assert.deepEqual(seen, new Set([1, 2]));
});

test("the fetch record keeps the asked label and carries the version handed out; the subject is only hashed", async () => {
  writePlan({ share_percent: 100 });
  const subject = "user-secret-42@example.org";
  await trace.getTracer("app").startActiveSpan("handle_request", async (root) => {
    await withPrompt(NAME, { label: LABEL, subject }, () => trace.getTracer("app").startSpan("chat").end());
    root.end();
  });
  const expected = { [c.PROMPT_KEY]: NAME, [c.PROMPT_LABEL]: LABEL, [c.FETCH_SOURCE]: "langfuse", [c.PROMPT_VERSION]: 2 };
  const [fetch] = otel.byName(c.FETCH_SPAN_NAME);
  assert.deepEqual(fetch!.attributes, expected); // nothing added to the contract's record
  assert.deepEqual(fetch!.events.map((e) => [e.name, e.attributes]), [[c.FETCH_EVENT_NAME, expected]]);
  const [log] = otel.logs.getFinishedLogRecords();
  assert.deepEqual(log!.attributes, expected);
  assert.deepEqual(otel.byName("chat")[0]!.attributes, { [c.PROMPT_KEY]: NAME, [c.PROMPT_LABEL]: LABEL });
  const everything = JSON.stringify([
    otel.finished().map((s) => [s.name, s.attributes, s.events.map((e) => [e.name, e.attributes])]),
    otel.logs.getFinishedLogRecords().map((l) => [l.body, l.attributes]),
  ]);
  assert.ok(!everything.includes("user-secret"), "the subject appears in no span, event or log record");
  const requested = JSON.stringify(server.requests);
  assert.ok(!requested.includes("user-secret"), "nor in any request to Langfuse");
});

test("subject: a string, an A/B split's id, or refused up front", async () => {
  writePlan({ share_percent: 50 });
  const plan = running({ share: 50 });
  for (const id of subjects(40)) {
    const got = await withPrompt(NAME, { subject: { id, weights: { production: 1 } } }, (p) => [p.label, p.version]);
    assert.deepEqual(got, [LABEL, plan.newSide(id) ? 2 : 1], id);
  }
  assert.throws(() => withPrompt(NAME, { subject: 42 as unknown as string }, () => 0), TypeError);
  assert.throws(() => withPrompt(NAME, { subject: null as unknown as string }, () => 0), TypeError);
  assert.throws(() => withPrompt(NAME, { subject: "lone \ud800" }, () => 0), TypeError);
  assert.throws(() => withPrompt(NAME, { label: LABEL, subject: { id: "u", weights: { production: 1 } } }, () => 0), TypeError);
});

test("a client without the API layer: the plan through prompt.get()", async () => {
  const promptOnly: LangfuseLike = { prompt: lf.prompt as unknown as LangfuseLike["prompt"] };
  install({ langfuse: promptOnly });
  writePlan({ share_percent: 100 });
  assert.equal((await handOut("u")).version, 2);
  assert.deepEqual(server.planRequests, [{ name: PLAN, label: "active", version: null }]);
  server.prompts.splice(server.prompts.findIndex((p) => p.name === PLAN), 1); // the plan is gone: 404
  clock += TTL;
  assert.equal((await handOut("u")).version, 1);
  assert.deepEqual(await codes(), []);
});

test("concurrent scopes share one plan lookup and one fetch of the new version", async () => {
  writePlan({ share_percent: 100 });
  server.delayMs = 30;
  const got = await Promise.all(subjects(20).map((id) => handOut(id)));
  assert.ok(got.every((g) => g.version === 2));
  assert.equal(server.planRequests.length, 1);
  assert.equal(server.requests.filter(isVersion).length, 1);
});
