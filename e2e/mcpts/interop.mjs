// Valet interop: the official TypeScript MCP SDK's client, starting from the
// MCP server's URL alone: the SDK reads the RFC 9728 metadata the server
// points at, the script reads Valet's RFC 8414 metadata, and the SDK's
// PrivateKeyJwtProvider and fetchToken get a token from Valet's token
// endpoint (client credentials, private_key_jwt, resource). The SDK's own
// auth() is not used: its discovery insists on an authorization_endpoint,
// which Valet (no interactive login) does not serve. The token is then
// sent by the SDK's Streamable HTTP transport on every request. Run by
// e2e/mcpts_test.go, which reads one JSON line per step on stdout and
// writes a line on stdin when the script may go on.
//
// Environment: MCP_URL (the MCP endpoint), VALET_URL (the authorization
// server the client expects), SCOPE (the scope asked for), and either
// CLIENT_ID and CLIENT_JWK (its private JWK) for client credentials, or
// WORKLOAD_TOKEN (the agent's identity token) for the RFC 7523 jwt-bearer
// grant, through a provider on the SDK's OAuthClientProvider interface.
import { createInterface } from 'node:readline';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { PrivateKeyJwtProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import { discoverOAuthProtectedResourceMetadata, extractResourceMetadataUrl, fetchToken } from '@modelcontextprotocol/sdk/client/auth.js';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const say = (step, fields) => process.stdout.write(JSON.stringify({ step, ...fields }) + '\n');
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const waitForGo = async () => { await lines.next(); };

// taskOf reads the task id of a Valet task token (its task_id claim).
const taskOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).task_id;

// outcome runs a tool call and reports its result or error.
async function outcome(client, name, args) {
  try {
    const res = await client.callTool({ name, arguments: args });
    return { ok: !res.isError, content: res.structuredContent ?? null };
  } catch (err) {
    return { ok: false, error: String(err && err.message ? err.message : err), code: err?.code ?? null };
  }
}

// getToken finds Valet from the MCP server's URL and gets a token.
// The first request, without a token, is answered 401 with the RFC 9728
// challenge naming the resource metadata.
async function getToken(provider, mcpURL) {
  const first = await fetch(mcpURL, { method: 'POST', headers: { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'ping' }) });
  const resourceMetadataUrl = extractResourceMetadataUrl(first);
  say('challenge', { status: first.status, resource_metadata: resourceMetadataUrl ? String(resourceMetadataUrl) : null });
  const prm = await discoverOAuthProtectedResourceMetadata(mcpURL, { resourceMetadataUrl });
  const as = prm.authorization_servers?.[0];
  if (as !== env('VALET_URL')) throw new Error(`the MCP server names authorization server ${as}`);
  const res = await fetch(new URL('/.well-known/oauth-authorization-server', as));
  if (!res.ok) throw new Error(`RFC 8414 metadata: ${res.status}`);
  const metadata = await res.json();
  say('discovered', { resource: prm.resource, issuer: metadata.issuer, token_endpoint: metadata.token_endpoint });
  const tokens = await fetchToken(provider, new URL(as), { metadata, resource: new URL(prm.resource) });
  provider.saveTokens(tokens);
  return tokens;
}

// WorkloadJwtBearerProvider is an OAuthClientProvider for the RFC 7523
// jwt-bearer grant: the agent's workload identity token is the assertion;
// no client authentication.
class WorkloadJwtBearerProvider {
  constructor(assertion, scope) {
    this.assertion = assertion;
    this.scope = scope;
  }
  get redirectUrl() { return undefined; }
  get clientMetadata() {
    return { redirect_uris: [], grant_types: ['urn:ietf:params:oauth:grant-type:jwt-bearer'], scope: this.scope };
  }
  clientInformation() { return undefined; }
  saveClientInformation() {}
  tokens() { return this._tokens; }
  saveTokens(tokens) { this._tokens = tokens; }
  redirectToAuthorization() { throw new Error('no interactive authorization'); }
  saveCodeVerifier() {}
  codeVerifier() { throw new Error('no authorization code flow'); }
  prepareTokenRequest(scope) {
    const params = new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', assertion: this.assertion });
    if (scope) params.set('scope', scope);
    return params;
  }
}

const provider = process.env.WORKLOAD_TOKEN
  ? new WorkloadJwtBearerProvider(process.env.WORKLOAD_TOKEN, env('SCOPE'))
  : new PrivateKeyJwtProvider({
    clientId: env('CLIENT_ID'),
    privateKey: JSON.parse(env('CLIENT_JWK')),
    algorithm: 'EdDSA',
    jwtLifetimeSeconds: 60, // Valet refuses assertions living longer than its max_assertion_life (5m)
    scope: env('SCOPE'),
    expectedIssuer: env('VALET_URL'),
  });
const mcpURL = new URL(env('MCP_URL'));
const client = new Client({ name: 'valet-mcpts-interop', version: '1.0.0' });
try {
  const tokens = await getToken(provider, mcpURL);
  const transport = new StreamableHTTPClientTransport(mcpURL, {
    requestInit: { headers: { Authorization: `Bearer ${tokens.access_token}` } },
  });
  await client.connect(transport);
  say('connected', { task_id: taskOf(tokens.access_token), token_type: tokens.token_type, scope: tokens.scope ?? null });
  const { tools } = await client.listTools();
  say('tools', { names: tools.map((t) => t.name).sort() });
  say('granted', await outcome(client, 'tickets.read', { ticket: '7' }));
  say('ungranted', await outcome(client, 'tickets.comment', { ticket: '7', text: 'hi' }));
  await waitForGo();
  say('after', await outcome(client, 'tickets.read', { ticket: '7' }));
} catch (err) {
  say('failed', { error: String(err && err.stack ? err.stack : err) });
  process.exitCode = 1;
} finally {
  await client.close().catch(() => {});
  process.exit();
}
