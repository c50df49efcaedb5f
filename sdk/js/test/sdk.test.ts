/**
 * withPrompt() with in-memory OpenTelemetry pipelines: the baggage on every span inside
 * (contract §1), the fetch span, its event and the log record (§2), the scope span, nesting,
 * concurrency, failures and the set-up warnings.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, beforeEach, test } from "node:test";

import { context, propagation, trace } from "@opentelemetry/api";
import type { SpanProcessor } from "@opentelemetry/sdk-trace-base";
import {
  type ChatPrompt,
  PromptNotFoundError,
  PromptSpanProcessor,
  type TextPrompt,
  VERSION,
  contract as c,
  install,
  withPrompt,
} from "@promptstamp/sdk";

import { setClock } from "../dist/fetch.js";
import { FakeLangfuse } from "./support/fake-langfuse.js";
import { type Pipelines, pipelines } from "./support/otel.js";

const CHAT = [{ role: "user", content: "Question: {{query}}" }];
const server = await new FakeLangfuse().start();
after(() => server.stop());
let clock = 1000;
setClock(() => clock);
let otel: Pipelines;
const { LangfuseClient } = await import("@langfuse/client");
const warnings: { code?: string; message: string }[] = [];
process.on("warning", (w: Error & { code?: string }) => warnings.push({ code: w.code, message: w.message }));

beforeEach(async () => {
  // process.emitWarning() delivers on a later tick: let an earlier test's warnings arrive first
  await new Promise((r) => setImmediate(r));
  otel = pipelines();
  warnings.length = 0;
  server.prompts.length = 0;
  server.fail(undefined);
  server.create("order-status-answer", CHAT, ["production"], { model: "gpt-4o-mini" });
  server.create("order-status-answer", CHAT, ["production", "prod-b"], { model: "gpt-4o" });
  install({
    tracerProvider: otel.provider,
    loggerProvider: otel.loggerProvider,
    langfuse: new LangfuseClient({ publicKey: "pk", secretKey: "sk", baseUrl: server.baseUrl }),
    cacheTtlSeconds: 0,
    fetchTimeoutMs: 500,
  });
});

const tracer = () => trace.getTracer("app");
const attrs = (name: string) => otel.byName(name).map((s) => s.attributes);
const tick = () => new Promise((r) => setImmediate(r));

test("PromptSpanProcessor is an SDK SpanProcessor (structurally) and VERSION is package.json's", () => {
  const processor: SpanProcessor = new PromptSpanProcessor();
  assert.ok(processor);
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf-8")) as { version: string };
  assert.equal(VERSION, pkg.version);
});

test("every span inside carries app.prompt.key/label, across awaits; none outside", async () => {
  await tracer().startActiveSpan("handle_request", async (root) => {
    const p = await withPrompt("order-status-answer", { label: "production" }, async (p: ChatPrompt) => {
      await tick();
      tracer().startSpan("chat gpt-4o").end();
      await new Promise((r) => setTimeout(r, 5));
      await tracer().startActiveSpan("agent-step", async (s) => {
        tracer().startSpan("tool").end();
        s.end();
      });
      return p;
    });
    tracer().startSpan("after").end();
    root.end();
    assert.equal(p.version, 2);
    assert.equal(p.source, "langfuse");
    assert.deepEqual(p.config, { model: "gpt-4o" });
    assert.deepEqual(p.compile({ query: "where?" }), [{ role: "user", content: "Question: where?" }]);
  });
  for (const name of ["chat gpt-4o", "agent-step", "tool"]) {
    assert.deepEqual(attrs(name), [{ [c.PROMPT_KEY]: "order-status-answer", [c.PROMPT_LABEL]: "production" }], name);
  }
  assert.deepEqual(attrs("after"), [{}]);
  assert.equal(otel.byName(c.SCOPE_SPAN_NAME).length, 0); // a span was active
  assert.deepEqual(warnings, []);
});

test("the fetch span: child of the active span, ended before the scope's spans, one event with an integer version", async () => {
  let rootId = "";
  await tracer().startActiveSpan("handle_request", async (root) => {
    rootId = root.spanContext().spanId;
    await withPrompt("order-status-answer", {}, () => tracer().startSpan("chat").end());
    root.end();
  });
  const [fetch] = otel.byName(c.FETCH_SPAN_NAME);
  const [chat] = otel.byName("chat");
  assert.ok(fetch && chat);
  assert.equal(fetch.parentSpanContext?.spanId, rootId);
  assert.equal(fetch.instrumentationScope.name, "promptstamp");
  const expected = {
    [c.PROMPT_KEY]: "order-status-answer",
    [c.PROMPT_LABEL]: "production",
    [c.FETCH_SOURCE]: "langfuse",
    [c.PROMPT_VERSION]: 2,
  };
  assert.deepEqual(fetch.attributes, expected);
  assert.equal(fetch.events.length, 1);
  assert.equal(fetch.events[0]!.name, c.FETCH_EVENT_NAME);
  assert.deepEqual(fetch.events[0]!.attributes, expected);
  assert.ok(Number.isInteger(fetch.attributes[c.PROMPT_VERSION]));
  assert.deepEqual(fetch.events[0]!.time, fetch.endTime); // the record's time is when the fetch resolved
  const ns = (t: [number, number]) => BigInt(t[0]) * 1_000_000_000n + BigInt(t[1]);
  assert.ok(ns(fetch.endTime) <= ns(chat.startTime), "the fetch span ends before the generation starts");
  assert.equal(otel.byName("handle_request")[0]!.attributes[c.FETCH_SOURCE], "langfuse");

  const [log] = otel.logs.getFinishedLogRecords();
  assert.ok(log);
  assert.equal(log.eventName, c.FETCH_EVENT_NAME);
  assert.deepEqual(log.attributes, expected);
  assert.equal(log.spanContext?.spanId, fetch.spanContext().spanId);
  assert.equal(log.spanContext?.traceId, fetch.spanContext().traceId);
});

test("no active span: a promptstamp.prompt span for the scope's duration, one trace", async () => {
  await withPrompt("order-status-answer", { label: "prod-b" }, async () => {
    await tick();
    tracer().startSpan("chat").end();
  });
  const [scope] = otel.byName(c.SCOPE_SPAN_NAME);
  const [fetch] = otel.byName(c.FETCH_SPAN_NAME);
  const [chat] = otel.byName("chat");
  assert.ok(scope && fetch && chat);
  // the scope span is the span active at fetch time: it also says how the fetch went
  assert.deepEqual(scope.attributes, { [c.PROMPT_KEY]: "order-status-answer", [c.PROMPT_LABEL]: "prod-b", [c.FETCH_SOURCE]: "langfuse" });
  assert.equal(fetch.parentSpanContext?.spanId, scope.spanContext().spanId);
  assert.equal(chat.parentSpanContext?.spanId, scope.spanContext().spanId);
  assert.equal(new Set([scope, fetch, chat].map((s) => s.spanContext().traceId)).size, 1);
  assert.equal(otel.finished().at(-1), scope); // ended last
});

test("nested scopes restore the outer prompt; concurrent scopes never see each other's", async () => {
  await withPrompt("order-status-answer", { label: "production" }, async () => {
    await withPrompt("order-status-answer", { label: "prod-b" }, () => tracer().startSpan("inner").end());
    tracer().startSpan("outer").end();
  });
  assert.equal(attrs("inner")[0]![c.PROMPT_LABEL], "prod-b");
  assert.equal(attrs("outer")[0]![c.PROMPT_LABEL], "production");
  const labels = await Promise.all(
    ["production", "prod-b", "production", "prod-b"].map((label, i) =>
      withPrompt("order-status-answer", { label }, async () => {
        await new Promise((r) => setTimeout(r, 10 - i * 2));
        const span = tracer().startSpan(`c${i}`);
        span.end();
        return label;
      }),
    ),
  );
  labels.forEach((label, i) => assert.equal(attrs(`c${i}`)[0]![c.PROMPT_LABEL], label));
  const inner = otel.byName(c.FETCH_SPAN_NAME).find((s) => s.attributes[c.PROMPT_LABEL] === "prod-b");
  assert.equal(inner?.attributes[c.PROMPT_KEY], "order-status-answer"); // its own, not the outer's
});

test("only the two entries go into baggage, and other baggage is kept", async () => {
  const outer = propagation.setBaggage(context.active(), propagation.createBaggage({ tenant: { value: "t1" } }));
  await context.with(outer, () =>
    withPrompt("order-status-answer", {}, () => {
      const entries = propagation.getBaggage(context.active())!.getAllEntries().map(([k, v]) => [k, v.value]);
      assert.deepEqual(entries.sort(), [["app.prompt.key", "order-status-answer"], ["app.prompt.label", "production"], ["tenant", "t1"]]);
    }),
  );
});

test("subject: the label by labelFor; a text prompt compiles to a string", async () => {
  const { labelFor } = await import("@promptstamp/sdk");
  const weights = { production: 1, "prod-b": 1 };
  for (const id of ["u1", "u2", "u3", "u4"]) {
    const label = await withPrompt("order-status-answer", { subject: { id, weights, salt: "exp" } }, (p) => p.label);
    assert.equal(label, labelFor(id, weights, "exp"));
  }
  server.create("greeting", "Hi {{name}}", ["production"]);
  const text = await withPrompt("greeting", { type: "text" }, (p: TextPrompt) => [p.prompt, p.compile({ name: "Ann" })]);
  assert.deepEqual(text, ["Hi {{name}}", "Hi Ann"]);
  assert.throws(() => withPrompt("x", { label: "a", subject: { id: "u", weights } }, () => 0), TypeError);
});

test("refused up front: a name or label that could not travel in baggage", async () => {
  for (const [name, label] of [["ok", "prodä"], ["", "production"], ["ok", " production"], ["x".repeat(201), "p"]]) {
    assert.throws(() => withPrompt(name!, { label: label! }, () => 0), RangeError);
  }
});

test("a failed fetch: error status on the fetch span, no event, no log record; source=unavailable on the active span", async () => {
  await tracer().startActiveSpan("handle_request", async (root) => {
    await assert.rejects(withPrompt("missing", {}, () => 0), PromptNotFoundError);
    root.end();
  });
  const [fetch] = otel.byName(c.FETCH_SPAN_NAME);
  assert.ok(fetch);
  assert.equal(fetch.status.code, 2);
  assert.equal(fetch.events.length, 0);
  assert.equal(fetch.attributes[c.FETCH_SOURCE], "unavailable");
  assert.equal(fetch.attributes[c.FETCH_ERROR_TYPE], "NotFoundError");
  assert.equal(otel.byName("handle_request")[0]!.attributes[c.FETCH_SOURCE], "unavailable");
  assert.equal(otel.logs.getFinishedLogRecords().length, 0);
});

test("source=cache: the active span gets a prompt.cache_fallback event; the callback's error ends the scope span", async () => {
  install({ cacheTtlSeconds: 60 });
  await withPrompt("order-status-answer", {}, () => 0);
  server.fail(500);
  clock += 61;
  await tracer().startActiveSpan("handle_request", async (root) => {
    assert.equal(await withPrompt("order-status-answer", {}, (p) => p.source), "cache");
    root.end();
  });
  const root = otel.byName("handle_request")[0]!;
  assert.deepEqual(root.events.map((e) => [e.name, e.attributes]), [
    [c.CACHE_FALLBACK_EVENT, { [c.PROMPT_KEY]: "order-status-answer", [c.PROMPT_LABEL]: "production", [c.FETCH_ERROR_TYPE]: "LangfuseAPIError", [c.PROMPT_VERSION]: 2 }],
  ]);
  await assert.rejects(withPrompt("order-status-answer", {}, () => { throw new Error("boom"); }), /boom/);
  const scope = otel.byName(c.SCOPE_SPAN_NAME).at(-1)!;
  assert.equal(scope.status.code, 2);
  assert.deepEqual(scope.events.map((e) => e.name), [c.CACHE_FALLBACK_EVENT, "exception"]);
});

test("set-up warnings: a provider without PromptSpanProcessor, no ContextManager, nowhere to deliver", async () => {
  const check = async (setup: () => void, code: string) => {
    setup();
    await withPrompt("order-status-answer", {}, () => 0);
    await tick();
    assert.deepEqual(warnings.map((w) => w.code), [code]);
    warnings.length = 0;
  };
  const lf = new LangfuseClient({ publicKey: "pk", secretKey: "sk", baseUrl: server.baseUrl });
  await check(() => {
    otel = pipelines({ withProcessor: false });
    install({ tracerProvider: otel.provider, langfuse: lf });
  }, "PROMPTSTAMP_NO_SPAN_PROCESSOR");
  await check(() => {
    otel = pipelines({ contextManager: false });
    install({ tracerProvider: otel.provider, langfuse: lf });
  }, "PROMPTSTAMP_NO_CONTEXT_MANAGER");
  await check(() => {
    otel = pipelines();
    trace.disable(); // no SDK provider anywhere
    install({ langfuse: lf });
  }, "PROMPTSTAMP_NO_DELIVERY");
});

test("the W3C baggage propagator sends exactly the two entries downstream (no version, no text)", async () => {
  const { W3CBaggagePropagator } = await import("@opentelemetry/core");
  const carrier: Record<string, string> = {};
  await withPrompt("order-status-answer", { label: "prod-b" }, () =>
    new W3CBaggagePropagator().inject(context.active(), carrier, { set: (c, k, v) => ((c as Record<string, string>)[k] = v) }),
  );
  assert.deepEqual(carrier, { baggage: "app.prompt.key=order-status-answer,app.prompt.label=prod-b" });
});
