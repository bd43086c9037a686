"""The verifier a Python tool server puts in front of its tools to accept
Valet task tokens, with the semantics of Valet's Go package verify: the
token's signature against Valet's published keys (fetched once, refetched
for an unknown kid at most every 30 s), issuer, audience, expiry, that the
tool is granted, the DPoP proof of a key-bound token, and revocation
through a local deny set fed by Valet's revocation feed (no call to Valet
per check) or, until the feed is live, through introspection. Sensitive
tools need a one-shot action token, consumed at Valet.

Instead of the revocation feed, the verifier can follow a poll stream of
Valet's OpenID Shared Signals transmitter (follow_ssf): the SETs it sends
feed the same deny set (see docs/signals.md)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import json
import logging
import queue
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Counter, Dict, Iterable, List, Mapping, Optional, Tuple

from . import _http, _jose
from .canonical import canonical_args
from .dpop import ath as _ath
from .errors import Unreachable, VerifyError

__all__ = ["Verifier", "Claims", "SSFStream", "ACTION_HEADER"]

ACTION_HEADER = "Valet-Action"

JWKS_MIN_REFRESH = 30.0
DPOP_WINDOW = 60.0
MAX_TOKEN = 8192
MAX_PROOF = 4096
RESUME_WITHIN = 60.0
REPORT_QUEUE = 1024
# A stream silent for this long is dead (Valet sends a keepalive every 15 s),
# and an SSF stream whose last poll answered longer ago is stale: checks go
# back to introspection.
STREAM_IDLE = 45.0

# The SSF event types follow_ssf applies (CAEP 1.0, RISC 1.0), as Go's verify.
SSF_SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
SSF_CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
SSF_ACCOUNT_DISABLED = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
SSF_ACCOUNT_ENABLED = "https://schemas.openid.net/secevent/risc/event-type/account-enabled"

# How far this clock may lag Valet's, in seconds: a token's iat and nbf
# may be that far ahead (as the Go verify.ClockSkew).
CLOCK_SKEW = 5.0

# Bounds of a SET, as Valet's own SSF receiver checks the IdP's: size, clock
# leeway, age (also how long an applied jti is remembered), events.
MAX_SET = 16 << 10
SET_LEEWAY = 30.0
SET_MAX_AGE = 24 * 3600.0
MAX_SET_EVENTS = 8
# SETs asked for per poll: 50 of at most 16 KiB fit the 1 MiB answer bound.
SSF_POLL_EVENTS = 50
# How long Valet holds a poll without SETs (ssf.maxPollWait).
SSF_POLL_HOLD = 2.0

_PROOF_ALGS = ("EdDSA", "ES256")
PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}$")


@dataclass(frozen=True)
class SSFStream:
    """A poll stream (delivery urn:ietf:rfc:8936) on Valet's SSF transmitter
    that the verifier follows instead of the revocation feed, created for
    this tool server: each poll acknowledges what it applied, so one stream
    per follower. Go's verify.SSFStream."""

    # The stream's delivery endpoint_url (Valet's /ssf/poll/{stream_id}).
    poll_url: str
    # The stream's aud: every SET must name it.
    audience: str
    # Answers the Authorization header of a poll (a bearer token of a viewer
    # of Valet's admin API); called before each poll.
    authorization: Callable[[], str]


@dataclass(frozen=True)
class Claims:
    """A checked task token's claims."""

    id: str
    task_id: str
    subject: str
    template: str = ""
    agent_issuer: str = ""
    scope: str = ""
    jkt: str = ""
    tools: Tuple[str, ...] = ()
    audience: Tuple[str, ...] = ()
    act: Tuple[str, ...] = ()
    issued_at: float = 0.0
    expires_at: float = 0.0
    # The sensitive tools the task may use with an action token; never
    # accepted by check().
    action_tools: Tuple[str, ...] = ()

    @property
    def actor(self) -> str:
        """The agent holding the token."""
        return self.act[0] if self.act else self.subject


class _KeysUnavailable(ValueError):
    """Valet's JWKS could not be read for a SET's unknown kid (the fetch
    failed, or the last began under JWKS_MIN_REFRESH ago)."""


