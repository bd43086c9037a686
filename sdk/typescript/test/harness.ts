// Starts a real `valet dev` for the tests: the binary named by VALET_BIN (the Go test builds it), on a free
// loopback port, with test/templates.yaml.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { createServer } from "node:net";

export const toolServerClient = { id: "tool-server", secret: "dev-secret-not-for-production" };
export const approverClient = { id: "approver", secret: "dev-approver-not-for-production" };
export const audience = "https://tools.example.com";

export interface Dev {
  url: string;
  devToken(agent: string): Promise<string>;
  /** revoke revokes a task token (its whole task) as the tool-server client, RFC 7009. */
  revoke(token: string): Promise<void>;
  introspect(token: string): Promise<{ active: boolean; [k: string]: unknown }>;
  approve(approvalId: string): Promise<void>;
  deny(approvalId: string): Promise<void>;
  /** admin calls the admin API as a development admin (needs startValet({ redis: true })). */
  admin(method: string, path: string, body?: unknown): Promise<Response>;
  /** adminToken mints a development admin's identity token (one hour), e.g. for polling an SSF stream. */
  adminToken(): Promise<string>;
  stop(): Promise<void>;
}

/** freePort answers a loopback port that was free a moment ago. */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** redisServer starts a throwaway redis-server (REDIS_SERVER, default redis-server on the PATH) on loopback. */
async function redisServer(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const child = spawn(process.env.REDIS_SERVER ?? "redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: ["ignore", "pipe", "pipe"] });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("redis-server did not start within 10 s")), 10_000);
    child.on("error", (e) => { clearTimeout(t); reject(e); });
    createInterface({ input: child.stdout! }).on("line", (l) => { if (/Ready to accept connections/.test(l)) { clearTimeout(t); resolve(); } });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() { if (child.exitCode === null) { const e = new Promise((r) => child.once("exit", r)); child.kill("SIGTERM"); await e; } },
  };
}

export async function startValet(opts: { redis?: boolean } = {}): Promise<Dev> {
  const bin = process.env.VALET_BIN;
  if (!bin) throw new Error("VALET_BIN must name a valet binary (go build -o $VALET_BIN ./cmd/valet); the Go test sdk_test.go sets it");
  const redis = opts.redis ? await redisServer() : undefined;
  const args = ["dev", "--addr", "127.0.0.1:0", "--templates", "test/templates.yaml", "--log-level", "warn"];
  if (redis) args.push("--redis", redis.url);
  const child: ChildProcess = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => { stderr = (stderr + b.toString()).slice(-4096); });
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`valet dev did not start within 20 s: ${stderr}`)), 20_000);
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      const m = /^Valet development server on (http:\/\/\S+)/.exec(line);
      if (m) { clearTimeout(t); resolve(m[1]); }
    });
    child.on("exit", (code) => { clearTimeout(t); reject(new Error(`valet dev exited (${code}): ${stderr}`)); });
  });
  const basic = (c: { id: string; secret: string }) => "Basic " + Buffer.from(`${c.id}:${c.secret}`).toString("base64");
  const form = async (path: string, token: string) => {
    const res = await fetch(url + path, { method: "POST", headers: { Authorization: basic(toolServerClient), "Content-Type": "application/x-www-form-urlencoded" }, body: new URLSearchParams({ token }) });
    if (res.status !== 200) throw new Error(`${path}: ${res.status} ${await res.text()}`);
    return res;
  };
  const decide = async (id: string, verb: "approve" | "deny") => {
    const res = await fetch(`${url}/v1/approvals/${encodeURIComponent(id)}/${verb}`, { method: "POST", headers: { Authorization: basic(approverClient), "Content-Type": "application/json" }, body: JSON.stringify({ reason: "test" }) });
    if (res.status !== 200) throw new Error(`${verb}: ${res.status} ${await res.text()}`);
    await res.body?.cancel();
  };
  const adminToken = async () => {
    const res = await fetch(`${url}/dev/token?admin=rita`, { method: "POST" });
    if (res.status !== 200) throw new Error(`dev admin token: ${res.status}`);
    return ((await res.json()) as { identity_token: string }).identity_token;
  };
  return {
    url,
    async devToken(agent) {
      const res = await fetch(`${url}/dev/token?agent=${encodeURIComponent(agent)}`, { method: "POST" });
      if (res.status !== 200) throw new Error(`dev token: ${res.status}`);
      return ((await res.json()) as { identity_token: string }).identity_token;
    },
    async revoke(token) { await (await form("/v1/revoke", token)).body?.cancel(); },
    async introspect(token) { return (await (await form("/v1/introspect", token)).json()) as { active: boolean }; },
    async approve(id) { await decide(id, "approve"); },
    async deny(id) { await decide(id, "deny"); },
    adminToken,
    async admin(method, path, body) {
      const token = await adminToken();
      return fetch(url + path, { method, headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      await redis?.stop();
    },
  };
}
