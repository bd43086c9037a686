// Middleware for plain Node HTTP tool servers, as Go's verify.Middleware: check every request for the tool it
// calls, answer refusals with their status, challenge and JSON body, and report each checked call to Valet
// after the handler answered.

import type { IncomingMessage, ServerResponse } from "node:http";
import type { Claims, Effect, Verifier } from "./verifier.js";

/** What a protected handler gets besides the request and response. */
export interface CallContext {
  claims: Claims;
  /** describe records the call's side effect and how to undo it, for the report sent after the handler. */
  describe(e: Effect): void;
}

export type ToolHandler = (req: IncomingMessage, res: ServerResponse, ctx: CallContext) => Promise<void> | void;

/**
 * protectHTTP answers a Node request handler that checks each request with verifier.check(req, tool(req)) and
 * then runs handler; after the response is finished it queues a report of the call (verifier.start sends them).
 * A handler that throws before answering gets a 500.
 */
export function protectHTTP(verifier: Verifier, tool: (req: IncomingMessage) => string, handler: ToolHandler) {
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const name = tool(req);
    let claims: Claims;
    try {
      claims = await verifier.check(req, name);
    } catch (err) {
      const r = verifier.refusal(req, err);
      res.writeHead(r.status, r.headers).end(r.body);
      return;
    }
    let effect: Effect = {};
    res.once("finish", () => verifier.report(req, claims, name, res.statusCode, effect));
    try {
      await handler(req, res, { claims, describe: (e) => { effect = e; } });
    } catch {
      if (!res.headersSent) res.writeHead(500, { "Content-Type": "application/json" }).end(JSON.stringify({ error: "Internal Server Error", message: "internal error" }));
      else res.end();
    }
  };
}
