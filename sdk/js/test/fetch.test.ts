/**
 * The fetch policy with the real @langfuse/client against a loopback Langfuse: what the client
 * throws for 404 / 5xx / timeout / connection refused (the facts fetch.ts relies on), and the
 * cache, stale bound, backoff, fallback and fail-closed rules on top.
 */

import assert from "node:assert/strict";
import { after, beforeEach, test } from "node:test";

import { LangfuseClient } from "@langfuse/client";
import {
  PromptNotFoundError,
  PromptUnavailableError,
  install,
  withPrompt,
} from "@promptstamp/sdk";

import { FAILURE_BACKOFF_SECONDS, setClock } from "../dist/fetch.js";
import { FakeLangfuse } from "./support/fake-langfuse.js";
import { pipelines } from "./support/otel.js";

const CHAT = [
  { role: "system", content: "You are a support assistant." },
  { role: "user", content: "Question: {{query}}" },
];
let clock = 1000;
setClock(() => clock);
const server = await new FakeLangfuse().start();
after(() => server.stop());

function client(baseUrl = server.baseUrl): LangfuseClient {
  return new LangfuseClient({ publicKey: "pk-lf-test", secretKey: "sk-lf-test", baseUrl });
}

beforeEach(() => {
  pipelines();
  server.prompts.length = 0;
  server.requests.length = 0;
  server.fail(undefined);
  server.delayMs = 0;
  server.serverHeader = undefined;
  server.create("order-status-answer", CHAT, ["production"], { model: "gpt-4o-mini" });
  install({ langfuse: client(), fetchTimeoutMs: 300 });
});

const version = (name = "order-status-answer", label = "production") =>
  withPrompt(name, { label }, (p) => ({ version: p.version, source: p.source, errorType: p.errorType }));

test("@langfuse/client facts: 404 NotFoundError; 5xx, timeout, connection refused LangfuseAPIError", async () => {
  const lf = client();
  const caught = async (fn: () => Promise<unknown>) => fn().then(() => assert.fail("no error"), (e: unknown) => e as Error & { statusCode?: number });
  const opts = { cacheTtlSeconds: 0, maxRetries: 0, fetchTimeoutMs: 300 };
  let e = await caught(() => lf.prompt.get("nope", { label: "production", ...opts }));
  assert.equal(e.constructor.name, "_NotFoundError");
  assert.equal(e.statusCode, 404);
  server.fail(503);
  e = await caught(() => lf.prompt.get("order-status-answer", opts));
  assert.equal(e.constructor.name, "_LangfuseAPIError");
  assert.equal(e.statusCode, 503);
  assert.equal(server.requests.length, 2, "maxRetries: 0 makes one request for a 503");
  server.fail(undefined);
  server.delayMs = 1000;
  e = await caught(() => lf.prompt.get("order-status-answer", opts));
  // Not LangfuseAPITimeoutError: the client aborts with the reason "timeout", Node's fetch
  // rejects with that string (not an AbortError), and the client reports it as "unknown".
  assert.equal(e.constructor.name, "_LangfuseAPIError");
  assert.equal(e.statusCode, undefined);
  assert.match(e.message, /timeout/);
  server.delayMs = 0;
  e = await caught(() => client("http://127.0.0.1:9").prompt.get("order-status-answer", opts));
  assert.equal(e.constructor.name, "_LangfuseAPIError");
  assert.equal(e.statusCode, undefined);
  // cacheTtlSeconds: 0 makes a request every time (no silent stale copy)
  const before = server.requests.length;
  await lf.prompt.get("order-status-answer", opts);
  await lf.prompt.get("order-status-answer", opts);
  assert.equal(server.requests.length, before + 2);
});

