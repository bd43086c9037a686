"""The few JOSE pieces the SDK needs: base64url, JWS compact verification
with EdDSA (Ed25519) and ES256 keys from a JWKS, and ES256 signing."""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, Optional, Tuple, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

PublicKey = Union[ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey]

# The algorithms Valet signs task and action tokens with.
ALGORITHMS = ("EdDSA", "ES256")


def b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def b64d(s: str) -> bytes:
    if not isinstance(s, str) or any(c not in _B64URL for c in s):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def json_b64(obj: Any) -> str:
    return b64e(json.dumps(obj, separators=(",", ":"), sort_keys=False).encode("utf-8"))


def public_key_from_jwk(k: Dict[str, Any]) -> Optional[Tuple[str, PublicKey]]:
    """(alg, key) of a public Ed25519 or P-256 JWK; None for any other or a
    private one."""
    if "d" in k:
        return None
    try:
        if k.get("kty") == "OKP" and k.get("crv") == "Ed25519":
            return "EdDSA", ed25519.Ed25519PublicKey.from_public_bytes(b64d(k["x"]))
        if k.get("kty") == "EC" and k.get("crv") == "P-256":
            x, y = b64d(k["x"]), b64d(k["y"])
            if len(x) != 32 or len(y) != 32:
                return None
            nums = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1())
            return "ES256", nums.public_key()
    except (KeyError, ValueError, TypeError):
        return None
    return None


def split(token: str) -> Tuple[Dict[str, Any], Dict[str, Any], bytes, bytes]:
    """Header, payload, signing input and signature of a compact JWS; raises
    ValueError when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = json.loads(b64d(parts[0]))
    payload = json.loads(b64d(parts[1]))
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise ValueError("header and payload must be JSON objects")
    return header, payload, (parts[0] + "." + parts[1]).encode("ascii"), b64d(parts[2])


def verify_signature(alg: str, key: PublicKey, signing_input: bytes, sig: bytes) -> bool:
    try:
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, signing_input)
            return True
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(sig) != 64:
                return False
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


def sign_es256(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
