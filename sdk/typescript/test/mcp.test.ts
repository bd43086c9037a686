// The MCP adapter: an MCP server on the official TypeScript SDK behind protectMCP, called by the SDK's client
// with a Valet task token.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { z } from "zod";
import { Valet, Verifier, type Task } from "@valet-dev/valet";
import { protectMCP, type ValetAuthInfo } from "@valet-dev/valet/mcp";
import { audience, startValet, toolServerClient, type Dev } from "./harness.js";

const decl = { template: "sdk", intent: "triage ticket 4521", tools: ["tickets.read", "tickets.delete"], ttl_seconds: 300 };

/** mcpServer is a stateless MCP server with three tools; each answers who called it (from the auth info). */
function mcpServer(): McpServer {
  const s = new McpServer({ name: "tickets", version: "1.0.0" });
  const who = (extra: { authInfo?: unknown }) => {
    const a = extra.authInfo as ValetAuthInfo;
    return { content: [{ type: "text" as const, text: JSON.stringify({ by: a.clientId, task: a.extra.claims.taskId }) }] };
  };
  s.registerTool("tickets.read", { description: "Read a ticket", inputSchema: { ticket: z.string() } }, (_args, extra) => who(extra));
  s.registerTool("tickets.comment", { description: "Comment on a ticket", inputSchema: { ticket: z.string() } }, (_args, extra) => who(extra));
  s.registerTool("tickets.delete", { description: "Delete a ticket", inputSchema: { ticket: z.string() } }, (_args, extra) => who(extra));
  return s;
}

describe("MCP adapter", () => {
  let dev: Dev;
  let valet: Valet;
  let server: Server;
  let url: string;
  let verifier: Verifier;
  let stop: () => Promise<void>;
  before(async () => {
    dev = await startValet();
    valet = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-7") });
    verifier = new Verifier({ issuer: dev.url, audience, clientId: toolServerClient.id, clientSecret: toolServerClient.secret });
    const run = verifier.start();
    stop = run.stop;
    const handle = protectMCP(verifier, async (req, res, body) => {
      const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
      const s = mcpServer();
      res.on("close", () => { void transport.close(); void s.close(); });
      await s.connect(transport);
      await transport.handleRequest(req, res, body);
    });
    server = createServer((req, res) => void handle(req, res));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`;
  });
  after(async () => {
    await stop?.();
    server?.close();
    await dev?.stop();
  });

  async function connect(task: Task, extra: () => Record<string, string> = () => ({})) {
    const client = new Client({ name: "agent", version: "1.0.0" });
    const transport = new StreamableHTTPClientTransport(new URL(url), {
      fetch: async (input, init) => {
        const headers = new Headers(init?.headers);
        for (const [k, v] of Object.entries(extra())) headers.set(k, v);
        return task.fetch(input instanceof URL ? input : String(input), { ...init, headers });
      },
    });
    await client.connect(transport);
    return client;
  }

  it("lets a task call its granted tools, refuses the others, and reports the calls", async () => {
    await using task = await valet.declare(decl);
    const client = await connect(task);
    const tools = (await client.listTools()).tools.map((t) => t.name).sort();
    assert.deepEqual(tools, ["tickets.comment", "tickets.delete", "tickets.read"]);
    const got = await client.callTool({ name: "tickets.read", arguments: { ticket: "7" } });
    const text = (got.content as { text: string }[])[0].text;
    assert.deepEqual(JSON.parse(text), { by: "agent-7", task: task.id });
    const refused = await client.callTool({ name: "tickets.comment", arguments: { ticket: "7" } }).then(() => undefined, (e: unknown) => e);
    assert.match(String(refused), /403|not granted/);
    await new Promise((r) => setTimeout(r, 200));
    const events = await task.events();
    assert.ok(events.some((e) => e.tool === "tickets.read" && e.outcome === "ok"), JSON.stringify(events));
    await client.close();
  });

  it("needs an action token for a sensitive tool, for exactly its arguments", async () => {
    await using task = await valet.declare(decl);
    let action = "";
    const client = await connect(task, (): Record<string, string> => (action ? { "Valet-Action": action } : {}));
    const without = await client.callTool({ name: "tickets.delete", arguments: { ticket: "7" } }).then(() => undefined, (e: unknown) => e);
    assert.match(String(without), /403|action token/);
    action = ((await task.requestAction("tickets.delete", { ticket: "7" })) as { action_token: string }).action_token;
    const other = await client.callTool({ name: "tickets.delete", arguments: { ticket: "8" } }).then(() => undefined, (e: unknown) => e);
    assert.match(String(other), /403|other arguments/);
    const ok = await client.callTool({ name: "tickets.delete", arguments: { ticket: "7" } });
    assert.equal(ok.isError, undefined);
    const twice = await client.callTool({ name: "tickets.delete", arguments: { ticket: "7" } }).then(() => undefined, (e: unknown) => e);
    assert.match(String(twice), /403|used already/);
    await client.close();
  });

  it("refuses a revoked task, a missing token and batches", async () => {
    const task = await valet.declare(decl);
    const client = await connect(task);
    await dev.revoke(task.token);
    const t0 = Date.now();
    let err: unknown;
    while (Date.now() - t0 < 1000) {
      err = await client.callTool({ name: "tickets.read", arguments: { ticket: "7" } }).then(() => undefined, (e: unknown) => e);
      if (err) break;
    }
    assert.match(String(err), /401|invalid task token/);
    const bare = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream" }, body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }) });
    assert.equal(bare.status, 401);
    assert.match(bare.headers.get("WWW-Authenticate") ?? "", /^Bearer/);
    assert.deepEqual(((await bare.json()) as { id: number; error: { code: number } }).error.code, -32001);
    await using live = await valet.declare(decl);
    const batch = await live.fetch(url, { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream" }, body: JSON.stringify([{ jsonrpc: "2.0", id: 1, method: "tools/list" }]) });
    assert.equal(batch.status, 400);
    await batch.body?.cancel();
    await client.close();
  });
});
