/**
 * An immutable snapshot of one prompt version, and how it compiles (Python `_template.py`).
 *
 * `{{ name }}` (whitespace inside the braces tolerated) is replaced by `String(value)`
 * (`null`/`undefined` give ""); a chat `{type: "placeholder", name}` entry is replaced by the
 * messages passed under that name, inserted as given. Unlike Langfuse's own compile(), a missing
 * variable or placeholder is an error naming every missing one, raised before anything renders.
 */

import { PromptVariableError } from "./errors.js";

export type PromptType = "chat" | "text";

/** A chat message as compile() returns it; placeholder messages keep whatever fields they had. */
export interface ChatMessage {
  role: string;
  content: string;
  [field: string]: unknown;
}

/** An entry of an uncompiled chat prompt, in Langfuse's shape. */
export type ChatPart =
  | { type: "message"; role: string; content: string }
  | { type: "placeholder"; name: string };

export type Variables = Readonly<Record<string, unknown>>;

function* variablesIn(text: string): Generator<[name: string, start: number, end: number]> {
  let position = 0;
  for (;;) {
    const start = text.indexOf("{{", position);
    if (start < 0) return;
    const close = text.indexOf("}}", start + 2);
    if (close < 0) return;
    const end = close + 2;
    yield [text.slice(start + 2, close).trim(), start, end];
    position = end;
  }
}

function render(text: string, values: Variables): string {
  let out = "";
  let position = 0;
  for (const [name, start, end] of variablesIn(text)) {
    out += text.slice(position, start);
    const value = values[name];
    out += value === null || value === undefined ? "" : String(value);
    position = end;
  }
  return out + text.slice(position);
}

export class Template {
  readonly variables: readonly string[];

  constructor(
    readonly name: string,
    readonly type: PromptType,
    readonly version: number | undefined,
    readonly config: Readonly<Record<string, unknown>>,
    readonly text: string,
    readonly parts: readonly Readonly<ChatPart>[],
  ) {
    const seen = new Set<string>();
    if (type === "text") {
      for (const [v] of variablesIn(text)) seen.add(v);
    } else {
      for (const part of parts) {
        if (part.type === "placeholder") seen.add(part.name);
        else for (const [v] of variablesIn(part.content)) seen.add(v);
      }
    }
    this.variables = Object.freeze([...seen]);
    Object.freeze(this);
  }

  /** The uncompiled template, in Langfuse's shape (a fresh copy each time). */
  raw(): string | ChatPart[] {
    return this.type === "text" ? this.text : this.parts.map((p) => ({ ...p }));
  }

  private check(values: Variables): void {
    const missing = this.variables.filter((v) => !Object.prototype.hasOwnProperty.call(values, v));
    if (missing.length) throw new PromptVariableError(this.name, missing);
  }

  compileText(values: Variables): string {
    this.check(values);
    return render(this.text, values);
  }

  compileChat(values: Variables): ChatMessage[] {
    this.check(values);
    const messages: ChatMessage[] = [];
    for (const part of this.parts) {
      if (part.type === "message") {
        messages.push({ role: part.role, content: render(part.content, values) });
        continue;
      }
      const inserted = values[part.name];
      if (!Array.isArray(inserted)) {
        throw new TypeError(
          `placeholder ${JSON.stringify(part.name)} of prompt ${JSON.stringify(this.name)} takes an array of messages`,
        );
      }
      for (const message of inserted) {
        if (message === null || typeof message !== "object" || Array.isArray(message)) {
          throw new TypeError(
            `placeholder ${JSON.stringify(part.name)} of prompt ${JSON.stringify(this.name)} takes message objects`,
          );
        }
        messages.push(structuredClone(message) as ChatMessage); // user text: not a template
      }
    }
    return messages;
  }
}

function field(item: unknown, name: string): unknown {
  return item !== null && typeof item === "object" ? (item as Record<string, unknown>)[name] : undefined;
}

function configOf(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    ? (structuredClone(value) as Record<string, unknown>)
    : {};
}

function chatParts(name: string, raw: unknown): ChatPart[] {
  if (!Array.isArray(raw)) throw new TypeError(`chat prompt ${JSON.stringify(name)} must be an array of messages`);
  return raw.map((item): ChatPart => {
    if (field(item, "type") === "placeholder") {
      const placeholder = field(item, "name");
      if (typeof placeholder !== "string") {
        throw new TypeError(`chat prompt ${JSON.stringify(name)} has a placeholder without a name`);
      }
      return { type: "placeholder", name: placeholder };
    }
    const role = field(item, "role");
    const content = field(item, "content");
    if (typeof role !== "string" || typeof content !== "string") {
      throw new TypeError(`chat prompt ${JSON.stringify(name)} has a message without a string role and content`);
    }
    return { type: "message", role, content };
  });
}

/**
 * Snapshot what @langfuse/client's `prompt.get()` returned (a TextPromptClient or
 * ChatPromptClient: only `name`, `version`, `config`, `prompt` are read). A prompt without a
 * positive integer version is refused: it could never be linked.
 */
export function fromLangfuse(fetched: {
  name?: unknown;
  version?: unknown;
  config?: unknown;
  prompt?: unknown;
}): Template {
  const name = String(fetched.name);
  const version = fetched.version;
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version <= 0) {
    throw new TypeError(`Langfuse returned prompt ${JSON.stringify(name)} without a valid version: ${String(version)}`);
  }
  const config = configOf(fetched.config);
  if (typeof fetched.prompt === "string") {
    return new Template(name, "text", version, config, fetched.prompt, []);
  }
  return new Template(name, "chat", version, config, "", chatParts(name, fetched.prompt));
}

/** Snapshot the app's explicit code-embedded fallback: no version, empty config. */
export function fromFallback(name: string, type: PromptType, fallback: unknown): Template {
  if (type === "text") {
    if (typeof fallback !== "string") throw new TypeError(`the fallback for text prompt ${JSON.stringify(name)} must be a string`);
    return new Template(name, "text", undefined, {}, fallback, []);
  }
  return new Template(name, "chat", undefined, {}, "", chatParts(name, fallback));
}
