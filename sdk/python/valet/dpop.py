"""RFC 9449 DPoP proofs with an EC P-256 key (ES256), and the server nonces
of RFC 9449 section 8: a DPoP-Nonce a server sends is put in the next proofs
for that server, and a use_dpop_nonce refusal is retried once with it."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.parse
from typing import Callable, Dict, Optional

from cryptography.hazmat.primitives.asymmetric import ec

from ._jose import b64e, json_b64, sign_es256

__all__ = ["DPoPKey", "ath", "thumbprint", "normalize_url"]


def ath(access_token: str) -> str:
    """The ath claim of a proof made with access_token."""
    return b64e(hashlib.sha256(access_token.encode("ascii")).digest())


def thumbprint(jwk: Dict[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of a public EC JWK."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canon = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    return b64e(hashlib.sha256(canon).digest())


def normalize_url(raw: str) -> str:
    """The htu of a request URL: no query or fragment (RFC 9449 section 4.2)."""
    u = urllib.parse.urlsplit(raw)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path or "/", "", ""))


def _origin(raw: str) -> str:
    u = urllib.parse.urlsplit(raw)
    return f"{u.scheme.lower()}://{u.netloc.lower()}"


class DPoPKey:
    """An EC P-256 key that signs DPoP proofs. The private key never leaves
    the object: there is no accessor for it and it is not pickled or
    printed. Safe for concurrent use."""

    __slots__ = ("_key", "_jwk", "_jkt", "_nonces", "_lock", "_now")

    def __init__(self, private_key: Optional[ec.EllipticCurvePrivateKey] = None, *,
                 now: Callable[[], float] = time.time) -> None:
        if private_key is None:
            private_key = ec.generate_private_key(ec.SECP256R1())
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("DPoP key must be on P-256")
        self._key = private_key
        nums = private_key.public_key().public_numbers()
        self._jwk = {"kty": "EC", "crv": "P-256",
                     "x": b64e(nums.x.to_bytes(32, "big")), "y": b64e(nums.y.to_bytes(32, "big"))}
        self._jkt = thumbprint(self._jwk)
        self._nonces: Dict[str, str] = {}
        self._lock = threading.Lock()
        self._now = now

    @classmethod
    def generate(cls) -> "DPoPKey":
        return cls()

    @property
    def jkt(self) -> str:
        """The key's RFC 7638 thumbprint: the cnf.jkt of the tokens bound to it."""
        return self._jkt

    @property
    def public_jwk(self) -> Dict[str, str]:
        return dict(self._jwk)

    def __repr__(self) -> str:
        return f"DPoPKey(jkt={self._jkt!r})"

    def __reduce__(self) -> str:  # never serialise the private key
        raise TypeError("a DPoPKey cannot be pickled")

    def proof(self, method: str, url: str, access_token: Optional[str] = None,
              nonce: Optional[str] = None) -> str:
        """A proof for one request of method to url, bound to access_token
        when given, carrying the server's last nonce for url's origin (or
        nonce when given)."""
        if nonce is None:
            with self._lock:
                nonce = self._nonces.get(_origin(url))
        claims = {"jti": b64e(os.urandom(16)), "htm": method.upper(), "htu": normalize_url(url),
                  "iat": int(self._now())}
        if access_token:
            claims["ath"] = ath(access_token)
        if nonce:
            claims["nonce"] = nonce
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self._jwk}
        signing_input = json_b64(header) + "." + json_b64(claims)
        return signing_input + "." + b64e(sign_es256(self._key, signing_input.encode("ascii")))

    def remember_nonce(self, url: str, nonce: Optional[str]) -> bool:
        """Keeps a DPoP-Nonce a server sent for url's origin; True when it is
        a new one."""
        if not nonce or len(nonce) > 1024:
            return False
        o = _origin(url)
        with self._lock:
            new = self._nonces.get(o) != nonce
            self._nonces[o] = nonce
        return new


