// The tool-server verifier against a real `valet dev` and its revocation feed.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { argsHash, Valet, Verifier, VerifyError, type Claims } from "@valet-dev/valet";
import { audience, startValet, toolServerClient, type Dev } from "./harness.js";

const decl = { template: "sdk", intent: "triage ticket 4521", tools: ["tickets.read", "kb.search", "tickets.delete"], ttl_seconds: 300 };

/** counting wraps fetch and counts the calls made through it. */
function counting() {
  const c = { n: 0, fetch: ((input: RequestInfo | URL, init?: RequestInit) => { c.n++; return fetch(input, init); }) as typeof fetch };
  return c;
}

function req(token: string, extra: Record<string, string> = {}, method = "POST", path = "/tools/x") {
  return new Request(`http://127.0.0.1${path}`, { method, headers: { Authorization: `Bearer ${token}`, ...extra } });
}

async function refusal(p: Promise<unknown>): Promise<VerifyError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof VerifyError, `want a VerifyError, got ${String(err)}`);
  return err;
}

async function until(cond: () => boolean, ms: number) {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("verifier", () => {
  let dev: Dev;
  let valet: Valet;
  before(async () => {
    dev = await startValet();
    valet = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-7") });
  });
  after(async () => dev?.stop());

  const newVerifier = (f: typeof fetch, extra: { publicUrl?: string; audience?: string } = {}) =>
    new Verifier({ issuer: dev.url, audience: extra.audience ?? audience, clientId: toolServerClient.id, clientSecret: toolServerClient.secret, fetch: f, publicUrl: extra.publicUrl });

  it("introspects until the feed is live, then makes 0 calls to Valet per warm check, and refuses a revoked task within 1 s", async (t) => {
    const counter = counting();
    const v = newVerifier(counter.fetch);
    await using task = await valet.declare(decl);
    // Not live: every check asks Valet's introspection.
    const c = await v.check(req(task.token), "tickets.read");
    assert.equal(c.taskId, task.id);
    assert.equal(c.actor, "agent-7");
    assert.equal(c.template, "sdk");
    await v.check(req(task.token), "tickets.read");
    assert.equal(v.calls.introspect, 2);
    assert.equal(v.calls.jwks, 1);

    const run = v.start();
    t.after(() => run.stop());
    await until(() => v.live, 5000);
    // Warm: the key is cached and the feed is live.
    const before = counter.n;
    const n = 1000;
    const t0 = performance.now();
    const warm = req(task.token);
    for (let i = 0; i < n; i++) await v.check(warm, "tickets.read");
    const perCheck = (performance.now() - t0) / n;
    const calls = counter.n - before;
    t.diagnostic(`warm checks: ${n}, calls to Valet: ${calls}, ${(perCheck * 1000).toFixed(0)} µs per check`);
    assert.equal(calls, 0, `${calls} calls to Valet in ${n} warm checks`);

    // Revoke the task at Valet; the feed brings it here.
    const t1 = performance.now();
    await dev.revoke(task.token);
    let refusedAfter = -1;
    while (performance.now() - t1 < 3000) {
      const ok = await v.check(req(task.token), "tickets.read").then(() => true, () => false);
      if (!ok) { refusedAfter = performance.now() - t1; break; }
      await new Promise((r) => setTimeout(r, 5));
    }
    t.diagnostic(`revoked task refused by the verifier ${refusedAfter.toFixed(1)} ms after the revocation was answered`);
    assert.ok(refusedAfter >= 0 && refusedAfter < 1000, `revoked task still accepted after ${refusedAfter} ms`);
    const e = await refusal(v.check(req(task.token), "tickets.read"));
    assert.equal(e.status, 401);
    assert.equal(e.reason, "revoked (feed)");
    assert.equal(counter.n - before, 0, "the verifier asked Valet about the revoked token (dev.revoke does not use its fetch)");
  });

  it("refuses an ungranted tool with the scope that would grant it, a wrong audience, and no token", async () => {
    const v = newVerifier(fetch, { publicUrl: "http://127.0.0.1:1" });
    await using task = await valet.declare(decl);
    const e = await refusal(v.check(req(task.token), "tickets.comment"));
    assert.equal(e.status, 403);
    assert.equal(e.scope, "template:sdk tickets.comment");
    const r = v.refusal(req(task.token), e);
    assert.equal(r.status, 403);
    assert.match(r.headers["WWW-Authenticate"], /^Bearer error="insufficient_scope", scope="template:sdk tickets.comment", resource_metadata="http:\/\/127.0.0.1:1\/.well-known\/oauth-protected-resource"$/);
    assert.ok(!r.body.includes(task.token));
    // A sensitive tool is not a plain grant.
    assert.equal((await refusal(v.check(req(task.token), "tickets.delete"))).status, 403);
    const other = newVerifier(fetch, { audience: "https://elsewhere.example.com" });
    assert.equal((await refusal(other.check(req(task.token), "tickets.read"))).status, 401);
    const none = await refusal(v.check(new Request("http://127.0.0.1/x"), "tickets.read"));
    assert.equal(none.status, 401);
    assert.match(v.refusal(new Request("http://127.0.0.1/x"), none).headers["WWW-Authenticate"], /^Bearer resource_metadata=.*, DPoP algs="EdDSA ES256/);
    // A tampered token.
    const [h, p, s] = task.token.split(".");
    const claims = JSON.parse(Buffer.from(p, "base64url").toString());
    claims.tools.push("tickets.comment");
    const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${s}`;
    assert.equal((await refusal(v.check(req(forged), "tickets.comment"))).status, 401);
  });

  it("fetches the JWKS once, and again for an unknown kid at most every 30 s", async () => {
    const counter = counting();
    const v = newVerifier(counter.fetch);
    await using task = await valet.declare(decl);
    await v.check(req(task.token), "tickets.read");
    await v.check(req(task.token), "tickets.read");
    assert.equal(v.calls.jwks, 1);
    const [h, p, s] = task.token.split(".");
    const header = JSON.parse(Buffer.from(h, "base64url").toString());
    const unknown = `${Buffer.from(JSON.stringify({ ...header, kid: "rotated" })).toString("base64url")}.${p}.${s}`;
    for (let i = 0; i < 3; i++) {
      const e = await refusal(v.check(req(unknown), "tickets.read"));
      assert.equal(e.status, 401);
    }
    assert.equal(v.calls.jwks, 1, "an unknown kid refetched the JWKS within 30 s of the last fetch");
  });

  it("answers 503 when Valet cannot be asked and the feed is not live", async () => {
    await using task = await valet.declare(decl);
    let down = false;
    const v = newVerifier(((input: RequestInfo | URL, init?: RequestInit) => (down ? Promise.reject(new TypeError("connection refused")) : fetch(input, init))) as typeof fetch);
    await v.check(req(task.token), "tickets.read"); // keys cached
    down = true;
    assert.equal((await refusal(v.check(req(task.token), "tickets.read"))).status, 503);
  });

  it("checks DPoP-bound tokens on a tool server: proof, key, htu and replay", async (t) => {
    const bound = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-7"), dpop: true });
    await using task = await bound.declare(decl);
    let server: Server;
    const seen: Claims[] = [];
    const port = await new Promise<number>((resolve) => {
      server = createServer(async (rq, rs) => {
        try {
          seen.push(await vv.check(rq, "tickets.read"));
          rs.end("ok");
        } catch (err) {
          const r = vv.refusal(rq, err);
          rs.writeHead(r.status, r.headers).end(r.body);
        }
      }).listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port));
    });
    t.after(() => server.close());
    const base = `http://127.0.0.1:${port}`;
    const vv = newVerifier(fetch, { publicUrl: base });
    const ok = await task.fetch(`${base}/tickets/7?x=1`);
    assert.equal(ok.status, 200, await ok.text());
    assert.equal(seen[0].jkt, task.info.jkt);
    // The same token as Bearer, a proof replayed, a proof for another URL: refused.
    const asBearer = await fetch(`${base}/tickets/7`, { headers: { Authorization: `Bearer ${task.token}` } });
    assert.equal(asBearer.status, 401);
    assert.match(await asBearer.text(), /bound to a key/);
    const h = await task.headers("GET", `${base}/tickets/7`);
    assert.equal((await fetch(`${base}/tickets/7`, { headers: h })).status, 200);
    const replay = await fetch(`${base}/tickets/7`, { headers: h });
    assert.equal(replay.status, 401);
    assert.match(replay.headers.get("WWW-Authenticate") ?? "", /DPoP .*error="invalid_token"/);
    const elsewhere = await task.headers("GET", `${base}/other`);
    assert.equal((await fetch(`${base}/tickets/7`, { headers: elsewhere })).status, 401);
    // A verifier without publicUrl refuses bound tokens.
    const noURL = newVerifier(fetch);
    const e = await refusal(noURL.check(new Request(`${base}/tickets/7`, { headers: await task.headers("GET", `${base}/tickets/7`) }), "tickets.read"));
    assert.equal(e.status, 401);
  });

  it("checks action tokens: for the task, tool and exact arguments, once", async () => {
    const counter = counting();
    const v = newVerifier(counter.fetch);
    await using task = await valet.declare(decl);
    const args = { ticket: "7", reason: "spam" };
    const grant = await task.requestAction("tickets.delete", args);
    assert.equal(grant.status, "granted");
    const token = (grant as { action_token: string }).action_token;
    const wrongArgs = await refusal(v.checkAction(req(task.token, { "Valet-Action": token }), "tickets.delete", { ticket: "8", reason: "spam" }));
    assert.equal(wrongArgs.status, 403);
    assert.match(wrongArgs.message, /other arguments/);
    const noToken = await refusal(v.checkAction(req(task.token), "tickets.delete", args));
    assert.match(noToken.message, /needs an action token/);
    const c = await v.checkAction(req(task.token, { "Valet-Action": token }), "tickets.delete", { reason: "spam", ticket: "7" });
    assert.equal(c.taskId, task.id);
    assert.equal(v.calls.consume, 1);
    const again = await refusal(v.checkAction(req(task.token, { "Valet-Action": token }), "tickets.delete", args));
    assert.match(again.message, /used already/);
    // Of another task: refused before it is consumed.
    await using other = await valet.declare(decl);
    const g2 = (await other.requestAction("tickets.delete", args)) as { action_token: string };
    assert.match((await refusal(v.checkAction(req(task.token, { "Valet-Action": g2.action_token }), "tickets.delete", args))).message, /another task/);
  });

  it("hashes arguments exactly as Valet does (canonical JSON)", async () => {
    await using task = await valet.declare(decl);
    for (const args of [
      { ticket: "7" },
      { ticket: "7", z: [1.5, 1e21, 1e-7, 123456789012, -0, 0.1, 2 ** 53 + 2], "é": true, a: { b: 1, a: [null, false] } },
      { ticket: "7", s: "é\u2028\u2029<>&\"\\\n\t\b\f\u0001 😀 \u{10FFFF}", "😀": 1, "\uffff": 2, "\u{10000}": 3 },
    ]) {
      const grant = (await task.requestAction("tickets.delete", args)) as { args_hash: string };
      assert.equal(await argsHash(args), grant.args_hash, JSON.stringify(args));
    }
  });

  it("reports tool calls to Valet, with the tool server's client credentials", async (t) => {
    const v = newVerifier(fetch);
    const run = v.start();
    t.after(() => run.stop());
    await using task = await valet.declare(decl);
    const r = req(task.token);
    const c = await v.check(r, "kb.search");
    v.report(r, c, "kb.search", 200, { sideEffect: "searched the KB" });
    await until(() => v.reports.sent === 1, 5000);
    const events = await task.events();
    assert.equal(events.length, 1);
    assert.equal(events[0].tool, "kb.search");
    assert.equal(events[0].reported_with, "client");
  });
});
