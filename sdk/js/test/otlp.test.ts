/**
 * The fetch record's version leaves the app as OTLP `intValue` (contract §2): OpenTelemetry JS's
 * encoders (@opentelemetry/otlp-transformer: `writeAnyValue` in
 * build/src/common/protobuf/common-serializer.js for protobuf, `toAnyValue` in
 * build/src/common/internal.js for JSON) write a JS number that is an integer as int_value,
 * any other number as double_value. Checked here on the serialized bytes, through the
 * serializers the OTLP exporters use.
 */

import assert from "node:assert/strict";
import { after, test } from "node:test";

import { JsonLogsSerializer, JsonTraceSerializer, ProtobufLogsSerializer, ProtobufTraceSerializer } from "@opentelemetry/otlp-transformer";
import { install, withPrompt } from "@promptstamp/sdk";

import { FakeLangfuse } from "./support/fake-langfuse.js";
import { pipelines } from "./support/otel.js";

const { LangfuseClient } = await import("@langfuse/client");
const server = await new FakeLangfuse().start();
after(() => server.stop());
for (let i = 0; i < 3; i++) server.create("order-status-answer", [{ role: "user", content: "hi" }], ["production"]);

const otel = pipelines();
install({
  tracerProvider: otel.provider,
  loggerProvider: otel.loggerProvider,
  langfuse: new LangfuseClient({ publicKey: "pk", secretKey: "sk", baseUrl: server.baseUrl }),
});
await withPrompt("order-status-answer", {}, () => 0);
otel.provider.getTracer("probe").startSpan("probe", { attributes: { i: 3, f: 3.5, s: "3" } }).end();
const spans = otel.finished();
const logs = otel.logs.getFinishedLogRecords();

/** A KeyValue {key, value: AnyValue{field: varint/fixed}} as protobuf bytes. */
function keyValue(key: string, anyValue: number[]): Buffer {
  const k = Buffer.from(key);
  return Buffer.from([0x0a, k.length, ...k, 0x12, anyValue.length, ...anyValue]);
}
const INT_3 = [0x18, 0x03]; // AnyValue.int_value (field 3, varint) = 3
const STRING_3 = [0x0a, 0x01, 0x33]; // AnyValue.string_value (field 1) = "3"

test("the encoder's rule: an integer number is intValue, a fraction doubleValue", () => {
  const span = spans.find((s) => s.name === "probe")!;
  const json = JSON.parse(new TextDecoder().decode(JsonTraceSerializer.serializeRequest([span]))) as {
    resourceSpans: { scopeSpans: { spans: { attributes: { key: string; value: Record<string, unknown> }[] }[] }[] }[];
  };
  const attributes = json.resourceSpans[0]!.scopeSpans[0]!.spans[0]!.attributes;
  assert.deepEqual(Object.fromEntries(attributes.map((a) => [a.key, a.value])), {
    i: { intValue: 3 },
    f: { doubleValue: 3.5 },
    s: { stringValue: "3" },
  });
  const bytes = Buffer.from(ProtobufTraceSerializer.serializeRequest([span])!);
  assert.ok(bytes.includes(keyValue("i", INT_3)));
  assert.ok(bytes.includes(keyValue("s", STRING_3)));
});

test("the fetch span and its event carry app.prompt.version as int_value in the protobuf request", () => {
  const fetch = spans.find((s) => s.name === "promptstamp.fetch")!;
  assert.equal(fetch.attributes["app.prompt.version"], 3);
  const bytes = Buffer.from(ProtobufTraceSerializer.serializeRequest([fetch])!);
  const wanted = keyValue("app.prompt.version", INT_3);
  let count = 0;
  for (let at = bytes.indexOf(wanted); at >= 0; at = bytes.indexOf(wanted, at + 1)) count++;
  assert.equal(count, 2, "once on the span, once on its app.prompt.fetch event");
  assert.ok(!bytes.includes(keyValue("app.prompt.version", STRING_3)));
});

test("the log record: event_name (field 12) and an int_value version", () => {
  assert.equal(logs.length, 1);
  const bytes = Buffer.from(ProtobufLogsSerializer.serializeRequest(logs)!);
  const name = Buffer.from("app.prompt.fetch");
  assert.ok(bytes.includes(Buffer.from([(12 << 3) | 2, name.length, ...name])), "LogRecord.event_name");
  assert.ok(bytes.includes(keyValue("app.prompt.version", INT_3)));
  const json = new TextDecoder().decode(JsonLogsSerializer.serializeRequest(logs));
  assert.match(json, /"key":"app.prompt.version","value":\{"intValue":3\}/);
});
