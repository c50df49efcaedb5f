/** In-memory OpenTelemetry pipelines for the SDK's tests (OpenTelemetry JS 2.x). */

import { context, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { InMemoryLogRecordExporter, LoggerProvider, SimpleLogRecordProcessor } from "@opentelemetry/sdk-logs";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";

import { PromptSpanProcessor, reset } from "@promptstamp/sdk";

export interface Pipelines {
  provider: BasicTracerProvider;
  spans: InMemorySpanExporter;
  loggerProvider: LoggerProvider;
  logs: InMemoryLogRecordExporter;
  finished(): ReadableSpan[];
  byName(name: string): ReadableSpan[];
}

let contextManager: AsyncLocalStorageContextManager | undefined;

/** Fresh providers; `withProcessor: false` leaves PromptSpanProcessor out (for the warning). */
export function pipelines(options: { withProcessor?: boolean; contextManager?: boolean } = {}): Pipelines {
  reset();
  trace.disable();
  context.disable();
  propagation.disable();
  if (options.contextManager !== false) {
    contextManager = new AsyncLocalStorageContextManager().enable();
    context.setGlobalContextManager(contextManager);
  }
  const spans = new InMemorySpanExporter();
  const processors: SpanProcessor[] = [new SimpleSpanProcessor(spans)];
  if (options.withProcessor !== false) processors.unshift(new PromptSpanProcessor());
  const provider = new BasicTracerProvider({ spanProcessors: processors });
  trace.setGlobalTracerProvider(provider);
  const logs = new InMemoryLogRecordExporter();
  const loggerProvider = new LoggerProvider({ processors: [new SimpleLogRecordProcessor({ exporter: logs })] });
  return {
    provider,
    spans,
    loggerProvider,
    logs,
    finished: () => spans.getFinishedSpans(),
    byName: (name) => spans.getFinishedSpans().filter((s) => s.name === name),
  };
}
