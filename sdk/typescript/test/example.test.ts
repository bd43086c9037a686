// The OpenAI Agents SDK example (examples/openai-agent.ts) with a scripted model, against a real `valet dev` and a
// tool server behind the Verifier.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Valet, Verifier } from "@valet-dev/valet";
import { protectHTTP, type ToolHandler } from "@valet-dev/valet/http";
import { ScriptedModel, triage } from "../examples/openai-agent.js";
import { audience, startValet, toolServerClient, type Dev } from "./harness.js";

const toolOf = (req: IncomingMessage) => (/^\/tickets\/[^/]+\/comments$/.test(req.url ?? "") ? "tickets.comment" : "tickets.read");

describe("OpenAI Agents SDK example", () => {
  let dev: Dev;
  let server: Server;
  let base: string;
  let verifier: Verifier;
  let stop: () => Promise<void>;
  const calls: { tool: string; status: number; agent?: string; task?: string }[] = [];
  let lastToken = "";

  before(async () => {
    dev = await startValet();
    // The tool server: protectHTTP checks each call for its tool, answers refusals and reports the calls.
    // The tool server: protectHTTP checks each call for its tool, answers refusals and reports the calls.
    const handler: ToolHandler = (req, res, { claims, describe }) => {
      lastToken = (req.headers.authorization ?? "").split(" ")[1] ?? "";
      if (req.method === "POST") describe({ sideEffect: "commented" });
      res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify({ id: /^\/tickets\/([^/]+)/.exec(req.url ?? "")?.[1], subject: "Refund not received", by: claims.actor, task: claims.taskId }));
      calls.push({ tool: toolOf(req), status: 200, agent: claims.actor, task: claims.taskId });
    };
    server = createServer((req, res) => {
      res.once("finish", () => { if (res.statusCode !== 200) calls.push({ tool: toolOf(req), status: res.statusCode }); });
      void protectHTTP(verifier, toolOf, handler)(req, res); // verifier is made once the port is known
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    verifier = new Verifier({ issuer: dev.url, audience, clientId: toolServerClient.id, clientSecret: toolServerClient.secret, publicUrl: base });
    stop = verifier.start().stop;
  });
  after(async () => {
    await stop?.();
    server?.close();
    await dev?.stop();
  });

  it("runs an agent whose tools use the task's token, refused outside the task, and completes the task", async () => {
    const valet = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-7"), dpop: true });
    const model = new ScriptedModel([
      { call: [{ name: "read_ticket", args: { ticket: "4521" } }] },
      { call: [{ name: "comment_ticket", args: { ticket: "4521", text: "looking into it" } }] },
      { answer: (results) => `ticket summary: ${results.join(" | ")}` },
    ]);
    const { output, taskId } = await triage({ valet, toolServer: base, model }, "4521");
    assert.match(output, /Refund not received/);
    assert.match(output, /refused by the tool server: 403/);
    assert.deepEqual(calls.map((c) => [c.tool, c.status]), [["tickets.read", 200], ["tickets.comment", 403]]);
    assert.equal(calls[0].agent, "agent-7");
    assert.equal(calls[0].task, taskId);
    assert.equal((await dev.introspect(lastToken)).active, false, "the task outlived the run");
    // protectHTTP reported the granted call (the refused one never reached the handler).
    const t0 = Date.now();
    while (verifier.reports.sent < 1 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
    assert.equal(verifier.reports.sent, 1);
  });
});