test("a copy younger than the TTL is served without a request, then refetched", async () => {
  assert.deepEqual(await version(), { version: 1, source: "langfuse", errorType: undefined });
  server.create("order-status-answer", CHAT, ["production"]);
  clock += 59;
  assert.equal((await version()).version, 1);
  assert.equal(server.promptRequests.length, 1);
  clock += 1;
  assert.equal((await version()).version, 2);
  assert.equal(server.promptRequests.length, 2);
});

test("5xx: last known good as source=cache with the error type, for at most maxStaleSeconds", async () => {
  await version();
  server.fail(503);
  clock += 61;
  assert.deepEqual(await version(), { version: 1, source: "cache", errorType: "LangfuseAPIError" });
  clock += 300 - 61 + 1; // the copy is now older than 300 s
  await assert.rejects(version(), (e: unknown) => e instanceof PromptUnavailableError && e.errorType === "LangfuseAPIError");
});

test("timeout and connection refused are served from cache too", async () => {
  await version();
  server.delayMs = 1000;
  clock += 61;
  assert.deepEqual(await version(), { version: 1, source: "cache", errorType: "LangfuseAPIError" });
  server.delayMs = 0;
  install({ langfuse: client("http://127.0.0.1:9") }); // a new client forgets the cache
  await assert.rejects(version(), (e: unknown) => e instanceof PromptUnavailableError && e.errorType === "LangfuseAPIError");
});

test("after a failure the next fetch waits FAILURE_BACKOFF_SECONDS; hand-outs meanwhile are cache", async () => {
  await version();
  server.fail(503);
  clock += 61;
  await version();
  const requests = server.promptRequests.length;
  clock += FAILURE_BACKOFF_SECONDS - 1;
  assert.equal((await version()).source, "cache");
  assert.equal(server.promptRequests.length, requests);
  server.fail(undefined);
  clock += 1;
  assert.equal((await version()).source, "langfuse");
  assert.equal(server.promptRequests.length, requests + 1);
});

test("404 fails closed: PromptNotFoundError, the cached copy dropped, never the fallback", async () => {
  await version();
  server.setLabels("order-status-answer", 1, []);
  clock += 61;
  const fallback = [{ role: "system", content: "embedded" }];
  await assert.rejects(
    withPrompt("order-status-answer", { fallback }, () => 0),
    (e: unknown) => e instanceof PromptNotFoundError && e.errorType === "NotFoundError",
  );
  server.fail(503);
  clock += 10;
  await assert.rejects(version(), PromptUnavailableError); // the copy was dropped
});

test("the fallback: only when nothing usable is cached; no version", async () => {
  server.fail(503);
  const fallback = [{ role: "system", content: "embedded {{x}}" }];
  const got = await withPrompt("order-status-answer", { fallback }, (p) => [p.version, p.source, p.errorType, p.compile({ x: 1 })]);
  assert.deepEqual(got, [undefined, "fallback", "LangfuseAPIError", [{ role: "system", content: "embedded 1" }]]);
});

test("one request for concurrent scopes of the same name and label", async () => {
  server.delayMs = 50;
  const got = await Promise.all([version(), version(), version()]);
  assert.deepEqual(got.map((g) => g.source), ["langfuse", "langfuse", "langfuse"]);
  assert.equal(server.promptRequests.length, 1);
});

test("a relay answering at LANGFUSE_BASE_URL fails closed with BaseUrlIsRelay", async () => {
  server.serverHeader = "promptstamp-relay/0.1";
  server.fail(404);
  await assert.rejects(version(), (e: unknown) => e instanceof PromptNotFoundError && e.errorType === "BaseUrlIsRelay");
});

test("a text prompt asked for as chat fails closed (PromptTypeMismatch)", async () => {
  server.create("greeting", "Hello {{name}}", ["production"]);
  await assert.rejects(version("greeting"), (e: unknown) => e instanceof PromptNotFoundError && e.errorType === "PromptTypeMismatch");
  assert.equal(await withPrompt("greeting", { type: "text" }, (p) => p.compile({ name: "Ann" })), "Hello Ann");
});
