// Parts that need no Valet: DPoP proofs and server nonces, canonical JSON, error parsing, SSF events on the deny set.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { canonicalArgs, DPoPKey, Valet, ValetError, Verifier, type Claims } from "@valet-dev/valet";

function payload(jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
}

describe("DPoP", () => {
  it("makes proofs with a non-extractable key", async () => {
    const key = await DPoPKey.generate();
    const priv = (key as unknown as { privateKey: CryptoKey }).privateKey;
    assert.equal(priv.extractable, false);
    await assert.rejects(crypto.subtle.exportKey("jwk", priv));
    const p = payload(await key.proof("post", "https://Valet.example.com:443/v1/tasks?x=1#f", "tok"));
    assert.equal(p.htm, "POST");
    assert.equal(p.htu, "https://valet.example.com/v1/tasks");
    assert.equal(p.ath, Buffer.from(await crypto.subtle.digest("SHA-256", new TextEncoder().encode("tok"))).toString("base64url"));
    const header = JSON.parse(Buffer.from((await key.proof("GET", "https://a.example")).split(".")[0], "base64url").toString());
    assert.deepEqual(Object.keys(header.jwk).sort(), ["crv", "kty", "x", "y"]);
  });

  it("retries once with the server's nonce (RFC 9449 section 8) and keeps using it", async (t) => {
    const proofs: Record<string, unknown>[] = [];
    const server = createServer((req, res) => {
      const p = payload(String(req.headers.dpop));
      proofs.push(p);
      if (p.nonce !== "n-1") {
        res.writeHead(401, { "DPoP-Nonce": "n-1", "WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "Content-Type": "application/json" });
        res.end(JSON.stringify({ error: "use_dpop_nonce", message: "use the nonce" }));
        return;
      }
      res.writeHead(201, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ task: { id: "tsk_1", deadline: new Date(Date.now() + 60_000).toISOString(), created_at: new Date().toISOString() }, credentials: [{ id: "j", kind: "jwt", expires_at: "", access_token: "t" }] }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    t.after(() => server.close());
    const v = new Valet({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, identityToken: () => "idt", dpop: true });
    const task = await v.declare({ template: "t", intent: "intent", tools: ["a"] });
    assert.equal(task.id, "tsk_1");
    assert.deepEqual(proofs.map((p) => p.nonce), [undefined, "n-1"]);
    await v.declare({ template: "t", intent: "intent", tools: ["a"] });
    assert.deepEqual(proofs.map((p) => p.nonce), [undefined, "n-1", "n-1"]);
  });
});

describe("canonical JSON", () => {
  it("sorts keys, drops space, writes integers without a fraction", () => {
    assert.equal(canonicalArgs({ b: [1.0, 2.5, "x"], a: { d: null, c: true } }), '{"a":{"c":true,"d":null},"b":[1,2.5,"x"]}');
    assert.equal(canonicalArgs(undefined), "{}");
    assert.equal(canonicalArgs({ s: "<&>\u2028" }), '{"s":"<&>\\u2028"}');
    assert.throws(() => canonicalArgs([1]), /JSON object/);
    let deep: Record<string, unknown> = {};
    for (let i = 0; i < 40; i++) deep = { d: deep };
    assert.throws(() => canonicalArgs(deep), /deeper/);
  });
});

describe("errors", () => {
  it("reads Valet's Error body, an OAuth error body, and anything else bounded", async (t) => {
    const bodies = [
      [403, '{"error":"forbidden","message":"tool not allowed","rule":"tools","field":"tools[0]","request_id":"req-1"}'],
      [400, '{"error":"invalid_grant","error_description":"assertion used"}'],
      [502, "x".repeat(5000)],
    ] as const;
    let i = 0;
    const server = createServer((_req, res) => {
      const [status, body] = bodies[i++];
      res.writeHead(status, { "X-Request-Id": "req-h" }).end(body);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    t.after(() => server.close());
    const v = new Valet({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, identityToken: () => "secret-identity-token" });
    const errs: ValetError[] = [];
    for (let j = 0; j < 3; j++) errs.push((await v.declare({ template: "t", intent: "i", tools: ["a"] }).catch((e: unknown) => e)) as ValetError);
    assert.deepEqual([errs[0].status, errs[0].code, errs[0].rule, errs[0].field, errs[0].requestId, errs[0].detail], [403, "forbidden", "tools", "tools[0]", "req-1", "tool not allowed"]);
    assert.deepEqual([errs[1].code, errs[1].detail, errs[1].requestId], ["invalid_grant", "assertion used", "req-h"]);
    assert.equal(errs[2].code, "http_502");
    assert.ok(errs[2].message.length < 400);
    for (const e of errs) assert.ok(e instanceof ValetError && !e.message.includes("secret-identity-token"));
  });
});

describe("SSF events", () => {
  type Internals = {
    applySSFEvent(typ: string, sub: unknown, payload: unknown): void;
    deny: { denied(c: Claims): boolean; controlled(c: Claims): { deny: boolean; unsure: boolean }; live: boolean; heardNow(): void };
  };
  const caep = "https://schemas.openid.net/secevent/caep/event-type/";
  const risc = "https://schemas.openid.net/secevent/risc/event-type/";
  const claims = (over: Partial<Claims> = {}): Claims => ({
    id: "j1", taskId: "t1", subject: "agent-a", template: "tp", agentIssuer: "dev", scope: "", jkt: "", tools: [], actionTools: [],
    audience: [], act: [], issuedAt: new Date(500_000), expiresAt: new Date(2_000_000), actor: "agent-a", ...over,
  });

  it("apply to the deny set as Go's verify does, and a stream silent for 45 s is not live", () => {
    const v = new Verifier({ issuer: "http://127.0.0.1:1", audience: "aud", clientId: "id", clientSecret: "secret" });
    const x = v as unknown as Internals;
    const agent = { format: "iss_sub", iss: "https://idp", sub: "agent-a" };
    x.applySSFEvent(caep + "credential-change", { format: "complex", user: agent, credential: { format: "opaque", id: "j1" } }, {});
    assert.ok(x.deny.denied(claims()), "credential-change denies the token");
    x.applySSFEvent(caep + "session-revoked", { format: "complex", user: agent, session: { format: "opaque", id: "t2" } }, {});
    assert.ok(x.deny.denied(claims({ id: "j2", taskId: "t2" })), "session-revoked denies the task");
    const fresh = claims({ id: "j3", taskId: "t3" });
    x.applySSFEvent(caep + "session-revoked", agent, { event_timestamp: 499 });
    assert.ok(!x.deny.denied(fresh), "a token issued after the agent's epoch is refused");
    x.applySSFEvent(caep + "session-revoked", agent, { event_timestamp: 500 });
    assert.ok(x.deny.denied(fresh), "a token issued at the agent's epoch is accepted");
    x.applySSFEvent(risc + "account-disabled", { format: "opaque", id: "agent-a" }, {});
    assert.deepEqual(x.deny.controlled(fresh), { deny: true, unsure: false });
    x.applySSFEvent(risc + "account-enabled", { format: "opaque", id: "agent-a" }, {});
    assert.deepEqual(x.deny.controlled(fresh), { deny: false, unsure: false });
    x.applySSFEvent(risc + "account-disabled", { format: "email", email: "a@example.com" }, {}); // names no agent
    x.applySSFEvent("https://example.com/unknown", agent, {});
    assert.deepEqual(x.deny.controlled(fresh), { deny: false, unsure: false });

    x.deny.live = true;
    x.deny.heardNow();
    assert.ok(v.live);
    (x.deny as unknown as { heardMono: number }).heardMono = performance.now() - 46_000;
    assert.ok(!v.live, "a stale stream still counts as live");
  });
});
