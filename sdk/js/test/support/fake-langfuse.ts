/** A loopback server answering @langfuse/client's `GET /api/public/v2/prompts/{name}` (by label,
 * or by `version`) as Langfuse does, with faults to inject (status, delay, Server header), for
 * every request or only those a `failOnly` test picks (e.g. only the rollout plan). */

import { type AddressInfo } from "node:net";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";

export interface StoredPrompt {
  name: string;
  version: number;
  type: "chat" | "text";
  prompt: unknown;
  config: Record<string, unknown>;
  labels: string[];
}

export interface PromptRequest {
  name: string;
  label: string | null;
  version: number | null;
}

export class FakeLangfuse {
  readonly prompts: StoredPrompt[] = [];
  readonly requests: PromptRequest[] = [];
  failStatus: number | undefined;
  failTimes = Infinity;
  /** Which requests the injected fault applies to (default: all). */
  failOnly: (request: PromptRequest) => boolean = () => true;
  delayMs = 0;
  serverHeader: string | undefined;
  private server: Server | undefined;

  async start(): Promise<this> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    return this;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${(this.server!.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  create(name: string, prompt: unknown, labels: string[], config: Record<string, unknown> = {}): StoredPrompt {
    const version = this.prompts.filter((p) => p.name === name).length + 1;
    for (const p of this.prompts) if (p.name === name) p.labels = p.labels.filter((l) => !labels.includes(l));
    const stored: StoredPrompt = { name, version, type: typeof prompt === "string" ? "text" : "chat", prompt, config, labels };
    this.prompts.push(stored);
    return stored;
  }

  setLabels(name: string, version: number, labels: string[]): void {
    for (const p of this.prompts) {
      if (p.name !== name) continue;
      p.labels = p.version === version ? labels : p.labels.filter((l) => !labels.includes(l));
    }
  }

  fail(status: number | undefined, times = Infinity, only: (request: PromptRequest) => boolean = () => true): void {
    this.failStatus = status;
    this.failTimes = times;
    this.failOnly = only;
  }

  /** The requests for prompts, leaving out rollout plans (`promptstamp-rollout/...`). */
  get promptRequests(): PromptRequest[] {
    return this.requests.filter((r) => !r.name.startsWith("promptstamp-rollout/"));
  }

  /** The requests for rollout plans. */
  get planRequests(): PromptRequest[] {
    return this.requests.filter((r) => r.name.startsWith("promptstamp-rollout/"));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://x");
    const match = /^\/api\/public\/v2\/prompts\/(.+)$/.exec(url.pathname);
    if (this.serverHeader) res.setHeader("Server", this.serverHeader);
    if (!match || req.method !== "GET") return this.json(res, 404, { message: "not found" });
    const name = decodeURIComponent(match[1]!);
    const label = url.searchParams.get("label");
    const rawVersion = url.searchParams.get("version");
    const version = rawVersion === null ? null : Number(rawVersion);
    const request = { name, label, version };
    this.requests.push(request);
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.failStatus !== undefined && this.failTimes > 0 && this.failOnly(request)) {
      this.failTimes--;
      return this.json(res, this.failStatus, { message: "injected fault" });
    }
    const found = this.prompts.find((p) =>
      p.name === name && (version !== null ? p.version === version : p.labels.includes(label ?? "production")),
    );
    if (!found) {
      const which = version !== null ? `version '${version}'` : `label '${label}'`;
      return this.json(res, 404, { message: `Prompt not found: '${name}' with ${which}`, error: "LangfuseNotFoundError" });
    }
    return this.json(res, 200, { ...found, tags: [], commitMessage: null });
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    if (res.destroyed) return;
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  }
}
