// An adapter for MCP servers on the Streamable HTTP transport of
// @modelcontextprotocol/sdk (or any Node HTTP handler of JSON-RPC): every
// request needs a live task token; a tools/call needs the tool granted, or,
// for a sensitive tool, a one-shot action token for exactly its arguments.
// The body is parsed once here and that same value is handed on, so the
// server never acts on another tool or arguments than the ones checked.

import type { IncomingMessage, ServerResponse } from "node:http";
import { requestInfo, tokenOf, VerifyError, type Claims, type Verifier } from "./verifier.js";

/** The MCP SDK's AuthInfo shape (what tool handlers read as extra.authInfo), with Valet's claims in extra. */
export interface ValetAuthInfo {
  token: string;
  clientId: string;
  scopes: string[];
  expiresAt?: number;
  resource?: URL;
  extra: { claims: Claims };
}

/** Handles a checked request: e.g. (req, res, body) => transport.handleRequest(req, res, body). */
export type MCPHandler = (req: IncomingMessage & { auth?: ValetAuthInfo }, res: ServerResponse, body: unknown) => Promise<void> | void;

export interface MCPOptions {
  /** Bounds a POSTed JSON-RPC message (default 1 MiB); a longer one is refused with 413. */
  maxBody?: number;
}

const defaultMaxBody = 1 << 20;

/**
 * protectMCP wraps an MCP server's Streamable HTTP handler with the verifier. Refusals keep their HTTP status
 * and WWW-Authenticate challenge and carry a JSON-RPC error (code -32001, the request's id when known). Batches
 * are refused (MCP 2025-06-18 dropped them). Each tool call is reported to Valet (verifier.run sends them).
 */
export function protectMCP(verifier: Verifier, handler: MCPHandler, opts: MCPOptions = {}) {
  const limit = opts.maxBody ?? defaultMaxBody;
  return async (req: IncomingMessage & { auth?: ValetAuthInfo }, res: ServerResponse): Promise<void> => {
    let body: unknown;
    let id: unknown = null;
    let tool = "";
    let args: unknown;
    if (!tokenOf(requestInfo(req)).token) {
      // Nothing is read for a caller without a token.
      return refuse(verifier, req, res, new VerifyError(401, "a task token is required", "no Authorization header"), null);
    }
    if (req.method === "POST") {
      let text: string;
      try {
        text = await readBody(req, limit);
      } catch (err) {
        const tooLarge = err instanceof RangeError;
        return rpcError(res, tooLarge ? 413 : 400, tooLarge ? -32600 : -32700, tooLarge ? `the JSON-RPC message is longer than ${limit} bytes` : "the request body cannot be read", null);
      }
      try {
        body = JSON.parse(text);
      } catch {
        return rpcError(res, 400, -32700, "the JSON-RPC message is not JSON", null);
      }
      if (Array.isArray(body)) return rpcError(res, 400, -32600, "JSON-RPC batches are not accepted", null);
      if (!body || typeof body !== "object") return rpcError(res, 400, -32600, "the JSON-RPC message is not an object", null);
      const m = body as { jsonrpc?: unknown; method?: unknown; id?: unknown; params?: { name?: unknown; arguments?: unknown } };
      if (m.jsonrpc !== "2.0") return rpcError(res, 400, -32600, 'the JSON-RPC message needs "jsonrpc": "2.0"', null);
      if ((typeof m.id === "string" && m.id.length <= 128) || typeof m.id === "number") id = m.id;
      if (m.method !== undefined && (typeof m.method !== "string" || m.method === "" || m.method.length > 128)) {
        return rpcError(res, 400, -32600, "method must be a string of 1 to 128 bytes", id);
      }
      if (m.method === "tools/call") {
        if (typeof m.params?.name !== "string" || m.params.name === "" || m.params.name.length > 512) {
          return rpcError(res, 400, -32602, "tools/call needs params.name", id);
        }
        tool = m.params.name;
        args = m.params.arguments;
      }
      const hm = header(req, "mcp-method");
      const hn = header(req, "mcp-name");
      if ((hm !== undefined && hm !== (m.method ?? "")) || (hn !== undefined && tool && hn !== tool)) {
        return rpcError(res, 400, -32001, "the Mcp-Method or Mcp-Name header does not agree with the body", id);
      }
    }
    let claims: Claims;
    try {
      claims = tool ? await verifier.checkCall(req, tool, args) : await verifier.checkSession(req);
    } catch (err) {
      return refuse(verifier, req, res, err, id);
    }
    const token = (header(req, "authorization") ?? "").replace(/^\S+\s+/, "");
    req.auth = { token, clientId: claims.actor, scopes: claims.tools, expiresAt: Math.floor(claims.expiresAt.getTime() / 1000), extra: { claims } };
    await handler(req, res, body);
    if (tool) {
      const report = () => verifier.report(req, claims, tool, res.statusCode || 200);
      if (res.writableFinished) report();
      else res.once("finish", report);
    }
  };
}

/** refuse answers a refusal: its status and challenge, and a JSON-RPC error as the body. */
function refuse(verifier: Verifier, req: IncomingMessage, res: ServerResponse, err: unknown, id: unknown): void {
  const r = verifier.refusal(req, err);
  for (const [k, v] of Object.entries(r.headers)) res.setHeader(k, v);
  rpcError(res, r.status, -32001, err instanceof VerifyError ? err.message : "internal error", id);
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(", ") : v;
}

function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on("data", (c: Buffer) => {
      n += c.length;
      if (n > limit) {
        req.removeAllListeners("data");
        req.resume();
        reject(new RangeError("too large"));
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function rpcError(res: ServerResponse, status: number, code: number, message: string, id: unknown): void {
  res.statusCode = status;
  res.setHeader("Content-Type", "application/json");
  res.end(JSON.stringify({ jsonrpc: "2.0", id, error: { code, message } }));
}
