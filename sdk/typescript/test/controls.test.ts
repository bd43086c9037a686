// Incident controls through the real feed: `valet dev --redis` with a throwaway redis-server; an admin freezes
// an agent and the verifier refuses its task from the feed alone.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { Valet, Verifier, VerifyError } from "@valet-dev/valet";
import { audience, startValet, toolServerClient, type Dev } from "./harness.js";

const haveRedis = spawnSync(process.env.REDIS_SERVER ?? "redis-server", ["--version"]).status === 0;
const decl = { template: "sdk", intent: "triage ticket 4521", tools: ["tickets.read"], ttl_seconds: 300 };
const req = (token: string) => new Request("http://127.0.0.1/x", { headers: { Authorization: `Bearer ${token}` } });

describe("incident controls on the feed", { skip: haveRedis ? false : "needs redis-server (Debian package redis-server) for valet dev --redis" }, () => {
  let dev: Dev;
  before(async () => { dev = await startValet({ redis: true }); });
  after(async () => dev?.stop());

  it("a frozen agent's task is refused within 1 s, with no call to Valet; lifting the freeze lets it through again", async (t) => {
    const v = new Verifier({ issuer: dev.url, audience, clientId: toolServerClient.id, clientSecret: toolServerClient.secret });
    const run = v.start();
    t.after(() => run.stop());
    const valet = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-9") });
    await using task = await valet.declare(decl);
    const bystander = await new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-10") }).declare(decl);
    t.after(() => bystander.complete());
    const t0 = Date.now();
    while (!v.live) {
      assert.ok(Date.now() - t0 < 5000, "the feed is not live");
      await new Promise((r) => setTimeout(r, 10));
    }
    await v.check(req(task.token), "tickets.read");
    const introspections = v.calls.introspect;

    const put = await dev.admin("POST", "/v1/admin/controls", { kind: "freeze_agent", target: "agent-9", reason: "leaked" });
    assert.equal(put.status, 201, await put.text());
    const t1 = performance.now();
    let err: unknown;
    while (performance.now() - t1 < 3000) {
      err = await v.check(req(task.token), "tickets.read").then(() => undefined, (e: unknown) => e);
      if (err) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    const after = performance.now() - t1;
    t.diagnostic(`frozen agent refused by the verifier ${after.toFixed(1)} ms after the control was answered`);
    assert.ok(err instanceof VerifyError && err.status === 401, String(err));
    assert.equal(err.reason, "under an incident control (feed)");
    assert.ok(after < 1000, `refused only after ${after} ms`);
    await v.check(req(bystander.token), "tickets.read"); // another agent is not covered
    assert.equal(v.calls.introspect, introspections, "the verifier asked Valet");

    const lift = await dev.admin("DELETE", "/v1/admin/controls?kind=freeze_agent&target=agent-9");
    assert.equal(lift.status, 200, await lift.text());
    const t2 = Date.now();
    while ((await v.check(req(task.token), "tickets.read").then(() => false, () => true)) && Date.now() - t2 < 3000) await new Promise((r) => setTimeout(r, 10));
    await v.check(req(task.token), "tickets.read");
  });

  it("a bulk revocation of a template's tasks reaches the verifier through the feed", async (t) => {
    const v = new Verifier({ issuer: dev.url, audience, clientId: toolServerClient.id, clientSecret: toolServerClient.secret });
    const run = v.start();
    t.after(() => run.stop());
    const valet = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-11") });
    const task = await valet.declare(decl);
    const t0 = Date.now();
    while (!v.live) {
      assert.ok(Date.now() - t0 < 5000, "the feed is not live");
      await new Promise((r) => setTimeout(r, 10));
    }
    await v.check(req(task.token), "tickets.read");
    const introspections = v.calls.introspect;
    const res = await dev.admin("POST", "/v1/admin/revocations", { selector: { template: "sdk", issued_before: new Date(Date.now() + 1000).toISOString() }, reason: "leaked prompt" });
    assert.ok(res.status === 200 || res.status === 202, `bulk revoke: ${res.status} ${await res.text()}`);
    const t1 = performance.now();
    let err: unknown;
    while (performance.now() - t1 < 3000) {
      err = await v.check(req(task.token), "tickets.read").then(() => undefined, (e: unknown) => e);
      if (err) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    t.diagnostic(`bulk-revoked task refused by the verifier ${(performance.now() - t1).toFixed(1)} ms after the job was answered`);
    assert.ok(err instanceof VerifyError && err.status === 401 && err.reason === "revoked (feed)", String(err));
    assert.equal(v.calls.introspect, introspections, "the verifier asked Valet");
  });
});
