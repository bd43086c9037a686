// Valet for TypeScript: the agent client and the tool-server verifier.
// Runtime needs only the platform: fetch and WebCrypto (Node 20 or later).
export { Valet, Task } from "./client.js";
export type { ValetOptions, DeclareOptions, ActionOptions, Delegation, TokenSource, Declaration, TaskInfo, Credential, ActionGrant, ActionPending, ToolEvent } from "./client.js";
export { ValetError } from "./errors.js";
export type { ValetErrorCode } from "./errors.js";
export { DPoPKey } from "./dpop.js";
export { Verifier, VerifyError, requestInfo, actionHeader } from "./verifier.js";
export type { VerifierOptions, Claims, Effect, RequestInfo, CallCounts, SSFStream } from "./verifier.js";
export { canonicalArgs, argsHash } from "./canonical.js";
export type { components as OpenAPIComponents, paths as OpenAPIPaths } from "./gen/openapi.js";
