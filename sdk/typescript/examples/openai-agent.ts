// A support agent built with the OpenAI Agents SDK (@openai/agents-core) whose tools call a tool server that
// Valet protects. The agent declares a task for the one ticket it works on, and its tools present that task's
// token (DPoP-bound when the Valet client has a key); the task is completed when the run ends, whatever happens.
// ScriptedModel stands in for the LLM so the example runs without a network (the test runs it that way); pass
// any Agents SDK model (e.g. OpenAIResponsesModel from @openai/agents-openai) in production.

import { Agent, Runner, tool, Usage, type Model, type ModelRequest, type ModelResponse } from "@openai/agents-core";
import { z } from "zod";
import type { Valet } from "@valet-dev/valet";

export interface TriageOptions {
  valet: Valet;
  /** The tool server's base URL. */
  toolServer: string;
  model: Model;
}

/** triage runs the support agent on one ticket inside a Valet task, and answers its final output and the task id. */
export async function triage(o: TriageOptions, ticket: string): Promise<{ output: string; taskId: string }> {
  await using task = await o.valet.declare(
    { template: "sdk", intent: `triage support ticket ${ticket}`, tools: ["tickets.read"], ttl_seconds: 300 },
    { autoRenew: true },
  );
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await task.fetch(o.toolServer + path, {
      method,
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    // The model sees a refusal as the tool's result, never the token.
    return res.ok ? await res.text() : `refused by the tool server: ${res.status} ${(await res.text()).slice(0, 200)}`;
  };
  const readTicket = tool({
    name: "read_ticket",
    description: "Read a support ticket by its id.",
    parameters: z.object({ ticket: z.string() }),
    execute: ({ ticket }) => call("GET", `/tickets/${encodeURIComponent(ticket)}`),
  });
  const commentTicket = tool({
    name: "comment_ticket",
    description: "Add a comment to a support ticket.",
    parameters: z.object({ ticket: z.string(), text: z.string() }),
    execute: ({ ticket, text }) => call("POST", `/tickets/${encodeURIComponent(ticket)}/comments`, { text }),
  });
  const agent = new Agent({
    name: "support-triage",
    instructions: "Read the ticket, then say what it is about.",
    model: o.model,
    tools: [readTicket, commentTicket],
  });
  const result = await new Runner({ tracingDisabled: true }).run(agent, `Triage ticket ${ticket}.`);
  return { output: String(result.finalOutput ?? ""), taskId: task.id };
}

/** A turn of ScriptedModel: tool calls to make, or the final answer built from the tool results so far. */
export type Turn = { call: { name: string; args: Record<string, unknown> }[] } | { answer: (toolResults: string[]) => string };

/** ScriptedModel plays a fixed script of turns instead of calling an LLM. */
export class ScriptedModel implements Model {
  private turn = 0;
  constructor(private readonly script: Turn[]) {}

  async getResponse(request: ModelRequest): Promise<ModelResponse> {
    const t = this.script[Math.min(this.turn, this.script.length - 1)];
    const n = this.turn++;
    if ("call" in t) {
      return {
        usage: new Usage(),
        output: t.call.map((c, i) => ({ type: "function_call" as const, callId: `call_${n}_${i}`, name: c.name, arguments: JSON.stringify(c.args), status: "completed" as const })),
      };
    }
    const results: string[] = [];
    for (const item of Array.isArray(request.input) ? request.input : []) {
      if (item.type === "function_call_result") {
        const out = item.output as unknown;
        results.push(typeof out === "string" ? out : typeof (out as { text?: unknown })?.text === "string" ? (out as { text: string }).text : JSON.stringify(out));
      }
    }
    return {
      usage: new Usage(),
      output: [{ type: "message", role: "assistant", status: "completed", content: [{ type: "output_text", text: t.answer(results) }] }],
    };
  }

  // eslint-disable-next-line require-yield
  async *getStreamedResponse(): AsyncIterable<never> {
    throw new Error("ScriptedModel does not stream");
  }
}
