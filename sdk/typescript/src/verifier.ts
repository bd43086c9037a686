// The tool-server verifier, with the semantics of Valet's Go package verify:
// a task token is checked against Valet's published keys (fetched once and
// cached), its issuer, audience and times, the tool being called, its DPoP
// proof when it is bound to a key, and revocation through a local deny set
// fed by Valet's revocation feed: no call to Valet per check once the feed
// is live, introspection until then. Sensitive tools need a one-shot action
// token, consumed at Valet (the one call such a tool costs).

import { canonicalArgs, sha256B64url } from "./canonical.js";
import { decodeJWS, importJWK, thumbprint, verifySignature, type JWK } from "./jose.js";

export interface VerifierOptions {
  /** Valet's public URL, the iss of its tokens. */
  issuer: string;
  /** This tool server's audience; a token must name it. */
  audience: string;
  /** An introspection client of Valet: introspection, the revocation feed, action tokens and reports. */
  clientId: string;
  clientSecret: string;
  /**
   * This server's own base URL as its clients call it, for the htu of DPoP proofs. Without it, DPoP-bound task
   * tokens are refused: the Host header is the client's to choose.
   */
  publicUrl?: string;
  /** The fetch to use for every call to Valet (default the global one). */
  fetch?: typeof fetch;
  /** Bounds each call to Valet but the stream (default 5 s). */
  timeoutMs?: number;
  /** The clock, in ms since the epoch (default Date.now). */
  now?: () => number;
  /** Where warnings go (refusals, a broken feed); never given a token. Default: nowhere. */
  log?: (level: "info" | "warn", msg: string, attrs?: Record<string, unknown>) => void;
}

/** The claims of a checked task token. */
export interface Claims {
  id: string;
  taskId: string;
  subject: string;
  template: string;
  agentIssuer: string;
  scope: string;
  jkt: string;
  tools: string[];
  actionTools: string[];
  audience: string[];
  /** The RFC 8693 actor chain, current actor first. */
  act: string[];
  issuedAt: Date;
  expiresAt: Date;
  /** The agent holding the token: the first actor, else the subject. */
  actor: string;
}

/**
 * A refusal: status 401 (token), 403 (tool not granted, action token), 503 (Valet could not be asked and
 * nothing is known). message is safe to send; reason is for the log and never holds a token.
 */
export class VerifyError extends Error {
  override readonly name = "VerifyError";
  constructor(
    readonly status: number,
    message: string,
    readonly reason?: string,
    /** On a 403: the scope that would grant the call, for the insufficient_scope challenge. */
    readonly scope?: string,
    /** Answer without a WWW-Authenticate challenge (a missing or refused action token). */
    readonly noChallenge = false,
  ) {
    super(message);
  }
}

/** What the verifier reads of a request: a fetch Request, a Node IncomingMessage, or this. */
export interface RequestInfo {
  method: string;
  /** The request target's path (query and fragment ignored). */
  path: string;
  header(name: string): string | undefined;
}

type NodeLike = { method?: string; url?: string; headers: Record<string, string | string[] | undefined> };
type WebLike = { method: string; url: string; headers: { get(name: string): string | null } };