def _bound(s: str) -> str:
    """A transmitter-sent value bounded and made printable for logs and
    setErrs."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(s)[:128])


def _refuse(status: int, message: str, reason: str = "") -> VerifyError:
    return VerifyError(status, message, reason)


def _header(headers: Mapping[str, str], name: str) -> str:
    v = headers.get(name)
    if v is None:
        low = name.lower()
        for k, val in headers.items():
            if k.lower() == low:
                return val
        return ""
    return v


def _token_of(headers: Mapping[str, str]) -> Tuple[str, str]:
    scheme, sep, token = _header(headers, "Authorization").partition(" ")
    if not sep or scheme.lower() not in ("bearer", "dpop"):
        return "", ""
    return token.strip(), scheme


def _normalize(raw: str) -> str:
    """Go's dpop.NormalizeURL: scheme and host lower case, default port
    dropped, empty path "/", no query or fragment."""
    u = urllib.parse.urlsplit(raw)
    if not u.scheme or not u.netloc or "@" in u.netloc:
        raise ValueError("must be an absolute URL without user info")
    scheme, host = u.scheme.lower(), u.netloc.lower()
    if (scheme == "https" and host.endswith(":443")) or (scheme == "http" and host.endswith(":80")):
        host = host[: host.rfind(":")]
    return f"{scheme}://{host}{u.path or '/'}"


class _DenySet:
    """The local copy of what the revocation feed has said."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.lock = threading.RLock()
        self.now = now
        self.is_live = False
        self.jtis: Dict[str, float] = {}
        self.tasks: Dict[str, float] = {}
        self.epochs: Dict[Tuple[str, str], int] = {}
        self.controls: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
        self.cursor = ""
        self.heard = 0.0
        # When the feed or the SSF stream was last heard from (monotonic:
        # the injected clock may stand still).
        self.heard_mono = 0.0

    def add_revoked(self, e: Mapping[str, Any]) -> None:
        exp = e.get("exp") or 0
        until = float(exp) if isinstance(exp, (int, float)) and exp else self.now() + 86400
        with self.lock:
            if isinstance(e.get("jti"), str) and e["jti"]:
                self.jtis[e["jti"]] = until
            if isinstance(e.get("task_id"), str) and e["task_id"]:
                self.tasks[e["task_id"]] = max(until, self.tasks.get(e["task_id"], 0.0))

    def add_epoch(self, e: Mapping[str, Any]) -> None:
        before = e.get("before")
        if not isinstance(before, int):
            return
        k = (str(e.get("dimension", "")), str(e.get("key", "")))
        with self.lock:
            if before > self.epochs.get(k, 0):
                self.epochs[k] = before

    @staticmethod
    def _ckey(e: Mapping[str, Any]) -> Tuple[str, str, str]:
        return (str(e.get("kind", "")), str(e.get("issuer", "")), str(e.get("target", "")))

    def apply_control(self, e: Mapping[str, Any]) -> None:
        with self.lock:
            if e.get("active"):
                self.controls[self._ckey(e)] = dict(e)
            else:
                self.controls.pop(self._ckey(e), None)

    def set_controls(self, items: Iterable[Mapping[str, Any]]) -> None:
        with self.lock:
            self.controls = {self._ckey(e): dict(e) for e in items if isinstance(e, dict)}

    def controlled(self, c: Claims) -> Tuple[bool, bool]:
        """(deny, unsure) with Go's denySet.controlled semantics."""
        with self.lock:
            controls = list(self.controls.values())
        unsure = False
        others = [c.subject, *c.act[1:]] if c.act else []
        for e in controls:
            kind, target, issuer = e.get("kind"), e.get("target", ""), e.get("issuer", "")
            if kind == "freeze_agent":
                if target == c.actor and (issuer == "" or issuer == c.agent_issuer):
                    return True, False
                for who in others:
                    if who == target:
                        if issuer == "":
                            return True, False
                        unsure = True
            elif kind == "quarantine_template":
                if target == c.template:
                    return True, False
            elif kind == "distrust_issuer":
                if target == c.agent_issuer:
                    return True, False
                if c.act:
                    unsure = True
        return False, unsure

    def denied(self, c: Claims) -> bool:
        with self.lock:
            if c.id in self.jtis or c.task_id in self.tasks:
                return True
            iat_ms = int(c.issued_at * 1000)
            for k in (("agent", f"{c.agent_issuer}/{c.actor}"), ("agent", f"{c.agent_issuer}/{c.subject}"),
                      ("template", c.template), ("issuer", c.agent_issuer), ("all", "*"),
                      # An agent's epoch heard on the SSF stream, by subject alone.
                      ("agentsub", c.actor), ("agentsub", c.subject)):
                before = self.epochs.get(k)
                if before is not None and iat_ms < before:
                    return True
        return False

    def prune(self) -> None:
        now = self.now()
        with self.lock:
            self.jtis = {k: v for k, v in self.jtis.items() if v >= now}
            self.tasks = {k: v for k, v in self.tasks.items() if v >= now}


