// A Node app on the TypeScript SDK (sdk/js), driven by tests/js/test_js_sdk.py: OpenTelemetry JS's
// own OTLP/HTTP (protobuf) exporter to the promptstamp relay, prompts from LANGFUSE_* (the
// Python LangfuseServer), model calls to FakeOpenAI. One scenario per run (SCENARIO); it prints
// JSON lines: {"pause": name} (then waits for a line on stdin) and at the end {"results": [...]}.
//
// KIT is sdk/js/dist-test/support/kit.js: this file lives outside the package, so the package's
// dependencies are reached through it.
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const kit = await import(pathToFileURL(process.env.KIT).href);
const { trace, NodeTracerProvider, BatchSpanProcessor, OTLPTraceExporter, resourceFromAttributes } = kit;
const { install, withPrompt, PromptSpanProcessor, PromptError } = kit.promptstamp;

const SCENARIO = process.env.SCENARIO;
const RELAY = process.env.RELAY_HTTP; // http://host:port of the relay's OTLP/HTTP receiver
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const pause = async (name) => { say({ pause: name }); await stdin.next(); };

// --- the app's OpenTelemetry set-up: tracing only, default BatchSpanProcessor timings --------
const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ "service.name": process.env.SERVICE_NAME ?? "order-status-js",
                                     "service.instance.id": "order-status-js-1" }),
  spanProcessors: [
    new PromptSpanProcessor(),
    new BatchSpanProcessor(new OTLPTraceExporter({ url: `${RELAY}/v1/traces` })),
  ],
});
provider.register(); // global provider + AsyncLocalStorage context manager + W3C propagators
let loggerProvider;
if (process.env.WITH_LOGS) {
  const { LoggerProvider, BatchLogRecordProcessor, OTLPLogExporter } = kit;
  loggerProvider = new LoggerProvider({
    resource: resourceFromAttributes({ "service.name": "order-status-js", "service.instance.id": "order-status-js-1" }),
    processors: [new BatchLogRecordProcessor({ exporter: new OTLPLogExporter({ url: `${RELAY}/v1/logs` }) })],
  });
}
install({ loggerProvider, cacheTtlSeconds: Number(process.env.CACHE_TTL ?? 60) }); // LANGFUSE_* from the environment
const tracer = trace.getTracer("order_status");

// --- the model call: a generation span by hand (GenAI semantic conventions) around a real HTTP call
async function chat(model, messages) {
  return tracer.startActiveSpan(`chat ${model}`, {
    attributes: { "gen_ai.operation.name": "chat", "gen_ai.request.model": model, "gen_ai.system": "openai" },
  }, async (span) => {
    try {
      const res = await fetch(`${process.env.OPENAI_BASE_URL}/chat/completions`, {
        method: "POST", headers: { "content-type": "application/json", authorization: "Bearer sk-test" },
        body: JSON.stringify({ model, messages }),
      });
      const body = await res.json();
      span.setAttribute("gen_ai.response.model", body.model ?? model);
      return body.choices[0].message.content;
    } finally {
      span.end();
    }
  });
}

// --- one request: the app change is the withPrompt() call --------------------------------------
async function handle(query, options, { holdMs = 0 } = {}) {
  return tracer.startActiveSpan("handle_request", async (root) => {
    try {
      return await withPrompt("order-status-answer", options, async (p) => {
        const messages = p.compile({ query, region: "eu" });
        const answers = [await chat(p.config.model, messages)];
        if (holdMs) {
          await new Promise((r) => setTimeout(r, holdMs)); // a long request: more work, then another call
          answers.push(await chat(p.config.model, messages));
        }
        return { trace_id: root.spanContext().traceId, label: p.label, version: p.version ?? null,
                 source: p.source, error_type: p.errorType ?? null, rollout: p.rollout ?? null,
                 generations: answers.length };
      });
    } catch (error) {
      if (!(error instanceof PromptError)) throw error;
      return { trace_id: root.spanContext().traceId, error: error.name, error_type: error.errorType ?? null };
    } finally {
      root.end();
    }
  });
}

const results = [];
if (SCENARIO === "production") {
  for (let i = 0; i < 4; i++) results.push(await handle(`order ${i}?`, { label: "production" }));
} else if (SCENARIO === "ab") {
  const weights = { "prod-a": 0.5, "prod-b": 0.5 };
  for (let i = 0; i < 8; i++) {
    const subject = `user-${i}`;
    results.push({ subject, ...(await handle(`order ${i}?`, { subject: { id: subject, weights, salt: "exp-14" } })) });
  }
} else if (SCENARIO === "rollout") {
  // A guarded rollout's plan in Langfuse: subjects by id, then by trace id (no subject given).
  for (let i = 0; i < 12; i++) {
    const subject = `user-${i}`;
    results.push({ subject, ...(await handle(`order ${i}?`, { label: "production", subject })) });
  }
  for (let i = 0; i < 8; i++) results.push(await handle(`anonymous ${i}?`, { label: "production" }));
} else if (SCENARIO === "cache") {
  results.push(await handle("warm-up", {}));
  await pause("warm");                   // Langfuse starts failing here
  for (let i = 0; i < 3; i++) results.push(await handle(`order ${i}?`, {}));
} else if (SCENARIO === "long") {
  results.push(await handle("before the move", {}));
  await pause("move");                   // the production label moves here
  results.push(await handle("a long one", {}, { holdMs: Number(process.env.HOLD_MS ?? 8000) }));
} else if (SCENARIO === "ai-sdk") {
  // The Vercel AI SDK's own spans (experimental_telemetry) inside the scope; no hand-made span.
  const openai = kit.createOpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: "sk-test" });
  for (let i = 0; i < 2; i++) {
    results.push(await tracer.startActiveSpan("handle_request", async (root) => {
      try {
        return await withPrompt("order-status-answer", { label: "production" }, async (p) => {
          const { text } = await kit.generateText({
            model: openai.chat(p.config.model),
            messages: p.compile({ query: `order ${i}?`, region: "eu" }),
            experimental_telemetry: { isEnabled: true, functionId: "order-status" },
          });
          return { trace_id: root.spanContext().traceId, label: p.label, version: p.version, source: p.source, text };
        });
      } finally {
        root.end();
      }
    }));
  }
} else if (SCENARIO === "relay-as-langfuse") {
  results.push(await handle("misconfigured", {}));
} else if (SCENARIO === "string-version") {
  // Plain OpenTelemetry, no SDK: a hand-written fetch span whose version is a string.
  await tracer.startActiveSpan("handle_request", async (root) => {
    const attrs = { "app.prompt.key": "order-status-answer", "app.prompt.label": "production",
                    "app.prompt.version": "3", "app.prompt.fetch.source": "langfuse" };
    const fetchSpan = tracer.startSpan("promptstamp.fetch", { attributes: attrs });
    fetchSpan.addEvent("app.prompt.fetch", attrs);
    fetchSpan.end();
    results.push({ trace_id: root.spanContext().traceId });
    root.end();
  });
} else {
  throw new Error(`unknown SCENARIO ${SCENARIO}`);
}
await provider.shutdown(); // flushes the batch span processor
await loggerProvider?.shutdown();
say({ results });
process.exit(0);