/** requestInfo reads a fetch Request or a Node IncomingMessage. */
export function requestInfo(r: RequestInfo | NodeLike | WebLike): RequestInfo {
  if ("header" in r && typeof r.header === "function") return r as RequestInfo;
  const h = (r as { headers?: unknown }).headers;
  if (h && typeof (h as { get?: unknown }).get === "function") {
    const w = r as WebLike;
    return { method: w.method, path: new URL(w.url).pathname, header: (n) => w.headers.get(n) ?? undefined };
  }
  const n = r as NodeLike;
  const raw = n.url ?? "/";
  const q = raw.search(/[?#]/);
  return {
    method: n.method ?? "GET",
    path: q < 0 ? raw : raw.slice(0, q),
    header: (name) => {
      const v = n.headers[name.toLowerCase()];
      return Array.isArray(v) ? v.join(", ") : v;
    },
  };
}

/** What a handler says its call did, for the report Valet keeps (and how to undo it on rollback). */
export interface Effect {
  sideEffect?: string;
  undo?: { url: string; method: string; body?: string; content_type?: string };
}

/** Counts of the verifier's calls to Valet, by kind. */
export interface CallCounts {
  jwks: number;
  introspect: number;
  consume: number;
  snapshot: number;
  stream: number;
  report: number;
  /** Polls of an SSF stream (followSSF). */
  ssf: number;
}

/**
 * SSFStream is a poll stream (delivery urn:ietf:rfc:8936) on Valet's Shared Signals transmitter that the verifier
 * follows instead of the revocation feed, created for this tool server: each poll acknowledges what it applied,
 * so one stream per follower. Mirrors Go's verify.SSFStream.
 */
export interface SSFStream {
  /** The stream's delivery endpoint_url (Valet's /ssf/poll/{stream_id}). */
  pollUrl: string;
  /** The stream's aud: every SET must name it. */
  audience: string;
  /** The Authorization header of a poll (a bearer token of a viewer of Valet's admin API); called before each poll. */
  authorization: () => string | Promise<string>;
}

const jwksMinRefreshMs = 30_000;
const maxToken = 8192;
/** How many verified token signatures the verifier remembers. */
const maxSigned = 10_000;
const dpopWindowS = 60;
const reportQueue = 1024;
/** How recent the last stream read must be for a reconnection to resume from the last event id. */
const resumeWithinMs = 60_000;
/**
 * A feed or SSF stream not heard from for this long is stale: checks go back to introspection (Valet sends a
 * keepalive every 15 s and answers a poll within 2 s). The Python SDK's STREAM_IDLE.
 */
const staleAfterMs = 45_000;
/** The SSF event types the follower applies (CAEP 1.0, RISC 1.0), as Go's verify. */
const ssfSessionRevoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const ssfCredentialChange = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
const ssfAccountDisabled = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
const ssfAccountEnabled = "https://schemas.openid.net/secevent/risc/event-type/account-enabled";
/** How far this clock may lag Valet's, in seconds: a token's iat and nbf may be that far ahead (as the Go verify.ClockSkew). */
export const clockSkewS = 5;

/** Bounds of an SET and its poll, as Valet's own SSF receiver: size, clock leeway, age (also how long a jti is remembered), events. */
const maxSET = 16 << 10;
const setLeewayS = 30;
const setMaxAgeS = 24 * 3600;
const maxSETEvents = 8;
const maxSSFPoll = 100;
/** How long Valet holds a poll without SETs (ssf.maxPollWait). */
const ssfPollHoldMs = 2000;
const dpopAlgs = ["EdDSA", "ES256", "ES384", "RS256", "PS256"];
const tokenAlgs = ["EdDSA", "ES256"];

/** ActionHeader carries the one-shot action token of a sensitive tool call. */
export const actionHeader = "Valet-Action";

export class Verifier {
  readonly issuer: string;
  private readonly o: Required<Omit<VerifierOptions, "publicUrl" | "log">> & Pick<VerifierOptions, "publicUrl" | "log">;
  private keys = new Map<string, { key: CryptoKey; alg?: string }>();
  /**
   * signed remembers the payloads of tokens whose signature verified, by typ and token, so a token seen again
   * costs no signature check (its claims, times and revocation are still checked every time). Cleared when
   * the keys are refetched, so a key Valet dropped stops counting.
   */
  private signed = new Map<string, Record<string, unknown>>();
  private lastFetch = 0;
  private inflight?: Promise<void>;
  private deny = new DenySet();
  private proofs = new Map<string, number>();
  private queue: { taskId: string; scheme: string; token: string; body: string }[] = [];
  private queueWake?: () => void;
  /** Calls made to Valet, by kind. */
  readonly calls: CallCounts = { jwks: 0, introspect: 0, consume: 0, snapshot: 0, stream: 0, report: 0, ssf: 0 };
  /** The jtis of the SETs applied, until iat + 24 h: a SET is applied once. */
  private setsSeen = new Map<string, number>();
  /** Reports of tool calls sent (accepted), dropped (queue full) and failed. */
  readonly reports = { sent: 0, dropped: 0, failed: 0 };

  constructor(opts: VerifierOptions) {
    const errs: string[] = [];
    if (!isAbsolute(opts.issuer)) errs.push(`issuer ${JSON.stringify(String(opts.issuer).slice(0, 200))} must be an absolute URL`);
    if (!opts.audience) errs.push("audience is required");
    if (!opts.clientId || !opts.clientSecret) errs.push("client id and secret are required (introspection and the revocation feed)");
    if (opts.publicUrl !== undefined) {
      let ok = false;
      try {
        const u = new URL(opts.publicUrl);
        ok = (u.protocol === "https:" || u.protocol === "http:") && !u.username && !u.password && !u.search && !u.hash;
      } catch {
        ok = false;
      }
      if (!ok) errs.push(`public URL ${JSON.stringify(String(opts.publicUrl).slice(0, 200))} must be an absolute http(s) URL without user, query or fragment`);
    }
    if (errs.length) throw new TypeError("verify: " + errs.join("; "));
    this.issuer = opts.issuer.replace(/\/+$/, "");
    this.o = { ...opts, fetch: opts.fetch ?? globalThis.fetch, timeoutMs: opts.timeoutMs ?? 5000, now: opts.now ?? Date.now };
    if (!opts.publicUrl) this.o.log?.("warn", "verify: no publicUrl configured; DPoP-bound task tokens will be refused");
  }

  /**
   * live reports whether the deny set is fed (checks then ask no one): the feed is connected, or the last SSF poll
   * answered, and either was heard from within the last 45 s.
   */
  get live(): boolean {
    return this.deny.fresh();
  }

  /**
   * check checks the request's task token for a call of tool. It throws a VerifyError with the status to answer;
   * once the feed is live, a check costs no call to Valet (but the JWKS fetch of a key never seen).
   */
  async check(req: RequestInfo | NodeLike | WebLike, tool: string): Promise<Claims> {
    const r = requestInfo(req);
    const c = await this.checkToken(r);
    checkTool(c, tool);
    await this.checkRevoked(tokenOf(r).token, c);
    return c;
  }

  /**
   * checkAction checks a call of a sensitive tool, never in a task token's tools: the task token as check does,
   * and the one-shot action token in the Valet-Action header, for this task, tool, exactly args (hashed in
   * canonical form) and DPoP key; then consumes it at Valet, so it works once.
   */
  async checkAction(req: RequestInfo | NodeLike | WebLike, tool: string, args: unknown): Promise<Claims> {
    const r = requestInfo(req);
    const c = await this.checkToken(r);
    let canon: string;
    try {
      canon = canonicalArgs(args);
    } catch (err) {
      throw new VerifyError(400, "the tool's arguments are not a JSON object", String(err));
    }
    await this.checkActionToken(r, c, tool, canon);
    return c;
  }

  /**
   * checkCall is what an MCP tools/call needs: an ordinary granted tool as check does, a sensitive one (in the
   * token's action_tools) as checkAction does.
   */
  async checkCall(req: RequestInfo | NodeLike | WebLike, tool: string, args: unknown): Promise<Claims> {
    const r = requestInfo(req);
    const c = await this.checkToken(r);
    if (!c.tools.includes(tool) && c.actionTools.includes(tool)) {
      let canon: string;
      try {
        canon = canonicalArgs(args);
      } catch (err) {
        throw new VerifyError(400, "the tool's arguments are not a JSON object", String(err));
      }
      try {
        await this.checkActionToken(r, c, tool, canon);
      } catch (err) {
        // The tool is granted; what is missing is a valid action token, which no other scope would give.
        if (err instanceof VerifyError && err.status === 403) throw new VerifyError(403, err.message, err.reason, undefined, true);
        throw err;
      }
      return c;
    }
    checkTool(c, tool);
    await this.checkRevoked(tokenOf(r).token, c);
    return c;
  }

  /** checkSession checks the task token and revocation only (an MCP initialize, tools/list, a GET stream). */
  async checkSession(req: RequestInfo | NodeLike | WebLike): Promise<Claims> {
    const r = requestInfo(req);
    const c = await this.checkToken(r);
    await this.checkRevoked(tokenOf(r).token, c);
    return c;
  }

  private async checkToken(r: RequestInfo): Promise<Claims> {
    const { token: raw, scheme } = tokenOf(r);
    if (!raw) throw new VerifyError(401, "a task token is required", "no Authorization header");
    if (raw.length > maxToken) throw new VerifyError(401, "invalid task token", "token too long");
    const p = await this.verifyJWT(raw, "at+jwt").catch((err: unknown) => {
      throw err instanceof VerifyError ? err : new VerifyError(401, "invalid task token", reasonOf(err));
    });
    const str = (k: string) => (typeof p[k] === "string" ? (p[k] as string) : "");
    const strs = (k: string): string[] => {
      const v = p[k];
      if (v === undefined || v === null) return [];
      if (!Array.isArray(v) || v.some((e) => typeof e !== "string")) throw new VerifyError(401, "invalid task token", `claim ${k} is not a list of strings`);
      return v as string[];
    };
    const c: Claims = {
      id: str("jti"), taskId: str("task_id"), subject: str("sub"), template: str("template"), agentIssuer: str("agent_issuer"),
      scope: str("scope"), jkt: "", tools: strs("tools"), actionTools: strs("action_tools"),
      audience: typeof p.aud === "string" ? [p.aud] : strs("aud"), act: [],
      // A token without iat counts as issued at the epoch: every revoked-before epoch covers it (fail closed).
      issuedAt: new Date(typeof p.iat === "number" ? p.iat * 1000 : 0), expiresAt: new Date(Number(p.exp) * 1000), actor: "",
    };
    if (!c.id || !c.taskId || !c.subject) throw new VerifyError(401, "invalid task token", "missing jti, task_id or sub");
    let a = p.act as { sub?: unknown; act?: unknown } | undefined;
    for (let n = 0; a !== undefined && a !== null; n++) {
      if (typeof a !== "object" || typeof a.sub !== "string" || a.sub === "" || n >= 32) throw new VerifyError(401, "invalid task token", "bad act claim");
      c.act.push(a.sub);
      a = a.act as typeof a;
    }
    c.actor = c.act[0] ?? c.subject;
    if (p.cnf !== undefined) {
      const jkt = (p.cnf as { jkt?: unknown } | null)?.jkt;
      if (typeof jkt !== "string" || jkt === "") throw new VerifyError(401, "invalid task token", "cnf without jkt");
      c.jkt = jkt;
      if (!this.o.publicUrl) throw new VerifyError(401, "this tool server does not accept key-bound (DPoP) tokens", "bound token, but no publicUrl is configured");
      if (scheme.toLowerCase() !== "dpop") throw new VerifyError(401, "this token is bound to a key: send it with the DPoP scheme and a proof", "bound token sent as Bearer");
      await this.checkProof(r, raw, jkt);
    }
    return c;
  }

  /** verifyJWT checks a Valet JWT's header, signature, iss, aud and times, and answers its payload. */
  private async verifyJWT(raw: string, typ: string): Promise<Record<string, unknown>> {
    let p = this.signed.get(typ + " " + raw);
    if (!p) {
      const d = decodeJWS(raw);
      const alg = d.header.alg;
      if (typeof alg !== "string" || !tokenAlgs.includes(alg)) throw new Error("signing method not accepted");
      if (d.header.typ !== typ) throw new Error(`typ must be ${typ}`);
      if ("crit" in d.header) throw new Error("crit header is not supported");
      const kid = d.header.kid;
      if (typeof kid !== "string" || kid === "") throw new Error("no kid");
      const k = await this.key(kid);
      if (k.alg && k.alg !== alg) throw new Error("alg does not match the key");
      if (!(await verifySignature(d, k.key, alg))) throw new Error("signature is invalid");
      p = d.payload;
      if (this.signed.size >= maxSigned) this.signed.clear();
      this.signed.set(typ + " " + raw, p);
    }
    const now = this.o.now() / 1000;
    if (p.iss !== this.issuer) throw new Error("issuer mismatch");
    const aud = typeof p.aud === "string" ? [p.aud] : Array.isArray(p.aud) ? p.aud : [];
    if (!aud.includes(this.o.audience)) throw new Error("audience mismatch");
    if (typeof p.exp !== "number") throw new Error("exp is required");
    if (now >= p.exp) throw new Error("token is expired");
    // iat and nbf may be up to clockSkewS ahead (Valet stamps whole seconds, and this clock may lag Valet's); exp gets no leeway.
    if (p.iat !== undefined && (typeof p.iat !== "number" || p.iat > now + clockSkewS)) throw new Error("token used before issued");
    if (p.nbf !== undefined && (typeof p.nbf !== "number" || p.nbf > now + clockSkewS)) throw new Error("token is not valid yet");
    return p;
  }

  /** key finds the key of kid, fetching the JWKS when kid is unknown, at most once per 30 s and one fetch at a time. */
  private async key(kid: string): Promise<{ key: CryptoKey; alg?: string }> {
    let k = this.keys.get(kid);
    if (k) return k;
    await this.refreshKeys();
    k = this.keys.get(kid);
    if (!k) throw new Error(`kid ${JSON.stringify(kid.slice(0, 64))} unknown`);
    return k;
  }

  private refreshKeys(): Promise<void> {
    if (this.inflight) return this.inflight;
    const now = this.o.now();
    if (this.lastFetch && now - this.lastFetch < jwksMinRefreshMs) {
      return Promise.reject(new Error(`unknown kid (JWKS fetched ${Math.round((now - this.lastFetch) / 1000)} s ago)`));
    }
    this.lastFetch = now;
    this.inflight = (async () => {
      try {
        this.calls.jwks++;
        const res = await this.o.fetch(this.issuer + "/.well-known/jwks.json", { signal: AbortSignal.timeout(this.o.timeoutMs) });
        if (res.status !== 200) throw new Error(`fetching JWKS: status ${res.status}`);
        const set = (await readJSON(res, 1 << 20)) as { keys?: JWK[] };
        const keys = new Map<string, { key: CryptoKey; alg?: string }>();
        for (const jwk of Array.isArray(set.keys) ? set.keys : []) {
          if (!jwk || typeof jwk.kid !== "string" || jwk.kid === "" || jwk.d !== undefined) continue;
          const alg = jwk.alg ?? (jwk.kty === "OKP" ? "EdDSA" : jwk.kty === "EC" && jwk.crv === "P-256" ? "ES256" : undefined);
          if (!alg || !tokenAlgs.includes(alg)) continue;
          try {
            keys.set(jwk.kid, { key: await importJWK(jwk, alg), alg });
          } catch {
            // an unusable key is skipped, as Go's JSONWebKey.Valid does
          }
        }
        this.keys = keys;
        this.signed.clear();
      } finally {
        this.inflight = undefined;
      }
    })();
    return this.inflight;
  }

  private async checkProof(r: RequestInfo, raw: string, jkt: string): Promise<void> {
    const proof = r.header("DPoP");
    const bad = (reason: string) => new VerifyError(401, "invalid DPoP proof", reason);
    if (!proof || proof.includes(",")) throw bad("no single DPoP header");
    let d;
    try {
      d = decodeJWS(proof);
    } catch (err) {
      throw bad(reasonOf(err));
    }
    const h = d.header;
    const alg = h.alg;
    if (h.typ !== "dpop+jwt") throw bad("typ must be dpop+jwt");
    if (typeof alg !== "string" || !dpopAlgs.includes(alg)) throw bad("alg not accepted");
    const jwk = h.jwk as JWK | undefined;
    if (!jwk || typeof jwk !== "object") throw bad("no jwk");
    let ok = false;
    try {
      ok = await verifySignature(d, await importJWK(jwk, alg), alg);
    } catch (err) {
      throw bad(reasonOf(err));
    }
    if (!ok) throw bad("signature is invalid");
    const c = d.payload;
    const now = this.o.now() / 1000;
    if (typeof c.jti !== "string" || c.jti === "") throw bad("no jti");
    if (c.htm !== r.method) throw bad("htm does not match the request method");
    const want = normalizeURL(this.o.publicUrl!.replace(/\/+$/, "") + r.path);
    if (typeof c.htu !== "string" || normalizeURL(c.htu) !== want) throw bad("htu does not match the request URL");
    if (typeof c.iat !== "number" || Math.abs(c.iat - now) > dpopWindowS) throw bad(`iat is more than ${dpopWindowS}s from now`);
    if (c.ath !== (await sha256B64url(raw))) throw bad("ath does not match the access token");
    const got = await thumbprint(jwk);
    if (got !== jkt) throw bad("proof key does not match cnf.jkt");
    // Replay: a proof's jti is accepted once while its iat is within the window.
    const k = got + ":" + c.jti;
    const until = this.proofs.get(k);
    if (until !== undefined && now <= until) throw bad("proof jti replayed");
    if (this.proofs.size > 10_000) for (const [kk, u] of this.proofs) if (now > u) this.proofs.delete(kk);
    this.proofs.set(k, c.iat + 2 * dpopWindowS);
  }

  /** checkRevoked consults the deny set when the feed is live, else Valet's introspection. */
  private async checkRevoked(raw: string, c: Claims): Promise<void> {
    if (this.deny.fresh()) {
      if (this.deny.denied(c)) throw new VerifyError(401, "invalid task token", "revoked (feed)");
      const { deny, unsure } = this.deny.controlled(c);
      if (deny) throw new VerifyError(401, "invalid task token", "under an incident control (feed)");
      if (!unsure) return;
      // A control may cover a link whose issuer the token does not name: Valet knows.
    }
    let active: boolean;
    try {
      this.calls.introspect++;
      active = ((await this.postToken("/v1/introspect", raw)) as { active?: unknown }).active === true;
    } catch (err) {
      throw new VerifyError(503, "Valet cannot be reached to check revocation", "introspecting: " + reasonOf(err));
    }
    if (!active) throw new VerifyError(401, "invalid task token", "revoked (introspection)");
  }

  private async checkActionToken(r: RequestInfo, c: Claims, tool: string, canon: string): Promise<void> {
    if (!tool || !c.actionTools.includes(tool)) throw new VerifyError(403, `tool ${JSON.stringify(tool.slice(0, 128))} is not granted to this task`);
    await this.checkRevoked(tokenOf(r).token, c);
    const raw = (r.header(actionHeader) ?? "").trim();
    if (!raw) throw new VerifyError(403, `tool ${JSON.stringify(tool.slice(0, 128))} needs an action token (header ${actionHeader})`, "no action token");
    if (raw.length > maxToken) throw new VerifyError(403, "invalid action token", "action token too long");
    let a: Record<string, unknown>;
    try {
      a = await this.verifyJWT(raw, "action+jwt");
    } catch (err) {
      throw new VerifyError(403, "invalid action token", reasonOf(err));
    }
    const jkt = (a.cnf as { jkt?: unknown } | undefined)?.jkt ?? "";
    if (!a.jti || !a.task_id) throw new VerifyError(403, "invalid action token", "missing jti or task_id");
    if (a.task_id !== c.taskId) throw new VerifyError(403, "the action token is for another task");
    if (a.tool !== tool) throw new VerifyError(403, `the action token is not for tool ${JSON.stringify(tool.slice(0, 128))}`);
    if (a.args_hash !== (await sha256B64url(canon))) throw new VerifyError(403, "the action token is for other arguments");
    if (jkt !== c.jkt) throw new VerifyError(403, "the action token is bound to another key");
    let consumed: boolean;
    try {
      this.calls.consume++;
      consumed = ((await this.postToken("/v1/actions/consume", raw)) as { consumed?: unknown }).consumed === true;
    } catch (err) {
      throw new VerifyError(503, "Valet cannot be reached to use the action token", "consuming: " + reasonOf(err));
    }
    if (!consumed) throw new VerifyError(403, "the action token was used already, expired or was revoked");
  }

  private basic(): string {
    // As Go's SetBasicAuth: id:secret, UTF-8, base64.
    return "Basic " + btoa(String.fromCharCode(...new TextEncoder().encode(`${this.o.clientId}:${this.o.clientSecret}`)));
  }

  private async postToken(path: string, raw: string): Promise<unknown> {
    const res = await this.o.fetch(this.issuer + path, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Authorization: this.basic() },
      body: new URLSearchParams({ token: raw }).toString(),
      signal: AbortSignal.timeout(this.o.timeoutMs),
    });
    if (res.status !== 200) {
      await res.body?.cancel();
      throw new Error(`status ${res.status}`);
    }
    return readJSON(res, 1 << 20);
  }

  /**
   * challenge is the WWW-Authenticate value for a refusal of a request (RFC 6750, RFC 9449), or "" for none.
   */
  challenge(req: RequestInfo | NodeLike | WebLike, e: VerifyError): string {
    const r = requestInfo(req);
    const { token, scheme } = tokenOf(r);
    const params = (...kv: string[]) => {
      const parts: string[] = [];
      for (let i = 0; i + 1 < kv.length; i += 2) if (kv[i + 1]) parts.push(`${kv[i]}=${quote(kv[i + 1])}`);
      return parts.join(", ");
    };
    const md = this.resourceMetadataURL();
    if (e.noChallenge) return "";
    if (e.status === 401) {
      const dp = scheme.toLowerCase() === "dpop";
      const bearer = ("Bearer " + params("resource_metadata", md, "error", token && !dp ? "invalid_token" : "")).trimEnd();
      return bearer + ", DPoP " + params("algs", dpopAlgs.join(" "), "resource_metadata", md, "error", token && dp ? "invalid_token" : "");
    }
    if (e.status === 403) {
      return (scheme.toLowerCase() === "dpop" ? "DPoP " : "Bearer ") + params("error", "insufficient_scope", "scope", e.scope ?? "", "resource_metadata", md);
    }
    return "";
  }

  /** resourceMetadataURL is this server's RFC 9728 metadata URL (needs publicUrl), or "". */
  resourceMetadataURL(): string {
    if (!this.o.publicUrl) return "";
    const u = new URL(this.o.publicUrl);
    const path = u.pathname.replace(/\/+$/, "");
    return `${u.origin}/.well-known/oauth-protected-resource${path}`;
  }

  /** refusal is the status, headers and JSON body that answer a refused request (for plain HTTP tool servers). */
  refusal(req: RequestInfo | NodeLike | WebLike, err: unknown): { status: number; headers: Record<string, string>; body: string } {
    const e = err instanceof VerifyError ? err : new VerifyError(500, "internal error", reasonOf(err));
    this.o.log?.("warn", "tool call refused", { status: e.status, reason: `${e.message}: ${e.reason ?? ""}` });
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    const ch = this.challenge(req, e);
    if (ch) headers["WWW-Authenticate"] = ch;
    return { status: e.status, headers, body: JSON.stringify({ error: statusText(e.status), message: e.message }) };
  }

  // ---- Tool-call reports ----

  /**
   * report queues a report of a call of tool checked on req, which the handler answered with status; it never
   * blocks (a full queue drops it and counts it). run() sends them.
   */
  report(req: RequestInfo | NodeLike | WebLike, c: Claims, tool: string, status: number, e: Effect = {}): void {
    const { token, scheme } = tokenOf(requestInfo(req));
    if (!token || !c.taskId) return;
    const body = JSON.stringify({ tool, outcome: status >= 200 && status <= 299 ? "ok" : "error", status, side_effect: e.sideEffect || undefined, undo: e.undo });
    if (this.queue.length >= reportQueue) {
      this.reports.dropped++;
      this.o.log?.("warn", "tool-call report dropped: queue full", { task_id: c.taskId, tool });
      return;
    }
    this.queue.push({ taskId: c.taskId, scheme, token, body });
    this.queueWake?.();
  }

  private async sendReports(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const rep = this.queue.shift();
      if (!rep) {
        await new Promise<void>((resolve) => {
          const done = () => { signal.removeEventListener("abort", done); resolve(); };
          this.queueWake = done;
          signal.addEventListener("abort", done, { once: true });
        });
        this.queueWake = undefined;
        continue;
      }
      try {
        this.calls.report++;
        const res = await this.o.fetch(`${this.issuer}/v1/tasks/${encodeURIComponent(rep.taskId)}/events`, {
          method: "POST",
          headers: { "Content-Type": "application/json", Authorization: `${rep.scheme} ${rep.token}`, "Valet-Client-Authorization": this.basic() },
          body: rep.body,
          signal: AbortSignal.any([signal, AbortSignal.timeout(this.o.timeoutMs)]),
        });
        await res.body?.cancel();
        if (res.status !== 201) throw new Error(`status ${res.status}`);
        this.reports.sent++;
      } catch (err) {
        if (signal.aborted) return;
        this.reports.failed++;
        this.o.log?.("warn", "tool-call report failed", { task_id: rep.taskId, err: reasonOf(err) });
      }
    }
  }

  // ---- The revocation feed ----

  /**
   * run follows the revocation feed until signal aborts: the snapshot, then the stream from its cursor,
   * reconnecting after a break (backing off up to 5 s). While it is not connected, checks fall back to
   * introspection, so a broken feed never lets a revoked token through. It also sends the queued reports.
   */
  async run(signal: AbortSignal): Promise<void> {
    const reports = this.sendReports(signal);
    let backoff = 100;
    while (!signal.aborted) {
      let err: unknown;
      try {
        await this.follow(signal);
      } catch (e) {
        err = e;
      }
      if (this.deny.live) backoff = 100;
      this.deny.live = false;
      if (signal.aborted) break;
      this.o.log?.("warn", "revocation feed broke; checking by introspection until it is back", { err: reasonOf(err) });
      await new Promise<void>((resolve) => {
        const done = () => { clearTimeout(t); signal.removeEventListener("abort", done); resolve(); };
        const t = setTimeout(done, backoff);
        signal.addEventListener("abort", done, { once: true });
      });
      backoff = Math.min(2 * backoff, 5000);
    }
    await reports;
  }

  /** start runs run() in the background; the answer stops it. */
  start(): { stop(): Promise<void> } {
    const ac = new AbortController();
    const done = this.run(ac.signal);
    return { stop: async () => { ac.abort(); await done; } };
  }

  private async follow(signal: AbortSignal): Promise<void> {
    let { cursor, heard } = this.deny;
    if (!cursor || this.o.now() - heard > resumeWithinMs) {
      this.calls.snapshot++;
      const res = await this.o.fetch(this.issuer + "/v1/revocations", {
        headers: { Authorization: this.basic() },
        signal: AbortSignal.any([signal, AbortSignal.timeout(this.o.timeoutMs)]),
      });
      if (res.status !== 200) {
        await res.body?.cancel();
        throw new Error(`reading revocation snapshot: status ${res.status}`);
      }
      const s = (await readJSON(res, 64 << 20)) as Snapshot;
      for (const e of s.revoked ?? []) this.deny.addRevoked(e);
      for (const e of s.epochs ?? []) this.deny.addEpoch(e);
      this.deny.setControls(s.controls ?? []);
      cursor = String(s.cursor ?? "");
      this.deny.advance(cursor, this.o.now());
    }
    this.calls.stream++;
    const res = await this.o.fetch(`${this.issuer}/v1/revocations/stream?cursor=${encodeURIComponent(cursor)}`, {
      headers: { Authorization: this.basic(), Accept: "text/event-stream" },
      signal,
    });
    if (res.status !== 200 || !res.body) {
      await res.body?.cancel();
      this.deny.cursor = ""; // e.g. a cursor the feed no longer holds: reload the snapshot next time
      throw new Error(`opening revocation stream: status ${res.status}`);
    }
    this.deny.live = true;
    this.deny.heardNow();
    this.o.log?.("info", "revocation feed live", { cursor });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let event = "";
    let id = "";
    let data = "";
    let lastPrune = Date.now();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("reading revocation stream: EOF");
        buf += value;
        for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line === "") {
            this.apply(event, data);
            this.deny.advance(id, this.o.now()); // after applying: a resume never skips it
            this.deny.heardNow(); // an event or a keepalive
            event = id = data = "";
            if (Date.now() - lastPrune > 60_000) {
              this.deny.prune(this.o.now());
              lastPrune = Date.now();
            }
          } else if (line.startsWith("id:")) id = line.slice(3).trim();
          else if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (buf.length > 64 << 10) throw new Error("reading revocation stream: line too long");
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  private apply(event: string, data: string): void {
    let v: unknown;
    try {
      v = JSON.parse(data);
    } catch {
      return;
    }
    if (!v || typeof v !== "object") return;
    if (event === "revoked") this.deny.addRevoked(v as RevokedEntry);
    else if (event === "epoch") this.deny.addEpoch(v as EpochEntry);
    else if (event === "control") this.deny.applyControl(v as ControlEntry);
    else if (event === "dropped") throw new Error("the feed dropped this follower");
  }

  // ---- Following Valet's Shared Signals stream ----

  /**
   * followSSF follows a poll stream of Valet's SSF transmitter (RFC 8936) until signal aborts, instead of the
   * revocation feed (run): the SETs (CAEP session-revoked and credential-change, RISC account-disabled and
   * account-enabled) feed the same deny set, so a warm check still asks no one. Each SET is verified (Valet's key,
   * typ secevent+jwt, iss, aud the stream's, iat, a jti never applied before); a refused one changes nothing and
   * is reported in the next poll's setErrs, an applied one acknowledged; one whose key cannot be fetched yet (a kid
   * seen within 30 s of the last JWKS fetch, or the fetch failed) is neither, so Valet sends it again. Until a poll
   * answers, whenever one fails or defers a SET (backing off up to 5 s), and when none answered for 45 s, checks fall
   * back to introspection. It also sends the
   * queued reports. It rejects at once when stream is not usable. Go's verify.FollowSSF.
   */
  async followSSF(stream: SSFStream, signal: AbortSignal): Promise<void> {
    checkSSFStream(stream);
    const reports = this.sendReports(signal);
    let backoff = 100;
    let acks: string[] = [];
    let setErrs: Record<string, { err: string; description: string }> = {};
    let lastPrune = performance.now();
    while (!signal.aborted) {
      let sets: Record<string, unknown>;
      try {
        sets = await this.pollSSF(stream, acks, setErrs, !this.deny.fresh(), signal);
      } catch (err) {
        this.deny.live = false;
        if (signal.aborted) break;
        this.o.log?.("warn", "SSF stream poll failed; checking by introspection until it is back", { err: reasonOf(err) });
        await sleep(backoff, signal);
        backoff = Math.min(2 * backoff, 5000);
        continue; // the acks and setErrs go again with the next poll
      }
      acks = [];
      setErrs = {};
      let deferred = false;
      const verified: { jti: string; iat: number; set: Record<string, unknown> }[] = [];
      for (const [jti, raw] of Object.entries(sets)) {
        try {
          const set = await this.verifySET(raw, jti, stream.audience);
          verified.push({ jti, iat: set.iat as number, set });
        } catch (err) {
          if (err instanceof KeysUnavailable) {
            // Neither acknowledged nor refused: Valet sends it again, and checks ask Valet until it applies.
            deferred = true;
            this.o.log?.("warn", "SET deferred: Valet's keys cannot be read yet; checking by introspection", { jti: boundID(jti), err: reasonOf(err) });
            continue;
          }
          this.o.log?.("warn", "SET refused", { jti: boundID(jti), err: reasonOf(err) });
          setErrs[jti] = { err: "invalid_request", description: boundID(reasonOf(err)) }; // the jti as Valet sent it, or it is never acknowledged
        }
      }
      // A poll answers a map: apply in the order Valet issued them (a freeze and its lift in one poll).
      verified.sort((a, b) => a.iat - b.iat);
      for (const { jti, iat, set } of verified) {
        for (const [typ, payload] of Object.entries(set.events as Record<string, unknown>)) {
          this.applySSFEvent(typ, set.sub_id, payload);
        }
        this.setsSeen.set(jti, (iat + setMaxAgeS) * 1000);
        acks.push(jti);
      }
      if (deferred) {
        this.deny.live = false;
        await sleep(backoff, signal);
        backoff = Math.min(2 * backoff, 5000);
        continue;
      }
      backoff = 100;
      if (!this.deny.fresh()) this.o.log?.("info", "SSF stream live", {});
      this.deny.live = true;
      this.deny.heardNow();
      if (performance.now() - lastPrune > 60_000) {
        const now = this.o.now();
        this.deny.prune(now);
        for (const [k, until] of this.setsSeen) if (now > until) this.setsSeen.delete(k);
        lastPrune = performance.now();
      }
    }
    this.deny.live = false;
    await reports;
  }

  /** startSSF runs followSSF in the background; the answer stops it. It throws at once when stream is not usable. */
  startSSF(stream: SSFStream): { stop(): Promise<void> } {
    checkSSFStream(stream);
    const ac = new AbortController();
    const done = this.followSSF(stream, ac.signal);
    return { stop: async () => { ac.abort(); await done; } };
  }

  /**
   * pollSSF makes one RFC 8936 poll: it acknowledges acks, reports setErrs and answers the SETs given, by jti.
   * Unless immediate, Valet holds the request until a SET comes or its wait (2 s) ends.
   */
  private async pollSSF(s: SSFStream, acks: string[], setErrs: Record<string, unknown>, immediate: boolean, signal: AbortSignal): Promise<Record<string, unknown>> {
    const auth = await s.authorization();
    const body: Record<string, unknown> = { ack: acks, maxEvents: maxSSFPoll, returnImmediately: immediate };
    if (Object.keys(setErrs).length > 0) body.setErrs = setErrs;
    this.calls.ssf++;
    const res = await this.o.fetch(s.pollUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json", Authorization: auth },
      body: JSON.stringify(body),
      redirect: "error",
      signal: AbortSignal.any([signal, AbortSignal.timeout(this.o.timeoutMs + ssfPollHoldMs)]),
    });
    if (res.status !== 200) {
      await res.body?.cancel();
      throw new Error(`polling the SSF stream: status ${res.status}`);
    }
    const answer = (await readJSON(res, 16 << 20)) as { sets?: unknown };
    const sets = answer?.sets ?? {};
    if (typeof sets !== "object" || sets === null || Array.isArray(sets)) throw new Error("decoding the SSF poll answer: sets is not an object");
    return sets as Record<string, unknown>;
  }

  /**
   * verifySET checks one SET as Valet's own receiver checks the IdP's: at most 16 KiB, a compact JWS signed by
   * Valet (its JWKS), typ secevent+jwt, no crit, iss Valet, aud naming audience, iat neither 30 s ahead nor older
   * than 24 h, an exp if any not past, jti the poll's key and never applied before, 1 to 8 events. It answers the
   * payload or throws the reason: KeysUnavailable when Valet's JWKS cannot be read for an unknown kid (the SET is
   * then deferred, not refused).
   */
  private async verifySET(raw: unknown, jti: string, audience: string): Promise<Record<string, unknown>> {
    if (typeof raw !== "string" || raw.length > maxSET) throw new Error("not a SET of at most 16 KiB");
    const d = decodeJWS(raw);
    const alg = d.header.alg;
    if (typeof alg !== "string" || !tokenAlgs.includes(alg)) throw new Error("signing method not accepted");
    if (d.header.typ !== "secevent+jwt") throw new Error("typ must be secevent+jwt");
    if ("crit" in d.header) throw new Error("crit header is not supported");
    const kid = d.header.kid;
    if (typeof kid !== "string" || kid === "") throw new Error("no kid");
    if (!this.keys.has(kid)) {
      // A key Valet may have just rotated in: a JWKS that cannot be fetched now defers the SET rather than refusing it.
      try {
        await this.refreshKeys();
      } catch (err) {
        throw new KeysUnavailable(reasonOf(err));
      }
    }
    const k = this.keys.get(kid);
    if (!k) throw new Error(`kid ${JSON.stringify(kid.slice(0, 64))} unknown`);
    if (k.alg && k.alg !== alg) throw new Error("alg does not match the key");
    if (!(await verifySignature(d, k.key, alg))) throw new Error("signature is invalid");
    const p = d.payload;
    const now = this.o.now() / 1000;
    if (p.iss !== this.issuer) throw new Error("issuer is not Valet's");
    const aud = typeof p.aud === "string" ? [p.aud] : Array.isArray(p.aud) ? p.aud : [];
    if (!aud.includes(audience)) throw new Error("audience is not this stream's");
    if (typeof p.iat !== "number" || !Number.isFinite(p.iat)) throw new Error("iat is required");
    if (p.iat > now + setLeewayS) throw new Error("iat is in the future");
    if (p.iat < now - setMaxAgeS) throw new Error("iat is more than 24 h old");
    if (p.exp !== undefined && (typeof p.exp !== "number" || now >= p.exp)) throw new Error("SET is expired");
    if (typeof p.jti !== "string" || p.jti === "" || p.jti !== jti) throw new Error("jti does not match the poll's");
    const seen = this.setsSeen.get(jti);
    if (seen !== undefined && this.o.now() <= seen) throw new Error("jti replayed: this SET was applied already");
    const events = p.events;
    if (!events || typeof events !== "object" || Array.isArray(events)) throw new Error("a SET must carry events");
    const n = Object.keys(events).length;
    if (n === 0 || n > maxSETEvents) throw new Error(`a SET carries 1 to ${maxSETEvents} events`);
    return p;
  }

  /** applySSFEvent applies one event about subject sub to the deny set, as Go's verify. */
  private applySSFEvent(typ: string, sub: unknown, payload: unknown): void {
    const s = (sub && typeof sub === "object" ? sub : {}) as Record<string, unknown>;
    const member = (name: string): Record<string, unknown> | undefined => {
      const m = s.format === "complex" ? s[name] : undefined;
      return m && typeof m === "object" ? (m as Record<string, unknown>) : undefined;
    };
    const id = (x: Record<string, unknown> | undefined): string => {
      const v = x?.format === "opaque" ? x.id : x?.format === "iss_sub" ? x.sub : undefined;
      return typeof v === "string" ? v : "";
    };
    const agent = s.format === "complex" ? id(member("user")) : id(s); // an agent subject (iss_sub or opaque)
    switch (typ) {
      case ssfCredentialChange: {
        const jti = id(member("credential"));
        const task = id(member("session"));
        if (jti || task) this.deny.addRevoked({ jti: jti || undefined, task_id: task || undefined });
        break;
      }
      case ssfSessionRevoked: {
        const task = id(member("session"));
        if (task) {
          this.deny.addRevoked({ task_id: task });
          break;
        }
        // Every session of the agent begun at or before event_timestamp: Valet's agent epoch. The subject names the
        // issuer by URL, not by the name tokens carry: it covers the agent of every issuer.
        const ts = (payload as { event_timestamp?: unknown } | null)?.event_timestamp;
        if (typeof ts === "number" && agent) this.deny.addEpoch({ dimension: "agentsub", key: agent, before: Math.floor(ts) * 1000 + 999 });
        break;
      }
      case ssfAccountDisabled:
      case ssfAccountEnabled:
        // As above: a freeze of that agent under every issuer.
        if (agent) this.deny.applyControl({ kind: "freeze_agent", target: agent, active: typ === ssfAccountDisabled });
        break;
    }
  }
}