class Verifier:
    """Checks task tokens for one tool server (one audience). Safe for
    concurrent use. Call start() to follow the revocation feed; until it is
    live, every check asks Valet's introspection. calls counts every request
    made to Valet, by kind (jwks, introspect, consume, snapshot, stream,
    events)."""

    def __init__(self, issuer: str, audience: str, client_id: str, client_secret: str, *,
                 public_url: Optional[str] = None, timeout: float = 5.0, now: Callable[[], float] = time.time,
                 logger: Optional[logging.Logger] = None, valet_url: Optional[str] = None,
                 scopes: Optional[Iterable[str]] = None) -> None:
        errs = []
        u = urllib.parse.urlsplit(issuer or "")
        if not u.scheme or not u.netloc:
            errs.append(f"issuer {issuer[:128]!r} must be an absolute URL")
        if not audience:
            errs.append("audience is required")
        if not client_id or not client_secret:
            errs.append("client_id and client_secret are required (introspection and the revocation feed)")
        if public_url:
            p = urllib.parse.urlsplit(public_url)
            if p.scheme not in ("http", "https") or not p.netloc or "@" in p.netloc or p.query or p.fragment:
                errs.append(f"public_url {public_url[:128]!r} must be an absolute http(s) URL without user, query or fragment")
        if errs:
            raise ValueError("verify: " + "; ".join(errs))
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.public_url = (public_url or "").rstrip("/")
        self.scopes = list(scopes or [])
        self._base = (valet_url or issuer).rstrip("/")
        self._basic = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode("utf-8")).decode("ascii")
        self._timeout = timeout
        self._now = now
        self.log = logger or logging.getLogger("valet.verify")
        if not self.public_url:
            self.log.warning("verify: no public_url configured; DPoP-bound task tokens will be refused")
        self._keys_lock = threading.Lock()
        self._keys: Dict[str, Tuple[str, _jose.PublicKey]] = {}
        self._last_fetch = 0.0
        self._fetching: Optional[threading.Event] = None
        self._fetch_err: Optional[str] = None
        self._deny = _DenySet(now)
        self._seen_lock = threading.Lock()
        self._seen: Dict[str, float] = {}
        self._calls_lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._reports: "queue.Queue[Tuple[str, str, str, bytes]]" = queue.Queue(REPORT_QUEUE)
        self.report_stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._stream_conn: Optional[http.client.HTTPConnection] = None
        # The jtis of the SETs applied, until iat + SET_MAX_AGE: a SET is
        # applied once (only the SSF thread reads and writes it).
        self._sets_seen: Dict[str, float] = {}

    # -- counting every request to Valet ----------------------------------

    @property
    def calls(self) -> Dict[str, int]:
        """Requests made to Valet so far, by kind."""
        with self._calls_lock:
            return dict(self._calls)

    def _stat(self, kind: str) -> None:
        with self._calls_lock:
            self.report_stats[kind] += 1

    def _count(self, kind: str) -> None:
        with self._calls_lock:
            self._calls[kind] += 1

    def _request(self, kind: str, method: str, path: str, *, form: Optional[Dict[str, str]] = None,
                 headers: Optional[Dict[str, str]] = None, body: Optional[bytes] = None) -> _http.Response:
        self._count(kind)
        h = dict(headers or {})
        if form is not None:
            body = _http.form_body(form)
            h["Content-Type"] = "application/x-www-form-urlencoded"
            h["Authorization"] = self._basic
        return _http.request(method, self._base + path, headers=h, body=body, timeout=self._timeout)

    # -- checks ---------------------------------------------------------------

    @property
    def live(self) -> bool:
        """Whether the deny set is fed (check() then asks no one): the
        revocation feed is connected, or the last SSF poll answered, and
        either was heard from within the last STREAM_IDLE seconds."""
        with self._deny.lock:
            return self._deny.is_live and time.monotonic() - self._deny.heard_mono <= STREAM_IDLE

    def check(self, headers: Mapping[str, str], method: str, path: str, tool: str) -> Claims:
        """Checks the request's task token for a call of tool; method and
        path (as sent, with its escapes) are the request's, for the DPoP
        proof. Raises VerifyError (status 401, 403 or 503) to refuse."""
        c = self._check_token(headers, method, path)
        if not tool or tool not in c.tools:
            e = _refuse(403, f"tool {tool[:128]!r} is not granted to this task")
            if _SCOPE_TOKEN.match(tool or ""):
                e.scope = f"template:{c.template} {tool}" if _SCOPE_TOKEN.match(c.template) else tool
            raise e
        self._check_revoked(_token_of(headers)[0], c)
        return c

    def check_action(self, headers: Mapping[str, str], method: str, path: str, tool: str, args: Any) -> Claims:
        """Checks a call of a sensitive tool: the task token as check() does,
        and the one-shot action token in the Valet-Action header, for this
        task, tool, exactly args (hashed in canonical form) and key, then
        consumed at Valet: the one call to Valet a sensitive tool costs."""
        c = self._check_token(headers, method, path)
        try:
            canon = canonical_args(args)
        except ValueError as e:
            raise _refuse(500, "the tool server's arguments cannot be hashed", str(e)) from None
        if not tool or tool not in c.action_tools:
            raise _refuse(403, f"tool {tool[:128]!r} is not granted to this task")
        self._check_revoked(_token_of(headers)[0], c)

        def no(msg: str, reason: str = "") -> VerifyError:
            e = _refuse(403, msg, reason)
            e.challenge = False
            return e

        raw = _header(headers, ACTION_HEADER).strip()
        if not raw:
            raise no(f"tool {tool[:128]!r} needs an action token (header {ACTION_HEADER})", "no action token")
        if len(raw) > MAX_TOKEN:
            raise no("invalid action token", "action token too long")
        try:
            p = self._verify_jwt(raw, "action+jwt")
        except ValueError as e:
            raise no("invalid action token", str(e)) from None
        jkt = p.get("cnf", {}).get("jkt", "") if isinstance(p.get("cnf"), dict) else ""
        if not p.get("jti") or not p.get("task_id"):
            raise no("invalid action token", "missing jti or task_id")
        if p["task_id"] != c.task_id:
            raise no("the action token is for another task")
        if p.get("tool") != tool:
            raise no(f"the action token is not for tool {tool[:128]!r}")
        digest = base64.urlsafe_b64encode(hashlib.sha256(canon).digest()).rstrip(b"=").decode("ascii")
        if p.get("args_hash") != digest:
            raise no("the action token is for other arguments")
        if jkt != c.jkt:
            raise no("the action token is bound to another key")
        try:
            resp = self._request("consume", "POST", "/v1/actions/consume", form={"token": raw})
            if resp.status != 200:
                raise Unreachable(f"status {resp.status}")
            consumed = resp.json().get("consumed") is True
        except Exception as e:
            raise _refuse(503, "Valet cannot be reached to use the action token", str(e)) from None
        if not consumed:
            raise no("the action token was used already, expired or was revoked")
        return c

    def _check_token(self, headers: Mapping[str, str], method: str, path: str) -> Claims:
        raw, scheme = _token_of(headers)
        if not raw:
            raise _refuse(401, "a task token is required", "no Authorization header")
        if len(raw) > MAX_TOKEN:
            raise _refuse(401, "invalid task token", "token too long")
        try:
            p = self._verify_jwt(raw, "at+jwt")
        except ValueError as e:
            raise _refuse(401, "invalid task token", str(e)) from None
        if not all(isinstance(p.get(k), str) and p.get(k) for k in ("jti", "task_id", "sub")):
            raise _refuse(401, "invalid task token", "missing jti, task_id or sub")
        act: List[str] = []
        a, n = p.get("act"), 0
        while a is not None:
            if not isinstance(a, dict) or not isinstance(a.get("sub"), str) or not a["sub"] or n >= 32:
                raise _refuse(401, "invalid task token", "bad act claim")
            act.append(a["sub"])
            a, n = a.get("act"), n + 1
        aud = p.get("aud")
        c = Claims(id=p["jti"], task_id=p["task_id"], subject=p["sub"], template=_s(p.get("template")),
                   agent_issuer=_s(p.get("agent_issuer")), scope=_s(p.get("scope")), tools=_strs(p.get("tools")),
                   audience=(aud,) if isinstance(aud, str) else _strs(aud), act=tuple(act),
                   issued_at=float(p.get("iat") or 0), expires_at=float(p["exp"]),
                   action_tools=_strs(p.get("action_tools")))
        cnf = p.get("cnf")
        if cnf is not None:
            jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
            if not isinstance(jkt, str) or not jkt:
                raise _refuse(401, "invalid task token", "cnf without jkt")
            c = _replace(c, jkt=jkt)
            if not self.public_url:
                raise _refuse(401, "this tool server does not accept key-bound (DPoP) tokens",
                              "bound token, but no public_url is configured to check its proof's htu against")
            if scheme.lower() != "dpop":
                raise _refuse(401, "this token is bound to a key: send it with the DPoP scheme and a proof",
                              "bound token sent as Bearer")
            self._check_proof(headers, method, path, raw, jkt)
        return c

    def _verify_jwt(self, raw: str, typ: str) -> Dict[str, Any]:
        """The payload of a JWT signed by Valet with typ, for this audience,
        not expired; raises ValueError with the reason."""
        try:
            header, payload, signing_input, sig = _jose.split(raw)
        except (ValueError, TypeError, UnicodeError) as e:
            raise ValueError(f"malformed token: {e.__class__.__name__}") from None
        if header.get("typ") != typ:
            raise ValueError(f"typ must be {typ}")
        if "crit" in header:
            raise ValueError("crit header is not supported")
        alg = header.get("alg")
        if alg not in _jose.ALGORITHMS:
            raise ValueError("signing method is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError("no kid")
        key_alg, key = self._key(kid)
        if key_alg != alg or not _jose.verify_signature(alg, key, signing_input, sig):
            raise ValueError("signature is invalid")
        now = self._now()
        if payload.get("iss") != self.issuer:
            raise ValueError("issuer is not Valet's")
        aud = payload.get("aud")
        if not ((isinstance(aud, str) and aud == self.audience) or (isinstance(aud, list) and self.audience in aud)):
            raise ValueError("audience is not this tool server's")
        exp = payload.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise ValueError("exp is required")
        if now >= exp:
            raise ValueError("token is expired")
        iat = payload.get("iat")
        # iat and nbf may be up to CLOCK_SKEW ahead (Valet stamps whole
        # seconds, and this clock may lag Valet's); exp gets no leeway.
        if iat is not None and (not isinstance(iat, (int, float)) or iat > now + CLOCK_SKEW):
            raise ValueError("token used before issued")
        nbf = payload.get("nbf")
        if nbf is not None and (not isinstance(nbf, (int, float)) or nbf > now + CLOCK_SKEW):
            raise ValueError("token is not valid yet")
        return payload

    def _key(self, kid: str) -> Tuple[str, _jose.PublicKey]:
        with self._keys_lock:
            k = self._keys.get(kid)
        if k is not None:
            return k
        self._refresh_keys()
        with self._keys_lock:
            k = self._keys.get(kid)
        if k is None:
            raise ValueError(f"kid {kid[:64]!r} unknown")
        return k

    def _refresh_keys(self) -> None:
        """Fetches the JWKS unless a fetch is in flight (then waits for it) or
        the last began less than JWKS_MIN_REFRESH ago."""
        with self._keys_lock:
            ev = self._fetching
            if ev is None:
                now = self._now()
                if self._last_fetch and now - self._last_fetch < JWKS_MIN_REFRESH:
                    raise ValueError(f"unknown kid (JWKS fetched {now - self._last_fetch:.0f} s ago)")
                self._last_fetch = now
                ev = self._fetching = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            ev.wait(10.0)
            with self._keys_lock:
                if self._fetch_err:
                    raise ValueError(self._fetch_err)
            return
        err: Optional[str] = None
        keys: Dict[str, Tuple[str, _jose.PublicKey]] = {}
        try:
            resp = self._request("jwks", "GET", "/.well-known/jwks.json")
            if resp.status != 200:
                err = f"fetching JWKS: status {resp.status}"
            else:
                for k in (resp.json().get("keys") or []):
                    if isinstance(k, dict) and isinstance(k.get("kid"), str) and k["kid"]:
                        pk = _jose.public_key_from_jwk(k)
                        if pk is not None:
                            keys[k["kid"]] = pk
        except Exception as e:
            err = f"fetching JWKS: {e}"
        with self._keys_lock:
            if err is None:
                self._keys = keys
            self._fetch_err = err
            self._fetching = None
        ev.set()
        if err:
            raise ValueError(err)

    def _check_proof(self, headers: Mapping[str, str], method: str, path: str, raw: str, jkt: str) -> None:
        proof = _header(headers, "DPoP")
        try:
            p_jkt, jti, iat = _check_dpop(proof, method, self.public_url + path, self._now(), raw)
        except ValueError as e:
            raise _refuse(401, "invalid DPoP proof", str(e)) from None
        if p_jkt != jkt:
            raise _refuse(401, "invalid DPoP proof", "proof key does not match cnf.jkt")
        now = self._now()
        with self._seen_lock:
            if len(self._seen) > 10_000:
                self._seen = {k: u for k, u in self._seen.items() if u >= now}
            k = p_jkt + ":" + jti
            if k in self._seen and now <= self._seen[k]:
                raise _refuse(401, "invalid DPoP proof", "proof jti replayed")
            self._seen[k] = iat + 2 * DPOP_WINDOW

    def _check_revoked(self, raw: str, c: Claims) -> None:
        if self.live:
            if self._deny.denied(c):
                raise _refuse(401, "invalid task token", "revoked (feed)")
            deny, unsure = self._deny.controlled(c)
            if deny:
                raise _refuse(401, "invalid task token", "under an incident control (feed)")
            if not unsure:
                return
        try:
            resp = self._request("introspect", "POST", "/v1/introspect", form={"token": raw})
            if resp.status != 200:
                raise Unreachable(f"status {resp.status}")
            active = resp.json().get("active") is True
        except Exception as e:
            raise _refuse(503, "Valet cannot be reached to check revocation", f"introspecting: {e}") from None
        if not active:
            raise _refuse(401, "invalid task token", "revoked (introspection)")

    # -- the revocation feed and the report sender ----------------------

    def start(self) -> "Verifier":
        """Follows the revocation feed and sends tool-call reports in
        background threads until stop()."""
        if self._threads:
            return self
        self._stop.clear()
        for target, name in ((self._run_feed, "valet-feed"), (self._send_reports, "valet-reports")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        conn = self._stream_conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def wait_live(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.live:
                return True
            time.sleep(0.02)
        return self.live

    def __enter__(self) -> "Verifier":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _set_live(self, b: bool) -> None:
        with self._deny.lock:
            self._deny.is_live = b
            if b:
                self._deny.heard_mono = time.monotonic()

    def _run_feed(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._follow()
                err: Any = "stream ended"
            except Exception as e:  # any break: fall back to introspection
                err = e
            if self.live:
                backoff = 0.1
            self._set_live(False)
            if self._stop.is_set():
                return
            self.log.warning("revocation feed broke; checking by introspection until it is back: %s", err)
            if self._stop.wait(backoff):
                return
            backoff = min(2 * backoff, 5.0)

    def _follow(self) -> None:
        d = self._deny
        with d.lock:
            cursor, heard = d.cursor, d.heard
        if not cursor or self._now() - heard > RESUME_WITHIN:
            resp = self._request("snapshot", "GET", "/v1/revocations", headers={"Authorization": self._basic})
            if resp.status != 200:
                raise RuntimeError(f"reading revocation snapshot: status {resp.status}")
            snap = resp.json()
            for e in snap.get("revoked") or []:
                if isinstance(e, dict):
                    d.add_revoked(e)
            for e in snap.get("epochs") or []:
                if isinstance(e, dict):
                    d.add_epoch(e)
            d.set_controls(snap.get("controls") or [])
            cursor = str(snap.get("cursor") or "")
            with d.lock:
                d.cursor, d.heard = cursor, self._now()
        u = urllib.parse.urlsplit(self._base)
        conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(u.netloc, timeout=STREAM_IDLE)
        self._stream_conn = conn
        try:
            self._count("stream")
            conn.request("GET", (u.path or "") + "/v1/revocations/stream?cursor=" + urllib.parse.quote(cursor, safe=""),
                         headers={"Authorization": self._basic, "Accept": "text/event-stream"})
            stream = conn.getresponse()
            if stream.status != 200:
                with d.lock:
                    d.cursor = ""  # e.g. a cursor the feed no longer holds: reload the snapshot
                raise RuntimeError(f"opening revocation stream: status {stream.status}")
            self._set_live(True)
            self.log.info("revocation feed live")
            last_prune = time.monotonic()
            event, ev_id = "", ""
            data: List[str] = []
            while not self._stop.is_set():
                line = stream.readline(64 << 10)
                if not line:
                    raise RuntimeError("revocation stream closed")
                if len(line) >= 64 << 10 and not line.endswith(b"\n"):
                    raise RuntimeError("revocation stream line too long")
                s = line.decode("utf-8", "replace").rstrip("\r\n")
                if s == "":
                    self._apply(event, "".join(data))
                    with d.lock:
                        if ev_id:
                            d.cursor = ev_id  # after applying: a resume never skips it
                        d.heard = self._now()
                        d.heard_mono = time.monotonic()  # an event or a keepalive
                    event, ev_id, data = "", "", []
                    if time.monotonic() - last_prune > 60:
                        d.prune()
                        last_prune = time.monotonic()
                elif s.startswith("id:"):
                    ev_id = s[3:].strip()
                elif s.startswith("event:"):
                    event = s[6:].strip()
                elif s.startswith("data:"):
                    data.append(s[5:].strip())
        finally:
            self._stream_conn = None
            conn.close()

    def _apply(self, event: str, data: str) -> None:
        if event not in ("revoked", "epoch", "control"):
            return
        try:
            e = json.loads(data)
        except ValueError:
            return
        if not isinstance(e, dict):
            return
        if event == "revoked":
            self._deny.add_revoked(e)
        elif event == "epoch":
            self._deny.add_epoch(e)
        else:
            self._deny.apply_control(e)

    # -- following Valet's Shared Signals stream -------------------------

    def follow_ssf(self, stream: SSFStream) -> "Verifier":
        """Follows stream, a poll stream of Valet's SSF transmitter (RFC
        8936), instead of the revocation feed, and sends tool-call reports,
        in background threads until stop(). The SETs (CAEP session-revoked
        and credential-change, RISC account-disabled and account-enabled)
        feed the same deny set, so a warm check still asks no one. Each SET
        is verified (Valet's key, typ secevent+jwt, iss, aud the stream's,
        iat, a jti never applied before); a refused one changes nothing and
        is reported in the next poll's setErrs, an applied one acknowledged;
        one whose key cannot be fetched yet (a kid seen within 30 s of the
        last JWKS fetch, or the fetch failed) is neither, so Valet sends it
        again. Until a poll answers, whenever one fails or defers a SET
        (backing off up to 5 s) and when none answered for STREAM_IDLE
        seconds, checks fall back to introspection. Raises ValueError at once when stream is not usable.
        Go's verify.FollowSSF."""
        u = urllib.parse.urlsplit(stream.poll_url or "")
        errs = []
        if u.scheme not in ("http", "https") or not u.netloc:
            errs.append(f"SSF poll URL {str(stream.poll_url)[:128]!r} must be an absolute http(s) URL")
        if not stream.audience:
            errs.append("the SSF stream's audience is required")
        if not callable(stream.authorization):
            errs.append("the SSF stream needs an authorization source")
        if errs:
            raise ValueError("verify: " + "; ".join(errs))
        if self._threads:
            raise RuntimeError("verify: already following the revocation feed or an SSF stream; stop() first")
        self._stop.clear()
        for target, name in ((lambda: self._run_ssf(stream), "valet-ssf"), (self._send_reports, "valet-reports")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run_ssf(self, stream: SSFStream) -> None:
        backoff = 0.1
        acks: List[str] = []
        set_errs: Dict[str, Dict[str, str]] = {}
        last_prune = time.monotonic()
        while not self._stop.is_set():
            try:
                sets = self._poll_ssf(stream, acks, set_errs, not self.live)
            except Exception as e:  # any failure: fall back to introspection
                self._set_live(False)
                if self._stop.is_set():
                    break
                self.log.warning("SSF stream poll failed; checking by introspection until it is back: %s", e)
                if self._stop.wait(backoff):
                    break
                backoff = min(2 * backoff, 5.0)
                continue  # the acks and setErrs go again with the next poll
            acks, set_errs = [], {}
            deferred = False
            verified: List[Tuple[float, str, Dict[str, Any]]] = []
            for jti, raw in sets.items():
                try:
                    p = self._verify_set(raw, jti, stream.audience)
                except _KeysUnavailable as e:
                    # Neither acknowledged nor refused: Valet sends it again,
                    # and checks ask Valet until it applies.
                    deferred = True
                    self.log.warning("SET deferred (jti %s): Valet's keys cannot be read yet; checking by "
                                     "introspection: %s", _bound(jti), e)
                    continue
                except ValueError as e:
                    self.log.warning("SET refused (jti %s): %s", _bound(jti), e)
                    # The jti as Valet sent it, or Valet never takes it as acknowledged.
                    set_errs[jti] = {"err": "invalid_request", "description": _bound(str(e))}
                    continue
                verified.append((float(p["iat"]), jti, p))
            # A poll answers a map: apply in the order Valet issued them (a
            # freeze and its lift in one poll).
            verified.sort(key=lambda v: v[0])
            for iat, jti, p in verified:
                for typ, payload in p["events"].items():
                    self._apply_ssf_event(typ, p.get("sub_id"), payload)
                self._sets_seen[jti] = iat + SET_MAX_AGE
                acks.append(jti)
            if deferred:
                self._set_live(False)
                if self._stop.wait(backoff):
                    break
                backoff = min(2 * backoff, 5.0)
                continue
            backoff = 0.1
            if not self.live:
                self.log.info("SSF stream live")
            self._set_live(True)
            if time.monotonic() - last_prune > 60:
                self._deny.prune()
                now = self._now()
                self._sets_seen = {k: u for k, u in self._sets_seen.items() if u >= now}
                last_prune = time.monotonic()
        self._set_live(False)

    def _poll_ssf(self, stream: SSFStream, acks: List[str], set_errs: Mapping[str, Any],
                  immediate: bool) -> Dict[str, Any]:
        """One RFC 8936 poll: acknowledges acks, reports set_errs and answers
        the SETs given, by jti. Unless immediate, Valet holds the request
        until a SET comes or its wait (2 s) ends."""
        auth = stream.authorization()
        body: Dict[str, Any] = {"ack": acks, "maxEvents": SSF_POLL_EVENTS, "returnImmediately": immediate}
        if set_errs:
            body["setErrs"] = dict(set_errs)
        self._count("ssf")
        resp = _http.request("POST", stream.poll_url, body=_http.json_body(body), timeout=self._timeout + SSF_POLL_HOLD,
                             headers={"Content-Type": "application/json", "Accept": "application/json",
                                      "Authorization": auth})
        if resp.status != 200:
            raise RuntimeError(f"polling the SSF stream: status {resp.status}")
        answer = resp.json()
        sets = answer.get("sets") if isinstance(answer, dict) else None
        if sets is None:
            sets = {}
        if not isinstance(sets, dict):
            raise RuntimeError("decoding the SSF poll answer: sets is not an object")
        return sets

    def _verify_set(self, raw: Any, jti: str, audience: str) -> Dict[str, Any]:
        """The payload of one SET, checked as Valet's own receiver checks
        the IdP's: at most 16 KiB, signed by Valet (its JWKS), typ
        secevent+jwt, no crit, iss Valet, aud naming audience, iat neither
        30 s ahead nor older than 24 h, an exp if any not past, jti the
        poll's key and never applied before, 1 to 8 events. Raises
        ValueError with the reason; _KeysUnavailable when Valet's JWKS
        cannot be read for an unknown kid (the SET is then deferred, not
        refused)."""
        if not isinstance(raw, str) or len(raw) > MAX_SET:
            raise ValueError("not a SET of at most 16 KiB")
        try:
            header, p, signing_input, sig = _jose.split(raw)
        except (ValueError, TypeError, UnicodeError) as e:
            raise ValueError(f"malformed SET: {e.__class__.__name__}") from None
        alg = header.get("alg")
        if alg not in _jose.ALGORITHMS:
            raise ValueError("signing method is not allowed")
        if header.get("typ") != "secevent+jwt":
            raise ValueError("typ must be secevent+jwt")
        if "crit" in header:
            raise ValueError("crit header is not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError("no kid")
        with self._keys_lock:
            known = kid in self._keys
        if not known:
            # A key Valet may have just rotated in: a JWKS that cannot be
            # fetched now defers the SET rather than refusing it.
            try:
                self._refresh_keys()
            except ValueError as e:
                raise _KeysUnavailable(str(e)) from None
        with self._keys_lock:
            k = self._keys.get(kid)
        if k is None:
            raise ValueError(f"kid {kid[:64]!r} unknown")
        key_alg, key = k
        if key_alg != alg or not _jose.verify_signature(alg, key, signing_input, sig):
            raise ValueError("signature is invalid")
        now = self._now()
        if p.get("iss") != self.issuer:
            raise ValueError("issuer is not Valet's")
        aud = p.get("aud")
        if not ((isinstance(aud, str) and aud == audience) or (isinstance(aud, list) and audience in aud)):
            raise ValueError("audience is not this stream's")
        iat = p.get("iat")
        if not isinstance(iat, (int, float)) or isinstance(iat, bool):
            raise ValueError("iat is required")
        if iat > now + SET_LEEWAY:
            raise ValueError("iat is in the future")
        if iat < now - SET_MAX_AGE:
            raise ValueError("iat is more than 24 h old")
        exp = p.get("exp")
        if exp is not None and (not isinstance(exp, (int, float)) or isinstance(exp, bool) or now >= exp):
            raise ValueError("SET is expired")
        if not isinstance(p.get("jti"), str) or not p["jti"] or p["jti"] != jti:
            raise ValueError("jti does not match the poll's")
        seen = self._sets_seen.get(jti)
        if seen is not None and now <= seen:
            raise ValueError("jti replayed: this SET was applied already")
        events = p.get("events")
        if not isinstance(events, dict) or not 1 <= len(events) <= MAX_SET_EVENTS:
            raise ValueError(f"a SET carries 1 to {MAX_SET_EVENTS} events")
        return p

    def _apply_ssf_event(self, typ: str, sub: Any, payload: Any) -> None:
        """Applies one event about subject sub to the deny set, as Go's
        verify."""
        s: Mapping[str, Any] = sub if isinstance(sub, dict) else {}

        def member(name: str) -> Mapping[str, Any]:
            m = s.get(name) if s.get("format") == "complex" else None
            return m if isinstance(m, dict) else {}

        def ident(x: Mapping[str, Any]) -> str:
            v = x.get("id") if x.get("format") == "opaque" else x.get("sub") if x.get("format") == "iss_sub" else None
            return v if isinstance(v, str) else ""

        agent = ident(member("user")) if s.get("format") == "complex" else ident(s)
        if typ == SSF_CREDENTIAL_CHANGE:
            jti, task = ident(member("credential")), ident(member("session"))
            if jti or task:
                self._deny.add_revoked({"jti": jti, "task_id": task})
        elif typ == SSF_SESSION_REVOKED:
            task = ident(member("session"))
            if task:
                self._deny.add_revoked({"task_id": task})
                return
            # Every session of the agent begun at or before event_timestamp:
            # Valet's agent epoch. The subject names the issuer by URL, not by
            # the name tokens carry: it covers the agent of every issuer.
            ts = payload.get("event_timestamp") if isinstance(payload, dict) else None
            if isinstance(ts, (int, float)) and not isinstance(ts, bool) and agent:
                self._deny.add_epoch({"dimension": "agentsub", "key": agent, "before": int(ts) * 1000 + 999})
        elif typ in (SSF_ACCOUNT_DISABLED, SSF_ACCOUNT_ENABLED) and agent:
            # As above: a freeze of that agent under every issuer.
            self._deny.apply_control({"kind": "freeze_agent", "target": agent, "active": typ == SSF_ACCOUNT_DISABLED})

    # -- tool-call reports ----------------------------------------------

    def report(self, headers: Mapping[str, str], claims: Claims, tool: str, status: int, *,
               side_effect: Optional[str] = None, undo: Optional[Mapping[str, str]] = None) -> None:
        """Queues a report of a checked call of tool, which the handler
        answered with status; never blocks (a full queue drops it)."""
        raw, scheme = _token_of(headers)
        if not raw or not claims.task_id:
            return
        body: Dict[str, Any] = {"tool": tool, "outcome": "ok" if 200 <= status <= 299 else "error", "status": status}
        if side_effect:
            body["side_effect"] = side_effect
        if undo:
            body["undo"] = dict(undo)
        try:
            self._reports.put_nowait((claims.task_id, scheme, raw, _http.json_body(body)))
        except queue.Full:
            self._stat("dropped")
            self.log.warning("tool-call report dropped: queue full (task %s, tool %.128s)", claims.task_id, tool)

    def _send_reports(self) -> None:
        while not self._stop.is_set():
            try:
                task_id, scheme, raw, body = self._reports.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                resp = self._request("events", "POST", f"/v1/tasks/{urllib.parse.quote(task_id, safe='')}/events",
                                     body=body, headers={"Content-Type": "application/json",
                                                         "Authorization": f"{scheme} {raw}",
                                                         "Valet-Client-Authorization": self._basic})
                ok = resp.status == 201
            except Exception:
                ok = False
            self._stat("sent" if ok else "failed")
            if not ok:
                self.log.warning("tool-call report failed (task %s)", task_id)

    # -- WSGI --------------------------------------------------------------

    def wsgi(self, app: Callable[..., Iterable[bytes]], tool: Callable[[Dict[str, Any]], str]) -> Callable[..., Iterable[bytes]]:
        """A WSGI middleware: checks every request with check(), tool(environ)
        naming the tool it calls, puts the claims in environ["valet.claims"],
        and after the app has answered queues a report of the call (a
        handler may set environ["valet.side_effect"] and ["valet.undo"]).
        Refusals are answered as JSON {"error", "message"}."""

        def middleware(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            headers = _wsgi_headers(environ)
            md = self.resource_metadata_url()
            if md and environ.get("PATH_INFO") == urllib.parse.urlsplit(md).path:
                body = json.dumps(self.protected_resource_metadata()).encode("utf-8")
                start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                          ("Cache-Control", "public, max-age=300")])
                return [body]
            path = environ.get("REQUEST_URI") or environ.get("RAW_URI") or urllib.parse.quote(
                environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
            path = urllib.parse.urlsplit(path).path
            name = tool(environ)
            try:
                c = self.check(headers, environ.get("REQUEST_METHOD", "GET"), path, name)
            except VerifyError as e:
                return self.refusal(e, start_response, headers)
            environ["valet.claims"] = c
            seen: List[int] = []

            def sr(status: str, hdrs: List[Tuple[str, str]], exc_info: Any = None) -> Any:
                seen.append(int(status.split(" ", 1)[0]))
                return start_response(status, hdrs, exc_info) if exc_info else start_response(status, hdrs)

            out: Iterable[bytes] = app(environ, sr)
            self.report(headers, c, name, seen[0] if seen else 200, side_effect=environ.get("valet.side_effect"),
                        undo=environ.get("valet.undo"))
            return out

        return middleware

    def refusal(self, e: VerifyError, start_response: Callable[..., Any],
                headers: Optional[Mapping[str, str]] = None) -> List[bytes]:
        """Answers a refusal (WSGI): its status, the challenge (see
        challenge(); headers are the request's), and JSON {"error",
        "message"}."""
        self.log.warning("tool call refused: %s", e)
        reason = {401: "Unauthorized", 403: "Forbidden", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(e.status, "Error")
        body = json.dumps({"error": reason, "message": e.message}).encode("utf-8")
        hdrs = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        ch = self.challenge(headers or {}, e)
        if ch:
            hdrs.append(("WWW-Authenticate", ch))
        start_response(f"{e.status} {reason}", hdrs)
        return [body]

    # -- RFC 9728 metadata and challenges ---------------------------------

    def resource_metadata_url(self) -> str:
        """Where this tool server's RFC 9728 metadata is served (the
        well-known path between the host and the path of the audience), or
        "" when the audience is not an http(s) URL."""
        u = urllib.parse.urlsplit(self.audience)
        if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment:
            return ""
        return f"{u.scheme}://{u.netloc}{PROTECTED_RESOURCE_PATH}{u.path.rstrip('/')}"

    def protected_resource_metadata(self) -> Dict[str, Any]:
        """This tool server's RFC 9728 metadata: the resource (the audience
        its tokens must name), Valet as its authorization server, the header
        as the one way to send a token, and the DPoP algorithms checked."""
        md: Dict[str, Any] = {"resource": self.audience, "authorization_servers": [self.issuer],
                              "bearer_methods_supported": ["header"],
                              "dpop_signing_alg_values_supported": list(_PROOF_ALGS),
                              "dpop_bound_access_tokens_required": False}
        if self.scopes:
            md["scopes_supported"] = list(self.scopes)
        return md

    def challenge(self, headers: Mapping[str, str], e: VerifyError) -> str:
        """The WWW-Authenticate header of a refusal (RFC 6750 section 3, RFC
        9449 section 7.1, RFC 9728 section 5.1), as Go's verify writes it: a
        401 names the metadata and, when a token was sent, invalid_token on
        its scheme; a 403 is insufficient_scope with the scope needed; none
        for an action token's refusal."""
        if not e.challenge:
            return ""
        md = self.resource_metadata_url()

        def params(*kv: str) -> str:
            return ", ".join(f"{k}={_quote(v)}" for k, v in zip(kv[::2], kv[1::2]) if v)

        raw, scheme = _token_of(headers)
        dpop = scheme.lower() == "dpop"
        if e.status == 401:
            bearer_err = "invalid_token" if raw and not dpop else ""
            dpop_err = "invalid_token" if raw and dpop else ""
            bearer = ("Bearer " + params("resource_metadata", md, "error", bearer_err)).rstrip(" ")
            return bearer + ", DPoP " + params("algs", " ".join(_PROOF_ALGS), "resource_metadata", md, "error", dpop_err)
        if e.status == 403:
            return ("DPoP " if dpop else "Bearer ") + params("error", "insufficient_scope", "scope", e.scope,
                                                            "resource_metadata", md)
        return ""


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wsgi_headers(environ: Mapping[str, Any]) -> Dict[str, str]:
    h = {}
    for k, v in environ.items():
        if k.startswith("HTTP_"):
            h[k[5:].replace("_", "-").title()] = v
    return h


def _s(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _strs(v: Any) -> Tuple[str, ...]:
    return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()


def _replace(c: Claims, **kw: Any) -> Claims:
    return dataclasses.replace(c, **kw)


def _check_dpop(proof: str, method: str, url: str, now: float, access_token: str) -> Tuple[str, str, float]:
    """Go's dpop.Check for the ES256 and EdDSA keys: answers (jkt, jti, iat)
    or raises ValueError."""
    if not proof:
        raise ValueError("no proof")
    if len(proof) > MAX_PROOF:
        raise ValueError(f"proof is {len(proof)} bytes, more than {MAX_PROOF}")
    try:
        header, claims, signing_input, sig = _jose.split(proof)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"parsing: {e}") from None
    if header.get("typ") != "dpop+jwt":
        raise ValueError("typ must be dpop+jwt")
    alg, jwk = header.get("alg"), header.get("jwk")
    if alg not in _PROOF_ALGS or not isinstance(jwk, dict):
        raise ValueError("alg must be ES256 or EdDSA with a jwk header")
    pk = _jose.public_key_from_jwk(jwk)
    if pk is None:
        raise ValueError("jwk header must hold a public key")
    if pk[0] != alg or not _jose.verify_signature(alg, pk[1], signing_input, sig):
        raise ValueError("signature is invalid")
    jti, iat = claims.get("jti"), claims.get("iat")
    try:
        htu = claims.get("htu")
        got: Optional[str] = _normalize(htu if isinstance(htu, str) else "")
    except ValueError:
        got = None
    if not isinstance(jti, str) or not 1 <= len(jti) <= 256:
        raise ValueError("jti must be 1 to 256 characters")
    if claims.get("htm") != method:
        raise ValueError("htm does not match the request method")
    if got is None or got != _normalize(url):
        raise ValueError("htu does not match the request URL")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise ValueError("iat is missing")
    if abs(iat - now) > DPOP_WINDOW:
        raise ValueError("iat is more than 60 s from now")
    if access_token and claims.get("ath") != _ath(access_token):
        raise ValueError("ath does not match the access token")
    if not access_token and claims.get("ath"):
        raise ValueError("ath given with no access token")
    if pk[0] == "ES256":
        members = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]}
    else:
        members = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}
    canon = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("utf-8")
    jkt = base64.urlsafe_b64encode(hashlib.sha256(canon).digest()).rstrip(b"=").decode("ascii")
    return jkt, jti, float(iat)
