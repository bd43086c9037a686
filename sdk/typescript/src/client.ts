// The agent client: declare a task with the agent's identity token, use its
// task token (as a DPoP-bound token when the client has a key), renew it
// before its deadline, delegate part of it, ask for action tokens and wait
// for approvals, report tool calls, and complete it on exit. It never logs,
// and no error it throws holds a token.

import type { components } from "./gen/openapi.js";
import { DPoPKey } from "./dpop.js";
import { refusal, ValetError } from "./errors.js";

type Schemas = components["schemas"];
export type Declaration = Schemas["Declaration"];
export type TaskInfo = Schemas["Task"];
export type Credential = Schemas["Credential"];
export type ActionGrant = Schemas["ActionGrant"];
export type ActionPending = Schemas["ActionPending"];
export type EventReport = Schemas["EventReport"];
export type ToolEvent = Schemas["EventCreated"]["event"];

/** A source of the agent's identity token (an OIDC token from its platform), asked for each time one is needed. */
export type TokenSource = () => string | Promise<string>;

export interface ValetOptions {
  /** Valet's base URL, e.g. https://valet.example.com. */
  baseUrl: string;
  /** The agent's identity token; called for every declaration and renewal, so it may return a fresh one. */
  identityToken: TokenSource;
  /**
   * Bind the task tokens to a DPoP key (RFC 9449): true makes a new non-extractable key for this client; or
   * pass one. Bound tokens are useless without the key.
   */
  dpop?: boolean | DPoPKey;
  /** The fetch to use (default the global one). */
  fetch?: typeof fetch;
  /** Bounds each request to Valet (default 30 s); past it the call fails with a ValetError of code "timeout". */
  timeoutMs?: number;
}

export interface DeclareOptions {
  /**
   * Renew the task before its deadline, for as long as it is open: when it has beforeMs left (default a fifth
   * of its life, at least 1 s), ask for ttlSeconds more (default the template's default). A failed renewal is
   * passed to onError and ends the renewals; the task then ends at its deadline.
   */
  autoRenew?: boolean | { beforeMs?: number; ttlSeconds?: number; onError?: (err: unknown) => void };
}

/** How a call to Valet authenticates. */
interface Auth {
  token: string;
  /** Send the token with the DPoP scheme and a proof by this key. */
  key?: DPoPKey;
}

const defaultTimeoutMs = 30_000;

/** Valet is a client of one Valet broker for one agent. */
export class Valet {
  readonly baseUrl: string;
  private readonly fetchFn: typeof fetch;
  private readonly timeoutMs: number;
  private keyPromise?: Promise<DPoPKey>;

  constructor(private readonly opts: ValetOptions) {
    let u: URL;
    try {
      u = new URL(opts.baseUrl);
    } catch {
      throw new TypeError(`valet: baseUrl ${JSON.stringify(String(opts.baseUrl).slice(0, 200))} is not a URL`);
    }
    if (u.protocol !== "https:" && u.protocol !== "http:") throw new TypeError("valet: baseUrl must be http(s)");
    if (typeof opts.identityToken !== "function") throw new TypeError("valet: identityToken must be a function");
    this.baseUrl = opts.baseUrl.replace(/\/+$/, "");
    this.fetchFn = opts.fetch ?? globalThis.fetch;
    this.timeoutMs = opts.timeoutMs ?? defaultTimeoutMs;
    if (opts.dpop instanceof DPoPKey) this.keyPromise = Promise.resolve(opts.dpop);
    else if (opts.dpop) this.keyPromise = DPoPKey.generate();
  }

  /** The DPoP key of this client, if it binds its tokens. */
  async key(): Promise<DPoPKey | undefined> {
    return this.keyPromise;
  }

  /**
   * declare declares a task and answers it with its credentials. Use it with `await using task = await
   * valet.declare(...)` (the task completes when the block exits, also on an exception), or call complete() in
   * a finally block, or use run().
   */
  async declare(d: Declaration, opts: DeclareOptions = {}): Promise<Task> {
    const key = await this.keyPromise;
    const idt = await this.opts.identityToken();
    const answer = await this.call<Schemas["DeclareResponse"]>("POST", "/v1/tasks", { token: idt }, { json: d, proofKey: key });
    const task = new Task(this, answer.task, answer.credentials, key);
    if (opts.autoRenew) task.startRenewing(opts.autoRenew === true ? {} : opts.autoRenew);
    return task;
  }

