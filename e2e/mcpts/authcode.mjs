// Valet interop: the official TypeScript MCP SDK's client doing the
// authorization code + PKCE flow with its own auth(): from the MCP
// server's URL it discovers the RFC 9728 and RFC 8414 metadata, sends the
// person to Valet's authorization endpoint (here a scripted browser:
// fetch with redirect 'manual' and a cookie jar, through the upstream
// sign-in and Valet's consent page), trades the code, calls tools with the
// token, and refreshes it. Run by e2e/oauthcode_ts_test.go, which reads one
// JSON line per step on stdout.
//
// Environment: MCP_URL, CLIENT_ID (a public client configured at Valet),
// REDIRECT_URL (its redirect URI), SCOPE.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { auth } from '@modelcontextprotocol/sdk/client/auth.js';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const say = (step, fields) => process.stdout.write(JSON.stringify({ step, ...fields }) + '\n');
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const waitForGo = async () => { await lines.next(); };
const claims = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());

// HostProvider is an interactive MCP host's OAuthClientProvider: a
// pre-registered public client.
class HostProvider {
  constructor(clientId, redirect, scope) {
    Object.assign(this, { clientId, redirect, scope });
  }
  get redirectUrl() { return this.redirect; }
  get clientMetadata() {
    return { client_name: 'TS host', redirect_uris: [this.redirect], grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'], token_endpoint_auth_method: 'none', scope: this.scope };
  }
  clientInformation() { return this._client ?? { client_id: this.clientId }; }
  saveClientInformation(info) { this._client = info; }
  tokens() { return this._tokens; }
  saveTokens(tokens) { this._tokens = tokens; }
  state() { this._state = randomBytes(16).toString('base64url'); return this._state; }
  redirectToAuthorization(url) { this.authorizationUrl = url; }
  saveCodeVerifier(v) { this._verifier = v; }
  codeVerifier() { return this._verifier; }
}

// browse is the person's browser: it follows redirects with its cookies
// until one leaves for the host's redirect URI, submits the consent form
// (allow) when it is shown, and answers that last URL.
async function browse(start, redirectPrefix) {
  const jar = new Map();
  const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const keep = (res) => {
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      jar.set(pair.slice(0, i), pair.slice(i + 1));
    }
  };
  let url = String(start);
  let init = { method: 'GET' };
  let consented = false;
  for (let hops = 0; hops < 10; hops++) {
    if (url.startsWith(redirectPrefix)) return { url: new URL(url), consented };
    const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers ?? {}), cookie: cookieHeader() } });
    keep(res);
    if (res.status >= 300 && res.status < 400) {
      url = new URL(res.headers.get('location'), url).href;
      init = { method: 'GET' };
      continue;
    }
    const body = await res.text();
    const m = /name="consent" value="([^"]+)"/.exec(body);
    if (res.status !== 200 || !m) throw new Error(`browser: ${res.status} at ${url}: ${body.slice(0, 300)}`);
    const action = /action="([^"]+)"/.exec(body)[1];
    consented = true;
    url = new URL(action, url).href;
    init = { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ consent: m[1], decision: 'allow' }).toString() };
  }
  throw new Error('browser: too many redirects');
}

async function outcome(client, name, args) {
  try {
    const res = await client.callTool({ name, arguments: args });
    return { ok: !res.isError };
  } catch (err) {
    return { ok: false, error: String(err?.message ?? err), code: err?.code ?? null };
  }
}

const mcpURL = new URL(env('MCP_URL'));
const provider = new HostProvider(env('CLIENT_ID'), env('REDIRECT_URL'), env('SCOPE'));
const client = new Client({ name: 'valet-authcode-interop', version: '1.0.0' });
try {
  const first = await auth(provider, { serverUrl: mcpURL, scope: env('SCOPE') });
  const authz = provider.authorizationUrl;
  say('redirect', { result: first, authorization_endpoint: authz ? `${authz.origin}${authz.pathname}` : null,
    method: authz?.searchParams.get('code_challenge_method') ?? null, has_state: !!authz?.searchParams.get('state'),
    resource: authz?.searchParams.get('resource') ?? null });
  const back = await browse(authz, env('REDIRECT_URL'));
  const q = back.url.searchParams;
  say('callback', { consented: back.consented, has_code: !!q.get('code'), state_ok: q.get('state') === provider._state, iss: q.get('iss') });
  const second = await auth(provider, { serverUrl: mcpURL, authorizationCode: q.get('code') });
  const tokens = provider.tokens();
  const c = claims(tokens.access_token);
  say('tokens', { result: second, sub: c.sub, act: c.act?.sub ?? null, has_refresh: !!tokens.refresh_token, scope: tokens.scope ?? null });
  const transport = new StreamableHTTPClientTransport(mcpURL, { authProvider: provider });
  await client.connect(transport);
  say('granted', await outcome(client, 'tickets.read', { ticket: '7' }));
  say('ungranted', await outcome(client, 'tickets.comment', { ticket: '7', text: 'hi' }));
  await waitForGo(); // the test moves its clock on: a renewal must move the deadline
  const before = tokens.refresh_token;
  const third = await auth(provider, { serverUrl: mcpURL });
  const refreshed = provider.tokens();
  say('refreshed', { result: third, rotated: !!refreshed.refresh_token && refreshed.refresh_token !== before,
    same_task: claims(refreshed.access_token).task_id === c.task_id });
} catch (err) {
  say('failed', { error: String(err?.stack ?? err) });
  process.exitCode = 1;
} finally {
  await client.close().catch(() => {});
  process.exit();
}
