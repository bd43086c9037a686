// RFC 9449 DPoP: a key whose private half never leaves WebCrypto
// (non-extractable), proofs for each request, and the server nonces of
// section 8 remembered per origin.

import { b64url, sha256B64url } from "./canonical.js";

/** A DPoP key (ES256). Its private key is non-extractable: nothing, not even this process, can export it. */
export class DPoPKey {
  private nonces = new Map<string, string>();
  private constructor(
    private readonly privateKey: CryptoKey,
    /** The public JWK embedded in every proof. */
    readonly jwk: JsonWebKey,
    /** The RFC 7638 SHA-256 thumbprint of the key, base64url: the cnf.jkt of the tokens bound to it. */
    readonly jkt: string,
  ) {}

  /** generate makes a new ES256 key pair with a non-extractable private key. */
  static async generate(): Promise<DPoPKey> {
    const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
    if (pair.privateKey.extractable) throw new Error("dpop: the platform made an extractable key");
    const full = await crypto.subtle.exportKey("jwk", pair.publicKey);
    const jwk: JsonWebKey = { kty: "EC", crv: "P-256", x: full.x, y: full.y };
    // RFC 7638: the required members in lexicographic order, no space.
    const jkt = await sha256B64url(`{"crv":"P-256","kty":"EC","x":"${jwk.x}","y":"${jwk.y}"}`);
    return new DPoPKey(pair.privateKey, jwk, jkt);
  }

  /**
   * proof signs a proof for one request: htm, htu (the URL without query and fragment), a fresh jti, iat, the
   * ath of accessToken when one is sent, and the last nonce the URL's origin gave (RFC 9449 section 8).
   */
  async proof(method: string, url: string | URL, accessToken?: string): Promise<string> {
    const u = new URL(url);
    const htu = u.origin + u.pathname;
    const header = { typ: "dpop+jwt", alg: "ES256", jwk: this.jwk };
    const claims: Record<string, unknown> = {
      jti: b64url(crypto.getRandomValues(new Uint8Array(16))),
      htm: method.toUpperCase(),
      htu,
      iat: Math.floor(Date.now() / 1000),
    };
    if (accessToken) claims.ath = await sha256B64url(accessToken);
    const nonce = this.nonces.get(u.origin);
    if (nonce) claims.nonce = nonce;
    const enc = (o: unknown) => b64url(new TextEncoder().encode(JSON.stringify(o)));
    const input = `${enc(header)}.${enc(claims)}`;
    // WebCrypto's ECDSA signature is already r||s, the JWS form.
    const sig = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, this.privateKey, new TextEncoder().encode(input));
    return `${input}.${b64url(new Uint8Array(sig))}`;
  }

  /**
   * noteNonce remembers the DPoP-Nonce an answer from url's origin carried. It answers true when the answer
   * asks for a retry with it (error use_dpop_nonce, RFC 9449 sections 8 and 9).
   */
  noteNonce(url: string | URL, res: Response, body?: string): boolean {
    const nonce = res.headers.get("DPoP-Nonce");
    if (!nonce || nonce.length > 1024 || !/^[\x21-\x7e]+$/.test(nonce)) return false;
    const origin = new URL(url).origin;
    const changed = this.nonces.get(origin) !== nonce;
    this.nonces.set(origin, nonce);
    if (!changed || (res.status !== 400 && res.status !== 401)) return false;
    const challenge = res.headers.get("WWW-Authenticate") ?? "";
    if (/error="use_dpop_nonce"/.test(challenge)) return true;
    try {
      return (JSON.parse(body ?? "") as { error?: unknown }).error === "use_dpop_nonce";
    } catch {
      return false;
    }
  }
}
