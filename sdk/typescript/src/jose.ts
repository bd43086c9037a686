// The little of JOSE the verifier needs, on WebCrypto: compact JWS
// verification with a JWK, and RFC 7638 thumbprints.

import { fromB64url, sha256B64url } from "./canonical.js";

export interface JWK {
  kty?: string;
  crv?: string;
  kid?: string;
  alg?: string;
  use?: string;
  x?: string;
  y?: string;
  n?: string;
  e?: string;
  d?: string;
  [k: string]: unknown;
}

export interface Decoded {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
  signingInput: Uint8Array<ArrayBuffer>;
  signature: Uint8Array<ArrayBuffer>;
}

/** decodeJWS splits and decodes a compact JWS; any malformation throws. */
export function decodeJWS(raw: string): Decoded {
  const parts = raw.split(".");
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p))) throw new Error("not a compact JWS");
  const json = (s: string) => {
    const v: unknown = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(fromB64url(s)));
    if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error("JWS part is not a JSON object");
    return v as Record<string, unknown>;
  };
  return {
    header: json(parts[0]),
    payload: json(parts[1]),
    signingInput: new TextEncoder().encode(parts[0] + "." + parts[1]),
    signature: fromB64url(parts[2]),
  };
}

type Alg = { import: AlgorithmIdentifier | RsaHashedImportParams | EcKeyImportParams; verify: AlgorithmIdentifier | EcdsaParams | RsaPssParams; kty: string; crv?: string };

const algs: Record<string, Alg> = {
  EdDSA: { import: { name: "Ed25519" }, verify: { name: "Ed25519" }, kty: "OKP", crv: "Ed25519" },
  ES256: { import: { name: "ECDSA", namedCurve: "P-256" }, verify: { name: "ECDSA", hash: "SHA-256" }, kty: "EC", crv: "P-256" },
  ES384: { import: { name: "ECDSA", namedCurve: "P-384" }, verify: { name: "ECDSA", hash: "SHA-384" }, kty: "EC", crv: "P-384" },
  RS256: { import: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, verify: { name: "RSASSA-PKCS1-v1_5" }, kty: "RSA" },
  PS256: { import: { name: "RSA-PSS", hash: "SHA-256" }, verify: { name: "RSA-PSS", saltLength: 32 }, kty: "RSA" },
};

/** importJWK imports a public JWK for alg; a private or mismatched key throws. */
export async function importJWK(jwk: JWK, alg: string): Promise<CryptoKey> {
  const a = algs[alg];
  if (!a) throw new Error(`alg ${alg.slice(0, 16)} is not supported`);
  if (jwk.d !== undefined) throw new Error("the key is private");
  if (jwk.kty !== a.kty || (a.crv && jwk.crv !== a.crv)) throw new Error(`the key does not fit alg ${alg}`);
  const pub: JsonWebKey = a.kty === "RSA" ? { kty: "RSA", n: jwk.n, e: jwk.e } : { kty: a.kty, crv: jwk.crv, x: jwk.x, ...(jwk.y ? { y: jwk.y } : {}) };
  return crypto.subtle.importKey("jwk", pub, a.import, false, ["verify"]);
}

/** verifySignature checks d's signature with key under alg. */
export async function verifySignature(d: Decoded, key: CryptoKey, alg: string): Promise<boolean> {
  const a = algs[alg];
  if (!a) return false;
  return crypto.subtle.verify(a.verify, key, d.signature, d.signingInput);
}

/** thumbprint is the RFC 7638 SHA-256 thumbprint of a public JWK, base64url. */
export async function thumbprint(jwk: JWK): Promise<string> {
  const s = (v: unknown) => JSON.stringify(String(v ?? ""));
  switch (jwk.kty) {
    case "EC":
      return sha256B64url(`{"crv":${s(jwk.crv)},"kty":"EC","x":${s(jwk.x)},"y":${s(jwk.y)}}`);
    case "OKP":
      return sha256B64url(`{"crv":${s(jwk.crv)},"kty":"OKP","x":${s(jwk.x)}}`);
    case "RSA":
      return sha256B64url(`{"e":${s(jwk.e)},"kty":"RSA","n":${s(jwk.n)}}`);
  }
  throw new Error("unsupported kty");
}