  /** run declares a task, runs fn with it and completes it when fn settles, whether it returned or threw. */
  async run<T>(d: Declaration, fn: (task: Task) => Promise<T> | T, opts: DeclareOptions = {}): Promise<T> {
    const task = await this.declare(d, opts);
    try {
      return await fn(task);
    } finally {
      await task.complete();
    }
  }

  /** identity is a fresh identity token of the agent. */
  async identity(): Promise<string> {
    return this.opts.identityToken();
  }

  /**
   * call sends one request to Valet and decodes its JSON answer; any status but 2xx is a ValetError. When the
   * answer asks for a DPoP nonce, the request is sent once more with it.
   */
  async call<T>(
    method: string,
    path: string,
    auth: Auth | undefined,
    body: { json?: unknown; form?: Record<string, string>; proofKey?: DPoPKey; proofToken?: string; headers?: Record<string, string> } = {},
  ): Promise<T> {
    const url = this.baseUrl + path;
    const proofKey = auth?.key ?? body.proofKey;
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { Accept: "application/json", ...body.headers };
      let payload: string | undefined;
      if (body.json !== undefined) {
        headers["Content-Type"] = "application/json";
        payload = JSON.stringify(body.json);
      } else if (body.form) {
        headers["Content-Type"] = "application/x-www-form-urlencoded";
        payload = new URLSearchParams(body.form).toString();
      }
      if (auth) headers.Authorization = `${auth.key ? "DPoP" : "Bearer"} ${auth.token}`;
      if (proofKey) headers.DPoP = await proofKey.proof(method, url, auth?.key ? auth.token : body.proofToken);
      let res: Response;
      let text: string;
      try {
        res = await this.fetchFn(url, { method, headers, body: payload, signal: AbortSignal.timeout(this.timeoutMs) });
        text = await res.text();
      } catch (err) {
        const timeout = err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError");
        throw new ValetError(0, timeout ? "timeout" : "network", `${method} ${path}: ${timeout ? `no answer within ${this.timeoutMs} ms` : errorText(err)}`);
      }
      if (proofKey && proofKey.noteNonce(url, res, text) && attempt === 0) continue;
      if (res.status < 200 || res.status > 299) throw refusal(res.status, text, res.headers.get("X-Request-Id"));
      if (text === "") return undefined as T;
      try {
        return JSON.parse(text) as T;
      } catch {
        throw new ValetError(res.status, "invalid_answer", `${method} ${path}: the answer is not JSON`, undefined, undefined, res.headers.get("X-Request-Id") ?? undefined);
      }
    }
  }
}

function errorText(err: unknown): string {
  const e = err as { message?: unknown; cause?: { message?: unknown } };
  return String(e?.cause?.message ?? e?.message ?? err).slice(0, 200);
}

export interface ActionOptions {
  /** What the agent says about the call; shown to approvers. */
  context?: Record<string, unknown>;
  /** Wait for a human decision when one is needed (default true); false answers the pending approval. */
  wait?: boolean;
  /** How often to poll a pending approval (default 1 s). */
  pollMs?: number;
  /** Stop waiting when this signal aborts. */
  signal?: AbortSignal;
}

export interface Delegation {
  /** The sub-agent's identity token. */
  actorIdentityToken: string;
  /** The tools of the child task, each held by this one. */
  tools: string[];
  /** A shorter life than this task's remaining one. */
  ttlSeconds?: number;
}

/** Task is a declared task and its credentials. Credentials are secrets: keep them out of logs. */
export class Task implements AsyncDisposable {
  private renewTimer?: ReturnType<typeof setTimeout>;
  private ended = false;

  constructor(
    private readonly valet: Valet,
    private infoValue: TaskInfo,
    private creds: Credential[],
    /** The DPoP key the task's tokens are bound to, if any. */
    readonly key?: DPoPKey,
    /** How renew() gets a fresh identity token (the child of a delegation cannot renew). */
    private readonly renewable = true,
  ) {}

