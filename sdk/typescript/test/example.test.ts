// The OpenAI Agents SDK example (examples/openai-agent.ts) with a scripted model, against a real `valet dev` and a
// tool server behind the Verifier.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Valet, Verifier } from "@valet-dev/valet";
import { ScriptedModel, triage } from "../examples/openai-agent.js";
import { audience, startValet, toolServerClient, type Dev } from "./harness.js";

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
    server = createServer(async (req, res) => {
      const m = /^\/tickets\/([^/]+)(\/comments)?$/.exec(req.url ?? "");
      const tool = m?.[2] ? "tickets.comment" : "tickets.read";
      try {
        const c = await verifier.check(req, tool);
        lastToken = (req.headers.authorization ?? "").split(" ")[1] ?? "";
        calls.push({ tool, status: 200, agent: c.actor, task: c.taskId });
        res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify({ id: m?.[1], subject: "Refund not received", by: c.actor }));
        verifier.report(req, c, tool, 200);
      } catch (err) {
        const r = verifier.refusal(req, err);
        calls.push({ tool, status: r.status });
        res.writeHead(r.status, r.headers).end(r.body);
      }
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
  });
});
