// Valet's refusals as typed errors. No error built here ever holds a token:
// messages come from Valet's Error body (which never echoes one) or a
// bounded quote of an answer that is not in that shape.

/** The codes of Valet's Error body (openapi.yaml components/schemas/Error), and OAuth error codes of the token endpoint. */
export type ValetErrorCode =
  | "invalid_request" | "unauthenticated" | "forbidden" | "not_found" | "method_not_allowed" | "conflict"
  | "too_large" | "unsupported_media" | "unavailable" | "internal" | "unsupported_token_type" | "too_many_requests"
  | (string & {});

/**
 * A refusal by Valet: the HTTP status and the body's code, message, rule (the policy rule or control that
 * decided), field (the part of the request that was wrong) and request id (the key to Valet's log and audit).
 */
export class ValetError extends Error {
  override readonly name = "ValetError";
  constructor(
    /** The HTTP status; 0 when Valet could not be reached (code network or timeout). */
    readonly status: number,
    readonly code: ValetErrorCode,
    /** The message Valet sent, safe to show; message adds the status, code, rule, field and request id. */
    readonly detail: string,
    readonly rule?: string,
    readonly field?: string,
    readonly requestId?: string,
  ) {
    super(describe(status, code, detail, rule, field, requestId));
  }
}

function describe(status: number, code: string, message: string, rule?: string, field?: string, requestId?: string): string {
  let s = `valet: ${status} ${code}: ${message}`;
  if (rule) s += ` (rule ${rule})`;
  if (field) s += ` (field ${field})`;
  if (requestId) s += ` [request ${requestId}]`;
  return s;
}

/** How much of an unexpected answer an error quotes. */
const maxQuoted = 256;

/** refusal turns a non-success answer into a ValetError, from Valet's Error body or an OAuth error body. */
export function refusal(status: number, body: string, headerRequestId?: string | null): ValetError {
  let e: Record<string, unknown> | undefined;
  try {
    const parsed: unknown = JSON.parse(body);
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) e = parsed as Record<string, unknown>;
  } catch {
    e = undefined;
  }
  const str = (k: string) => (e && typeof e[k] === "string" ? (e[k] as string).slice(0, 1024) : undefined);
  const code = str("error");
  const requestId = str("request_id") ?? headerRequestId?.slice(0, 64) ?? undefined;
  if (!code) {
    const quoted = body.length > maxQuoted ? body.slice(0, maxQuoted) + "..." : body;
    return new ValetError(status, `http_${status}`, JSON.stringify(quoted), undefined, undefined, requestId);
  }
  return new ValetError(status, code, str("message") ?? str("error_description") ?? "", str("rule"), str("field"), requestId);
}