  get id(): string {
    return this.infoValue.id;
  }
  /** The task as Valet last described it. */
  get info(): TaskInfo {
    return this.infoValue;
  }
  get deadline(): Date {
    return new Date(this.infoValue.deadline);
  }
  /** The credentials of the last declaration or renewal: the task token first, then any Vault credentials. */
  get credentials(): readonly Credential[] {
    return this.creds;
  }
  /** The task token (its jwt credential's access_token). */
  get token(): string {
    const t = this.creds.find((c) => c.kind === "jwt" && c.access_token)?.access_token;
    if (!t) throw new Error("valet: the task has no task token");
    return t;
  }
  /** The Authorization scheme of the task token: DPoP when it is bound to a key, else Bearer. */
  get scheme(): "DPoP" | "Bearer" {
    return this.key ? "DPoP" : "Bearer";
  }

  /** headers are the headers that present the task token on a request of method to url (with a fresh proof when bound). */
  async headers(method: string, url: string | URL): Promise<Record<string, string>> {
    const h: Record<string, string> = { Authorization: `${this.scheme} ${this.token}` };
    if (this.key) h.DPoP = await this.key.proof(method, url, this.token);
    return h;
  }

  /** fetch calls a tool server with the task token (and a DPoP proof when bound); extra headers are kept. */
  async fetch(input: string | URL, init: RequestInit = {}): Promise<Response> {
    const method = init.method ?? "GET";
    const headers = new Headers(init.headers);
    for (const [k, v] of Object.entries(await this.headers(method, input))) headers.set(k, v);
    return globalThis.fetch(input, { ...init, method, headers });
  }

  private auth() {
    return { token: this.token, key: this.key };
  }

  /** refresh reads the task from Valet. */
  async refresh(): Promise<TaskInfo> {
    const a = await this.valet.call<Schemas["TaskResponse"]>("GET", `/v1/tasks/${encodeURIComponent(this.id)}`, this.auth());
    this.infoValue = a.task;
    return a.task;
  }

  /**
   * renew asks for a later deadline (ttlSeconds from now, default the template's default) and fresh credentials
   * that live until it; those held before keep their own expiry.
   */
  async renew(opts: { ttlSeconds?: number; context?: Record<string, unknown> } = {}): Promise<TaskInfo> {
    if (!this.renewable) throw new Error("valet: a delegated task cannot be renewed: renew its root and exchange again");
    const body: Schemas["RenewRequest"] = {};
    if (opts.ttlSeconds !== undefined) body.ttl_seconds = opts.ttlSeconds;
    if (opts.context !== undefined) body.context = opts.context as Schemas["RenewRequest"]["context"];
    const a = await this.valet.call<Schemas["DeclareResponse"]>("POST", `/v1/tasks/${encodeURIComponent(this.id)}/renew`, { token: await this.valet.identity() }, { json: body });
    this.infoValue = a.task;
    this.creds = a.credentials;
    return a.task;
  }

  /** startRenewing renews the task before each deadline until it ends (see DeclareOptions.autoRenew). */
  startRenewing(o: { beforeMs?: number; ttlSeconds?: number; onError?: (err: unknown) => void } = {}): void {
    this.stopRenewing();
    const schedule = () => {
      const life = this.deadline.getTime() - new Date(this.infoValue.created_at).getTime();
      const before = o.beforeMs ?? Math.max(1000, life / 5);
      const wait = Math.max(0, this.deadline.getTime() - before - Date.now());
      this.renewTimer = setTimeout(async () => {
        if (this.ended) return;
        try {
          await this.renew({ ttlSeconds: o.ttlSeconds });
          if (!this.ended) schedule();
        } catch (err) {
          this.renewTimer = undefined;
          o.onError?.(err);
        }
      }, wait);
      this.renewTimer.unref?.();
    };
    schedule();
  }

