/**
 * What tests/js/app.mjs (a Node app driven by tests/js/test_js_sdk.py) imports: the SDK and the
 * OpenTelemetry JS SDK pieces an app uses, resolved from sdk/js/node_modules. The app lives
 * outside this package, so it loads this module by file URL.
 */

export { context, propagation, trace } from "@opentelemetry/api";
export { BatchSpanProcessor, NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
export { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
export { OTLPLogExporter } from "@opentelemetry/exporter-logs-otlp-proto";
export { BatchLogRecordProcessor, LoggerProvider } from "@opentelemetry/sdk-logs";
export { resourceFromAttributes } from "@opentelemetry/resources";
export { LangfuseClient } from "@langfuse/client";
export * as promptstamp from "@promptstamp/sdk";
// The Vercel AI SDK (optional scenario: experimental_telemetry through a loopback OpenAI).
export { generateText } from "ai";
export { createOpenAI } from "@ai-sdk/openai";
