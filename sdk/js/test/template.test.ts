/** compile(): Langfuse's {{var}} rules, with every missing variable named before rendering. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { PromptError, PromptVariableError } from "@promptstamp/sdk";

import { fromFallback, fromLangfuse } from "../dist/template.js";

const chat = fromLangfuse({
  name: "order-status-answer",
  version: 3,
  config: { model: "gpt-4o-mini" },
  prompt: [
    { type: "chatmessage", role: "system", content: "You help in {{region}}." },
    { type: "placeholder", name: "history" },
    { type: "chatmessage", role: "user", content: "Question: {{ query }}\nAgain: {{query}} {{  region}}" },
  ],
});

test("chat: variables in order, whitespace inside braces tolerated, placeholders inserted as given", () => {
  assert.deepEqual(chat.variables, ["region", "history", "query"]);
  const history = [{ role: "user", content: "earlier {{not_a_template}}", name: "x" }];
  const out = chat.compileChat({ region: "eu", query: "where?", history });
  assert.deepEqual(out, [
    { role: "system", content: "You help in eu." },
    { role: "user", content: "earlier {{not_a_template}}", name: "x" },
    { role: "user", content: "Question: where?\nAgain: where? eu" },
  ]);
  assert.notEqual(out[1], history[0]); // a copy
});

test("a missing variable or placeholder raises naming every missing one, before rendering", () => {
  assert.throws(
    () => chat.compileChat({ region: "eu" }),
    (e: unknown) => e instanceof PromptVariableError && e instanceof PromptError &&
      JSON.stringify(e.missing) === '["history","query"]' && /history, query/.test(e.message),
  );
});

test("null and undefined render as empty; other values with String()", () => {
  const text = fromLangfuse({ name: "t", version: 1, config: null, prompt: "a={{a}} b={{b}} c={{c}} {{ unclosed" });
  assert.equal(text.type, "text");
  assert.equal(text.compileText({ a: null, b: undefined, c: 3 }), "a= b= c=3 {{ unclosed");
  assert.deepEqual(text.config, {});
});

test("a placeholder needs an array of message objects", () => {
  assert.throws(() => chat.compileChat({ region: "", query: "", history: "text" }), TypeError);
  assert.throws(() => chat.compileChat({ region: "", query: "", history: ["text"] }), TypeError);
});

test("a prompt without a positive integer version is refused; a fallback has none", () => {
  for (const version of [0, -1, 1.5, "3", undefined]) {
    assert.throws(() => fromLangfuse({ name: "x", version, prompt: "p" }), TypeError);
  }
  const fb = fromFallback("x", "chat", [{ role: "system", content: "Hi {{name}}" }]);
  assert.equal(fb.version, undefined);
  assert.deepEqual(fb.compileChat({ name: "Ann" }), [{ role: "system", content: "Hi Ann" }]);
  assert.throws(() => fromFallback("x", "text", [{ role: "s", content: "" }]), TypeError);
});
