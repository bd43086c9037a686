// The verifier following Valet's Shared Signals stream (RFC 8936 poll) instead of the revocation feed, against
// `valet dev --redis` (its SSF transmitter is on there) with a throwaway redis-server.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Valet, Verifier, VerifyError } from "@valet-dev/valet";
import { audience, startValet, toolServerClient, type Dev } from "./harness.js";

const haveRedis = spawnSync(process.env.REDIS_SERVER ?? "redis-server", ["--version"]).status === 0;
const decl = { template: "sdk", intent: "triage ticket 4521", tools: ["tickets.read"], ttl_seconds: 300 };
const req = (token: string) => new Request("http://127.0.0.1/x", { headers: { Authorization: `Bearer ${token}` } });
const caep = "https://schemas.openid.net/secevent/caep/event-type/";
const risc = "https://schemas.openid.net/secevent/risc/event-type/";
const events = [caep + "session-revoked", caep + "credential-change", risc + "account-disabled", risc + "account-enabled"];

/** counting wraps fetch and counts the calls made through it, polls of an SSF stream apart. */
function counting() {
  const c = {
    checking: 0,
    fetch: ((input: RequestInfo | URL, init?: RequestInit) => {
      if (!String(input instanceof Request ? input.url : input).includes("/ssf/poll/")) c.checking++;
      return fetch(input, init);
    }) as typeof fetch,
  };
  return c;
}

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string) {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** refusedWithin checks tok until the verifier refuses it, answering the refusal and how long it took (ms). */
async function refusedWithin(v: Verifier, tok: string, ms: number): Promise<{ err: VerifyError; took: number }> {
  const t0 = performance.now();
  for (;;) {
    const err = await v.check(req(tok), "tickets.read").then(() => undefined, (e: unknown) => e);
    if (err) {
      assert.ok(err instanceof VerifyError, String(err));
      return { err, took: performance.now() - t0 };
    }
    assert.ok(performance.now() - t0 < ms, `still accepted ${ms} ms later`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const payloadOf = (set: string) => JSON.parse(Buffer.from(set.split(".")[1], "base64url").toString()) as Record<string, unknown>;

describe("verifier on the SSF stream", { skip: haveRedis ? false : "needs redis-server (Debian package redis-server) for valet dev --redis" }, () => {
  let dev: Dev;
  let adminAuth: string;
  before(async () => {
    dev = await startValet({ redis: true });
    adminAuth = "Bearer " + (await dev.adminToken());
  });
  after(async () => dev?.stop());

  /** stream creates a poll stream for aud and answers its poll URL. */
  async function stream(aud: string): Promise<string> {
    const res = await dev.admin("POST", "/ssf/streams", { aud, events_requested: events, delivery: { method: "urn:ietf:rfc:8936" } });
    const body = (await res.json()) as { delivery?: { endpoint_url?: string } };
    assert.equal(res.status, 201, JSON.stringify(body));
    return body.delivery!.endpoint_url!;
  }

  /** take polls pollUrl as the test (acknowledging everything) until a SET that want accepts arrives. */
  async function take(pollUrl: string, want: (p: Record<string, unknown>) => boolean): Promise<string> {
    let acks: string[] = [];
    const t0 = Date.now();
    for (;;) {
      const res = await fetch(pollUrl, { method: "POST", headers: { Authorization: adminAuth, "Content-Type": "application/json" }, body: JSON.stringify({ ack: acks, returnImmediately: true }) });
      assert.equal(res.status, 200);
      const sets = ((await res.json()) as { sets: Record<string, string> }).sets;
      acks = Object.keys(sets);
      for (const raw of Object.values(sets)) if (want(payloadOf(raw))) return raw;
      assert.ok(Date.now() - t0 < 5000, "the SET did not come within 5 s");
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  it("makes 0 calls to Valet per warm check; refuses an ended task and a frozen agent from the SETs alone", async (t) => {
    const pollUrl = await stream("urn:sdk-ts");
    const counter = counting();
    const v = new Verifier({ issuer: dev.url, audience, clientId: toolServerClient.id, clientSecret: toolServerClient.secret, fetch: counter.fetch });
    assert.throws(() => v.startSSF({ pollUrl: "ftp://x", audience: "a", authorization: () => "" }), TypeError);
    const valet = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-ssf-1") });
    const task = await valet.declare(decl);
    const other = await new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-ssf-2") }).declare(decl);
    t.after(() => other.complete().catch(() => {}));
    await v.check(req(task.token), "tickets.read"); // not following yet: introspection (and the JWKS)
    assert.equal(v.calls.introspect, 1);

    const run = v.startSSF({ pollUrl, audience: "urn:sdk-ts", authorization: () => adminAuth });
    t.after(() => run.stop());
    await until(() => v.live, 5000, "the SSF stream goes live");
    const before = counter.checking;
    const n = 1000;
    for (let i = 0; i < n; i++) await v.check(req(task.token), "tickets.read");
    t.diagnostic(`warm checks on the SSF stream: ${n}, calls to Valet: ${counter.checking - before} (polls: ${v.calls.ssf})`);
    assert.equal(counter.checking - before, 0, "warm checks called Valet");

    const t1 = performance.now();
    await task.complete();
    const ended = await refusedWithin(v, task.token, 5000);
    const endedAfter = performance.now() - t1;
    assert.equal(ended.err.status, 401);
    assert.equal(ended.err.reason, "revoked (feed)");

    const t2 = performance.now();
    const put = await dev.admin("POST", "/v1/admin/controls", { kind: "freeze_agent", target: "agent-ssf-2", reason: "leaked" });
    assert.equal(put.status, 201, await put.text());
    const frozen = await refusedWithin(v, other.token, 5000);
    const frozenAfter = performance.now() - t2;
    assert.equal(frozen.err.reason, "under an incident control (feed)");
    t.diagnostic(`SSF: ended task refused ${endedAfter.toFixed(0)} ms after the end, frozen agent ${frozenAfter.toFixed(0)} ms after the freeze`);
    assert.equal(counter.checking - before, 0, "the verifier asked Valet instead of following the stream");
    assert.equal(v.calls.introspect, 1);
    const lift = await dev.admin("DELETE", "/v1/admin/controls?kind=freeze_agent&target=agent-ssf-2");
    assert.equal(lift.status, 200, await lift.text());
    await until(() => v.check(req(other.token), "tickets.read").then(() => true, () => false), 5000, "account-enabled lifts the freeze");
  });

  it("a malformed, unsigned, wrong-audience, tampered or replayed SET changes nothing; one under a kid not yet fetchable is deferred; a failing poll falls back to introspection", async (t) => {
    const own = await stream("urn:sdk-ts-bad");
    const elsewhere = await stream("urn:elsewhere");
    const valet = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-ssf-3") });
    const task = await valet.declare(decl);
    t.after(() => task.complete().catch(() => {}));
    const about = (typ: string) => (p: Record<string, unknown>) =>
      typ in (p.events as object) && (p.sub_id as { id?: string; sub?: string }).id === "agent-ssf-3";
    const put = await dev.admin("POST", "/v1/admin/controls", { kind: "freeze_agent", target: "agent-ssf-3", reason: "test" });
    assert.equal(put.status, 201, await put.text());
    const disabled = await take(own, about(risc + "account-disabled"));
    const foreign = await take(elsewhere, about(risc + "account-disabled"));
    const lift = await dev.admin("DELETE", "/v1/admin/controls?kind=freeze_agent&target=agent-ssf-3");
    assert.equal(lift.status, 200, await lift.text());
    const enabled = await take(own, about(risc + "account-enabled"));

    // A poll endpoint the test controls, serving Valet's real SETs and forgeries of them.
    const queue: Record<string, string>[] = [];
    const taken = new Map<Record<string, string>, number>(); // a batch served, by the index of the poll that took it
    const polls: { ack: string[]; setErrs?: Record<string, { err: string; description: string }> }[] = [];
    let failing = false;
    let sticky: Record<string, string> | undefined; // served on every poll while set, as Valet resends what is not acknowledged
    const srv = createServer((rq, rs) => {
      let b = "";
      rq.on("data", (c: Buffer) => { b += c.toString(); });
      rq.on("end", () => {
        polls.push(JSON.parse(b));
        if (failing) { rs.writeHead(503).end(); return; }
        const sets = queue.shift() ?? sticky;
        if (sets) taken.set(sets, polls.length - 1);
        setTimeout(() => rs.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify({ sets: sets ?? {} })), sets && sets !== sticky ? 0 : 50);
      });
    });
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    t.after(() => { srv.closeAllConnections(); srv.close(); });
    const fakeBase = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
    const v = new Verifier({ issuer: dev.url, audience, clientId: toolServerClient.id, clientSecret: toolServerClient.secret });
    const run = v.startSSF({ pollUrl: fakeBase + "/ssf/poll/s1", audience: "urn:sdk-ts-bad", authorization: () => "Bearer test" });
    t.after(() => run.stop());
    await until(() => v.live, 5000, "the fake stream goes live");
    await v.check(req(task.token), "tickets.read"); // fetches Valet's JWKS
    let introspections = v.calls.introspect;
    const [h, p, s] = disabled.split(".");
    const jti = payloadOf(disabled).jti as string;
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const header = JSON.parse(Buffer.from(h, "base64url").toString()) as Record<string, unknown>;

    // A SET under a kid the verifier does not know, within 30 s of its JWKS fetch (a key Valet may have just rotated
    // in): neither acknowledged nor refused, and checks ask Valet while Valet keeps sending it.
    sticky = { [jti]: `${b64({ ...header, kid: "rotated-in" })}.${p}.${s}` };
    await until(() => !v.live, 5000, "a deferred SET takes the verifier off the stream");
    await v.check(req(task.token), "tickets.read");
    assert.equal(v.calls.introspect, introspections + 1, "a check while a SET is deferred must introspect");
    introspections = v.calls.introspect;
    const since = polls.length;
    await until(() => polls.length > since + 1, 5000, "the verifier polls again");
    assert.ok(polls.slice(since).every((q) => q.ack.length === 0 && !q.setErrs), "a deferred SET was acknowledged or refused");
    sticky = undefined;
    await until(() => v.live, 10_000, "the stream is live again once the SET is gone");

    /** deliver serves sets in one poll and answers the next poll, which reports on them. */
    const deliver = async (sets: Record<string, string>) => {
      queue.push(sets);
      await until(() => taken.has(sets), 5000, "the verifier polls");
      const n = taken.get(sets)! + 1;
      await until(() => polls.length > n, 5000, "the verifier polls again");
      return polls[n];
    };
    const forged = {
      "malformed": { "m-1": "not.a.jws!", "m-2": "e30.e30", "m-3": "x".repeat(20_000) },
      "unsigned (alg none)": { [jti]: `${b64({ ...header, alg: "none" })}.${p}.` },
      "signature stripped": { [jti]: `${h}.${p}.` },
      "payload tampered": { [jti]: `${h}.${b64({ ...payloadOf(disabled), txn: "tampered" })}.${s}` },
      "wrong typ": { [jti]: `${b64({ ...header, typ: "JWT" })}.${p}.${s}` },
      "wrong audience": { [payloadOf(foreign).jti as string]: foreign },
      "jti not the poll's": { "other-jti": disabled },
    };
    for (const [what, sets] of Object.entries(forged)) {
      const next = await deliver(sets);
      assert.deepEqual(next.ack, [], `${what}: acknowledged`);
      assert.deepEqual(Object.keys(next.setErrs ?? {}).sort(), Object.keys(sets).sort(), `${what}: not reported in setErrs`);
      await v.check(req(task.token), "tickets.read"); // the freeze it carries did not apply
    }
    assert.equal(v.calls.introspect, introspections, "checks asked Valet");

    // Valet's own SET applies; its replay after the lift does not freeze again.
    assert.deepEqual((await deliver({ [jti]: disabled })).ack, [jti]);
    const frozen = await v.check(req(task.token), "tickets.read").then(() => undefined, (e: unknown) => e);
    assert.ok(frozen instanceof VerifyError && frozen.reason === "under an incident control (feed)", String(frozen));
    const enabledJti = payloadOf(enabled).jti as string;
    assert.deepEqual((await deliver({ [enabledJti]: enabled })).ack, [enabledJti]);
    await v.check(req(task.token), "tickets.read");
    const replay = await deliver({ [jti]: disabled });
    assert.deepEqual(replay.ack, []);
    assert.match(replay.setErrs?.[jti]?.description ?? "", /replayed/);
    await v.check(req(task.token), "tickets.read");
    assert.equal(v.calls.introspect, introspections, "checks asked Valet");

    // The stream fails: checks go back to Valet (fail closed), and follow the stream again once it answers.
    failing = true;
    await until(() => !v.live, 5000, "a failing poll takes the verifier off the stream");
    await v.check(req(task.token), "tickets.read");
    assert.equal(v.calls.introspect, introspections + 1, "a check while the stream fails must introspect");
    failing = false;
    await until(() => v.live, 10_000, "the stream comes back");
  });
});
