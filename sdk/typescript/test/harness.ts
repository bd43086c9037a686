// Starts a real `valet dev` for the tests: the binary named by VALET_BIN (the Go test builds it), on a free
// loopback port, with test/templates.yaml.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";

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
  stop(): Promise<void>;
}

export async function startValet(): Promise<Dev> {
  const bin = process.env.VALET_BIN;
  if (!bin) throw new Error("VALET_BIN must name a valet binary (go build -o $VALET_BIN ./cmd/valet); the Go test sdk_test.go sets it");
  const child: ChildProcess = spawn(bin, ["dev", "--addr", "127.0.0.1:0", "--templates", "test/templates.yaml", "--log-level", "warn"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
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
  return {
    url,
    async devToken(agent) {
      const res = await fetch(`${url}/dev/token?agent=${encodeURIComponent(agent)}`, { method: "POST" });
      if (res.status !== 200) throw new Error(`dev token: ${res.status}`);
      return ((await res.json()) as { identity_token: string }).identity_token;
    },
    async revoke(token) { await (await form("/v1/revoke", token)).body?.cancel(); },
    async introspect(token) { return (await (await form("/v1/introspect", token)).json()) as { active: boolean }; },
    async approve(id) {
      const res = await fetch(`${url}/v1/approvals/${encodeURIComponent(id)}/approve`, { method: "POST", headers: { Authorization: basic(approverClient), "Content-Type": "application/json" }, body: JSON.stringify({ reason: "test" }) });
      if (res.status !== 200) throw new Error(`approve: ${res.status} ${await res.text()}`);
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    },
  };
}