/** KeysUnavailable: Valet's JWKS could not be read for a SET's unknown kid (fetch failed, or fetched under 30 s ago). */
class KeysUnavailable extends Error {}

/** checkSSFStream throws a TypeError naming what makes stream unusable. */
function checkSSFStream(stream: SSFStream): void {
  const errs: string[] = [];
  let ok = false;
  try {
    const u = new URL(stream?.pollUrl);
    ok = (u.protocol === "https:" || u.protocol === "http:") && !!u.host;
  } catch {
    ok = false;
  }
  if (!ok) errs.push(`SSF poll URL ${JSON.stringify(String(stream?.pollUrl).slice(0, 200))} must be an absolute http(s) URL`);
  if (!stream?.audience) errs.push("the SSF stream's audience is required");
  if (typeof stream?.authorization !== "function") errs.push("the SSF stream needs an authorization source");
  if (errs.length) throw new TypeError("verify: " + errs.join("; "));
}

/** boundID bounds a transmitter-sent value for logs and setErrs. */
function boundID(s: string): string {
  return s.slice(0, 128).replace(/[^\x20-\x7e]/g, "?");
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => { clearTimeout(t); signal.removeEventListener("abort", done); resolve(); };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

interface RevokedEntry { jti?: string; task_id?: string; exp?: number }
interface EpochEntry { dimension?: string; key?: string; before?: number }
interface ControlEntry { kind?: string; target?: string; issuer?: string; active?: boolean }
interface Snapshot { cursor?: string; revoked?: RevokedEntry[]; epochs?: EpochEntry[]; controls?: ControlEntry[] }

/** DenySet is the local copy of what the feed has said. */
class DenySet {
  live = false;
  cursor = "";
  heard = 0;
  /** When the feed or the SSF stream was last heard from (performance.now(): the injected clock may stand still). */
  private heardMono = 0;

  heardNow(): void {
    this.heardMono = performance.now();
  }

  /** fresh reports whether the deny set is live and was heard from within staleAfterMs. */
  fresh(): boolean {
    return this.live && performance.now() - this.heardMono <= staleAfterMs;
  }
  private jtis = new Map<string, number>();
  private tasks = new Map<string, number>();
  private epochs = new Map<string, number>();
  private controls = new Map<string, ControlEntry>();

  advance(id: string, now: number): void {
    if (id) this.cursor = id;
    this.heard = now;
  }

  addRevoked(e: RevokedEntry): void {
    const exp = e.exp ? e.exp * 1000 : Date.now() + 24 * 3600_000; // no exp: keep it for the longest task life
    if (e.jti) this.jtis.set(e.jti, exp);
    if (e.task_id && exp > (this.tasks.get(e.task_id) ?? 0)) this.tasks.set(e.task_id, exp);
  }

  addEpoch(e: EpochEntry): void {
    const k = `${e.dimension}\x00${e.key}`;
    if ((e.before ?? 0) > (this.epochs.get(k) ?? 0)) this.epochs.set(k, e.before ?? 0);
  }

  private static key(e: ControlEntry): string {
    return `${e.kind}\x00${e.issuer ?? ""}\x00${e.target}`;
  }

  applyControl(e: ControlEntry): void {
    if (e.active) this.controls.set(DenySet.key(e), e);
    else this.controls.delete(DenySet.key(e));
  }

  setControls(list: ControlEntry[]): void {
    this.controls.clear();
    for (const e of list) this.controls.set(DenySet.key(e), e);
  }

  /**
   * controlled reports whether a control in force covers c's task, over every link the token names; unsure
   * when a control could cover a link only by an issuer the token does not name (the caller asks Valet).
   */
  controlled(c: Claims): { deny: boolean; unsure: boolean } {
    let unsure = false;
    if (this.controls.size === 0) return { deny: false, unsure };
    const others = c.act.length > 0 ? [c.subject, ...c.act.slice(1)] : [];
    for (const e of this.controls.values()) {
      switch (e.kind) {
        case "freeze_agent":
          if (e.target === c.actor && (!e.issuer || e.issuer === c.agentIssuer)) return { deny: true, unsure: false };
          for (const who of others) {
            if (who === e.target) {
              if (!e.issuer) return { deny: true, unsure: false };
              unsure = true;
            }
          }
          break;
        case "quarantine_template":
          if (e.target === c.template) return { deny: true, unsure: false };
          break;
        case "distrust_issuer":
          if (e.target === c.agentIssuer) return { deny: true, unsure: false };
          if (c.act.length > 0) unsure = true;
          break;
      }
    }
    return { deny: false, unsure };
  }

  /** denied reports whether c's token, its task or an epoch covering it was revoked. */
  denied(c: Claims): boolean {
    if (this.jtis.has(c.id) || this.tasks.has(c.taskId)) return true;
    const iat = c.issuedAt.getTime();
    for (const k of [
      `agent\x00${c.agentIssuer}/${c.actor}`,
      `agent\x00${c.agentIssuer}/${c.subject}`,
      `template\x00${c.template}`,
      `issuer\x00${c.agentIssuer}`,
      "all\x00*", // the global epoch Valet sets when Redis lost its data
      // An agent's epoch heard on the SSF stream, by subject alone.
      `agentsub\x00${c.actor}`,
      `agentsub\x00${c.subject}`,
    ]) {
      const before = this.epochs.get(k);
      if (before !== undefined && iat < before) return true;
    }
    return false;
  }

  prune(now: number): void {
    for (const [k, exp] of this.jtis) if (now > exp) this.jtis.delete(k);
    for (const [k, exp] of this.tasks) if (now > exp) this.tasks.delete(k);
  }
}

function checkTool(c: Claims, tool: string): void {
  if (tool && c.tools.includes(tool)) return;
  let scope: string | undefined;
  if (validScopeToken(tool)) scope = validScopeToken(c.template) ? `template:${c.template} ${tool}` : tool;
  throw new VerifyError(403, `tool ${JSON.stringify(tool.slice(0, 128))} is not granted to this task`, undefined, scope);
}

/** tokenOf reads the task token of "Authorization: Bearer|DPoP <token>". */
export function tokenOf(r: RequestInfo): { token: string; scheme: string } {
  const h = r.header("Authorization") ?? "";
  const m = /^(Bearer|DPoP) +(\S+)\s*$/i.exec(h);
  return m ? { token: m[2], scheme: m[1] } : { token: "", scheme: "" };
}

function validScopeToken(s: string): boolean {
  return s !== "" && /^[\x21\x23-\x5b\x5d-\x7e]+$/.test(s);
}

function quote(s: string): string {
  return `"${s.replace(/[\\"]/g, (m) => "\\" + m)}"`;
}

function normalizeURL(raw: string): string {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return "\x00invalid";
  }
  if (u.username || u.password) return "\x00invalid";
  return `${u.protocol}//${u.host}${u.pathname || "/"}`; // WHATWG URL lower-cases scheme and host and drops default ports
}

function isAbsolute(s: string): boolean {
  try {
    const u = new URL(s);
    return !!u.protocol && !!u.host;
  } catch {
    return false;
  }
}

function reasonOf(err: unknown): string {
  return String((err as Error)?.message ?? err).slice(0, 300);
}

async function readJSON(res: Response, limit: number): Promise<unknown> {
  const text = await res.text();
  if (text.length > limit) throw new Error("answer too large");
  return JSON.parse(text);
}

function statusText(s: number): string {
  return ({ 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 413: "Request Entity Too Large", 500: "Internal Server Error", 503: "Service Unavailable" } as Record<number, string>)[s] ?? "Error";
}
