// The agent client against a real `valet dev`.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Valet, ValetError, type Task } from "@valet-dev/valet";
import { startValet, type Dev } from "./harness.js";

const decl = { template: "sdk", intent: "triage ticket 4521", tools: ["tickets.read", "kb.search"], ttl_seconds: 120 };

describe("agent client", () => {
  let dev: Dev;
  let valet: Valet;
  before(async () => {
    dev = await startValet();
    valet = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-7") });
  });
  after(async () => dev?.stop());

  it("await using completes the task when the block exits", async () => {
    let token = "";
    {
      await using task = await valet.declare(decl);
      token = task.token;
      assert.equal(task.info.state, "active");
      assert.deepEqual([...task.info.tools].sort(), ["kb.search", "tickets.read"]);
      assert.equal((await dev.introspect(token)).active, true);
    }
    assert.equal((await dev.introspect(token)).active, false);
  });

  it("await using completes the task when the block throws", async () => {
    let token = "";
    await assert.rejects(async () => {
      await using task = await valet.declare(decl);
      token = task.token;
      throw new Error("the agent failed");
    }, /the agent failed/);
    assert.equal((await dev.introspect(token)).active, false);
  });

  it("try/finally and run() complete the task, also on an exception", async () => {
    const task = await valet.declare(decl);
    try {
      assert.equal((await dev.introspect(task.token)).active, true);
    } finally {
      await task.complete();
    }
    assert.equal(task.info.state, "completed");
    let held: Task | undefined;
    await assert.rejects(valet.run(decl, async (t) => { held = t; throw new Error("boom"); }), /boom/);
    assert.equal((await dev.introspect(held!.token)).active, false);
    await held!.complete(); // again: nothing to do
  });

  it("renews before the deadline, and on demand", async () => {
    await using task = await valet.declare({ ...decl, ttl_seconds: 60 });
    const first = task.deadline.getTime();
    const firstToken = task.token;
    await task.renew({ ttlSeconds: 300 });
    assert.ok(task.deadline.getTime() > first + 200_000, `deadline ${task.deadline.toISOString()} not extended`);
    assert.notEqual(task.token, firstToken);
    assert.equal((await dev.introspect(task.token)).active, true);

    // Automatic: with 60 s left it renews at once (beforeMs 59.5 s), to a later deadline.
    const errors: unknown[] = [];
    await using auto = await valet.declare({ ...decl, ttl_seconds: 60 }, { autoRenew: { beforeMs: 59_500, ttlSeconds: 120, onError: (e) => errors.push(e) } });
    const d0 = auto.deadline.getTime();
    const t0 = Date.now();
    while (auto.deadline.getTime() === d0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(errors, []);
    assert.ok(auto.deadline.getTime() >= d0 + 50_000, "not renewed automatically");
    auto.stopRenewing();
  });

  it("renewing an ended task is a typed conflict", async () => {
    const task = await valet.declare(decl);
    await task.complete();
    const err = await task.renew().then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof ValetError, String(err));
    assert.equal(err.status, 409);
    assert.equal(err.code, "conflict");
    assert.ok(err.requestId, "no request id");
  });

  it("delegates a narrower task to a sub-agent", async () => {
    await using parent = await valet.declare(decl);
    await using child = await parent.delegate({ actorIdentityToken: await dev.devToken("agent-8"), tools: ["kb.search"] });
    assert.deepEqual(child.info.tools, ["kb.search"]);
    assert.equal(child.info.parent, parent.id);
    const claims = await dev.introspect(child.token);
    assert.equal(claims.active, true);
    const err = await parent.delegate({ actorIdentityToken: await dev.devToken("agent-8"), tools: ["tickets.comment"] }).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof ValetError && err.status === 403, `asking for more than the parent holds: ${String(err)}`);
  });

  it("refusals are typed errors with code, rule, field and request id, and hold no token", async () => {
    const idt = await dev.devToken("agent-7");
    const v = new Valet({ baseUrl: dev.url, identityToken: () => idt });
    const tool = await v.declare({ ...decl, tools: ["payments.refund"] }).then(() => undefined, (e: unknown) => e);
    assert.ok(tool instanceof ValetError, String(tool));
    assert.equal(tool.status, 403);
    assert.equal(tool.code, "forbidden");
    assert.equal(tool.rule, "tools");
    assert.match(tool.requestId ?? "", /\S/);
    const cond = await v.declare({ ...decl, intent: "short" }).then(() => undefined, (e: unknown) => e);
    assert.ok(cond instanceof ValetError && cond.rule === "intent-stated", String(cond));
    const field = await v.declare({ ...decl, ttl_seconds: 0 }).then(() => undefined, (e: unknown) => e);
    assert.ok(field instanceof ValetError && field.status === 400 && field.field === "ttl_seconds", String(field));
    for (const e of [tool, cond, field]) assert.ok(!String(e).includes(idt) && !JSON.stringify(e).includes(idt), "an error holds the identity token");
    const bad = new Valet({ baseUrl: dev.url, identityToken: () => "not-a-token" });
    const auth = await bad.declare(decl).then(() => undefined, (e: unknown) => e);
    assert.ok(auth instanceof ValetError && auth.status === 401 && auth.code === "unauthenticated", String(auth));
  });

  it("a broker that is down is a clear error, not a hang", async () => {
    const v = new Valet({ baseUrl: "http://127.0.0.1:9", identityToken: () => "x", timeoutMs: 2000 });
    const err = await v.declare(decl).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof ValetError && err.code === "network", String(err));
  });

  it("binds tokens to a non-extractable DPoP key", async () => {
    const v = new Valet({ baseUrl: dev.url, identityToken: () => dev.devToken("agent-7"), dpop: true });
    const key = (await v.key())!;
    await using task = await v.declare(decl);
    assert.equal(task.info.jkt, key.jkt);
    assert.equal(task.scheme, "DPoP");
    const claims = await dev.introspect(task.token);
    assert.equal((claims.cnf as { jkt: string }).jkt, key.jkt);
    // The task reads itself with a proof; the same token as Bearer is refused.
    assert.equal((await task.refresh()).id, task.id);
    const res = await fetch(`${dev.url}/v1/tasks/${task.id}`, { headers: { Authorization: `Bearer ${task.token}` } });
    assert.equal(res.status, 401);
    await res.body?.cancel();
    // Renewed tokens stay bound to the key.
    await task.renew({ ttlSeconds: 300 });
    assert.equal(((await dev.introspect(task.token)).cnf as { jkt: string }).jkt, key.jkt);
    assert.equal((await task.refresh()).id, task.id);
    // A child of a bound task is bound to the same key.
    await using child = await task.delegate({ actorIdentityToken: await dev.devToken("agent-8"), tools: ["tickets.read"] });
    assert.equal(((await dev.introspect(child.token)).cnf as { jkt: string }).jkt, key.jkt);
  });

  it("asks for action tokens, waits for an approval, and reports tool calls", async () => {
    await using task = await valet.declare({ ...decl, tools: ["tickets.read", "tickets.delete", "tickets.purge"] });
    const granted = await task.requestAction("tickets.delete", { ticket: "7" });
    assert.equal(granted.status, "granted");
    const refused = await task.requestAction("tickets.delete", { ticket: "1" }).then(() => undefined, (e: unknown) => e);
    assert.ok(refused instanceof ValetError && refused.status === 403, String(refused));

    const pending = await task.requestAction("tickets.purge", { queue: "spam" }, { wait: false });
    assert.equal(pending.status, "pending");
    const id = (pending as { approval_id: string }).approval_id;
    const waiting = task.waitForApproval(id, { pollMs: 100 });
    await new Promise((r) => setTimeout(r, 300));
    await dev.approve(id);
    const approved = await waiting;
    assert.equal(approved.status, "granted");
    assert.ok(approved.action_token);

    // A denial ends the wait with a typed error.
    const second = (await task.requestAction("tickets.purge", { queue: "ham" }, { wait: false })) as { approval_id: string };
    const denied = task.waitForApproval(second.approval_id, { pollMs: 100 }).then(() => undefined, (e: unknown) => e);
    await dev.deny(second.approval_id);
    const err = await denied;
    assert.ok(err instanceof ValetError && err.status >= 400 && err.status < 500, String(err));
    // Waiting can be abandoned.
    const third = (await task.requestAction("tickets.purge", { queue: "eggs" }, { wait: false })) as { approval_id: string };
    await assert.rejects(task.waitForApproval(third.approval_id, { pollMs: 100, signal: AbortSignal.timeout(300) }), /TimeoutError|timed out|aborted/i);

    const ev = await task.reportToolCall({ tool: "tickets.read", outcome: "ok", status: 200, sideEffect: "read ticket 7" });
    assert.equal(ev.tool, "tickets.read");
    const events = await task.events();
    assert.ok(events.some((e) => e.id === ev.id));
  });
});