  stopRenewing(): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = undefined;
  }

  /**
   * complete ends the task; Valet revokes every credential of it. Completing it again, or completing a task that
   * Valet already ended (its token then answers 401), does nothing.
   */
  async complete(): Promise<void> {
    this.stopRenewing();
    if (this.ended) return;
    try {
      const a = await this.valet.call<Schemas["TaskResponse"]>("POST", `/v1/tasks/${encodeURIComponent(this.id)}/complete`, this.auth());
      this.infoValue = a.task;
    } catch (err) {
      // A token that is no longer live: the task ended (revoked, expired) already.
      if (!(err instanceof ValetError && err.status === 401)) throw err;
    }
    this.ended = true;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.complete();
  }

  /** delegate exchanges this task's token for a sub-agent's narrower task (RFC 8693 token exchange). */
  async delegate(d: Delegation): Promise<Task> {
    const form: Record<string, string> = {
      grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
      subject_token: this.token,
      subject_token_type: "urn:ietf:params:oauth:token-type:access_token",
      actor_token: d.actorIdentityToken,
      actor_token_type: "urn:ietf:params:oauth:token-type:id_token",
      tools: d.tools.join(" "),
    };
    if (d.ttlSeconds !== undefined) form.ttl_seconds = String(d.ttlSeconds);
    const x = await this.valet.call<Schemas["TokenExchangeResponse"]>("POST", "/v1/token", undefined, { form, proofKey: this.key, proofToken: this.key ? this.token : undefined }); // a bound parent: its proof covers the subject token (ath)
    if (!x || typeof x.access_token !== "string" || !x.task?.id) {
      throw new ValetError(200, "invalid_answer", "delegating: the answer is not a token exchange response");
    }
    const cred: Credential = { id: "", kind: "jwt", expires_at: x.task.deadline, access_token: x.access_token, token_type: x.token_type };
    return new Task(this.valet, x.task, [cred], this.key, false);
  }

  /**
   * requestAction asks for a one-shot action token for one call of a sensitive tool with exactly args. When a
   * human must approve first it polls until the decision (a denial or expiry is a ValetError), unless wait is
   * false, when it answers the pending approval.
   */
  async requestAction(tool: string, args: Record<string, unknown> = {}, opts: ActionOptions = {}): Promise<ActionGrant | ActionPending> {
    // The spec types free-form objects as Record<string, never>; any JSON object is meant.
    const body = { tool, args, ...(opts.context ? { context: opts.context } : {}) } as unknown as Schemas["ActionRequest"];
    const a = await this.valet.call<ActionGrant | ActionPending>("POST", `/v1/tasks/${encodeURIComponent(this.id)}/actions`, this.auth(), { json: body });
    if (a.status !== "pending" || opts.wait === false) return a;
    return this.waitForApproval(a.approval_id, opts);
  }

  /** waitForApproval polls a pending approval until it is decided; a denial or expiry is a ValetError. */
  async waitForApproval(approvalId: string, opts: Pick<ActionOptions, "pollMs" | "signal"> = {}): Promise<ActionGrant> {
    const path = `/v1/tasks/${encodeURIComponent(this.id)}/actions/${encodeURIComponent(approvalId)}`;
    for (;;) {
      opts.signal?.throwIfAborted();
      const a = await this.valet.call<ActionGrant | ActionPending>("GET", path, this.auth());
      if (a.status !== "pending") return a;
      await sleep(opts.pollMs ?? 1000, opts.signal);
    }
  }

  /** reportToolCall tells Valet about one call of a tool by this task (what the agent did). */
  async reportToolCall(r: { tool: string; outcome: "ok" | "error" | "refused"; status?: number; sideEffect?: string; undo?: Schemas["Undo"] }): Promise<ToolEvent> {
    const body: EventReport = { tool: r.tool, outcome: r.outcome };
    if (r.status !== undefined) body.status = r.status;
    if (r.sideEffect !== undefined) body.side_effect = r.sideEffect;
    if (r.undo !== undefined) body.undo = r.undo;
    const a = await this.valet.call<Schemas["EventCreated"]>("POST", `/v1/tasks/${encodeURIComponent(this.id)}/events`, this.auth(), { json: body });
    return a.event;
  }

  /** events lists the task's reported tool calls, oldest first. */
  async events(): Promise<ToolEvent[]> {
    const a = await this.valet.call<Schemas["EventList"]>("GET", `/v1/tasks/${encodeURIComponent(this.id)}/events`, this.auth());
    return a.events;
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
