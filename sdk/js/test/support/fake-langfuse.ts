/** A loopback server answering @langfuse/client's `GET /api/public/v2/prompts/{name}` as
 * Langfuse does, with faults to inject (status, delay, Server header). */

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

export class FakeLangfuse {
  readonly prompts: StoredPrompt[] = [];
  readonly requests: { name: string; label: string | null }[] = [];
  failStatus: number | undefined;
  failTimes = Infinity;
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

  fail(status: number | undefined, times = Infinity): void {
    this.failStatus = status;
    this.failTimes = times;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://x");
    const match = /^\/api\/public\/v2\/prompts\/(.+)$/.exec(url.pathname);
    if (this.serverHeader) res.setHeader("Server", this.serverHeader);
    if (!match || req.method !== "GET") return this.json(res, 404, { message: "not found" });
    const name = decodeURIComponent(match[1]!);
    const label = url.searchParams.get("label");
    this.requests.push({ name, label });
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.failStatus !== undefined && this.failTimes > 0) {
      this.failTimes--;
      return this.json(res, this.failStatus, { message: "injected fault" });
    }
    const found = this.prompts.find((p) => p.name === name && p.labels.includes(label ?? "production"));
    if (!found) return this.json(res, 404, { message: `Prompt not found: '${name}' with label '${label}'`, error: "LangfuseNotFoundError" });
    return this.json(res, 200, { ...found, tags: [], commitMessage: null });
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    if (res.destroyed) return;
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  }
}
