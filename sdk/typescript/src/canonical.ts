// The canonical JSON of a tool call's arguments and its hash, byte for byte
// what Valet's Go package canonical computes (the args_hash of action
// tokens): object keys sorted, no insignificant space, integers without a
// fraction, strings escaped as Go's encoding/json does without HTML escaping.

/** How deep arguments may nest. */
export const maxDepth = 32;

/** canonicalArgs is the canonical JSON of a call's arguments: an object (undefined or null mean {}). */
export function canonicalArgs(args: unknown): string {
  if (args === undefined || args === null) return "{}";
  // Through JSON first, as Go's canonical.Value marshals then decodes: toJSON, dropped undefined members.
  const v: unknown = JSON.parse(JSON.stringify(args));
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new TypeError("arguments must be a JSON object");
  return write(v, 0);
}

/** argsHash is base64url(SHA-256(canonical JSON)), the args_hash claim of an action token. */
export async function argsHash(args: unknown): Promise<string> {
  return sha256B64url(canonicalArgs(args));
}

export async function sha256B64url(s: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s));
  return b64url(new Uint8Array(d));
}

/** b64url is base64url without padding (RFC 4648 section 5), with no Node-only API. */
export function b64url(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** fromB64url decodes base64url (padding optional); anything else throws. */
export function fromB64url(s: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw new Error("not base64url");
  const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (s.length % 4)) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function write(v: unknown, depth: number): string {
  if (depth > maxDepth) throw new RangeError(`arguments nest deeper than ${maxDepth}`);
  if (v === null) return "null";
  switch (typeof v) {
    case "boolean":
      return v ? "true" : "false";
    case "string":
      return goString(v);
    case "number":
      return goNumber(v);
    case "object":
      if (Array.isArray(v)) return "[" + v.map((e) => write(e, depth + 1)).join(",") + "]";
      {
        const o = v as Record<string, unknown>;
        // Go sorts keys by their UTF-8 bytes; for strings of one plane UTF-16 order agrees, so compare by bytes.
        const keys = Object.keys(o).sort(byUTF8);
        return "{" + keys.map((k) => goString(k) + ":" + write(o[k], depth + 1)).join(",") + "}";
      }
    default:
      throw new TypeError(`arguments: unexpected ${typeof v}`);
  }
}

const utf8 = new TextEncoder();

function byUTF8(a: string, b: string): number {
  const x = utf8.encode(a);
  const y = utf8.encode(b);
  for (let i = 0; i < x.length && i < y.length; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

function goNumber(n: number): string {
  if (!Number.isFinite(n)) throw new RangeError("arguments: number out of range");
  // Go: integers print as integers, as do floats with no fraction below 2^53; the rest as ES number
  // formatting, which Go's encoding/json matches (shortest repr, exponent form below 1e-6 and from 1e21).
  if (Number.isInteger(n) && Math.abs(n) < 2 ** 53) return (Object.is(n, -0) ? 0 : n).toString();
  return JSON.stringify(n);
}

/** goString quotes s as Go's json.Encoder with SetEscapeHTML(false). */
function goString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        out += s[i] + s[i + 1];
        i++;
        continue;
      }
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      out += "\ufffd"; // a lone surrogate is invalid UTF-8 to Go: replaced
      continue;
    }
    switch (c) {
      case 0x22: out += '\\"'; continue;
      case 0x5c: out += "\\\\"; continue;
      case 0x0a: out += "\\n"; continue;
      case 0x0d: out += "\\r"; continue;
      case 0x09: out += "\\t"; continue;
      case 0x08: out += "\\b"; continue;
      case 0x0c: out += "\\f"; continue;
      case 0x2028: out += "\\u2028"; continue;
      case 0x2029: out += "\\u2029"; continue;
    }
    if (c < 0x20) {
      out += "\\u00" + c.toString(16).padStart(2, "0");
      continue;
    }
    out += s[i];
  }
  return out + '"';
}
