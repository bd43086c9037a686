"""The agent client: declare a task, renew it before its deadline, delegate
part of it to a sub-agent (RFC 8693 token exchange), ask for an action
token of a sensitive tool and wait for its approval, report tool calls, and
complete the task, all optionally bound to a DPoP key (RFC 9449). It never
logs, and no error it raises holds a token."""

from __future__ import annotations

import threading
import time
import urllib.parse
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from . import _http
from .dpop import DPoPKey
from .errors import ValetError

__all__ = ["Client", "Task", "task", "IdentitySource", "ACTION_HEADER"]

# ACTION_HEADER carries the one-shot action token of a sensitive tool call.
ACTION_HEADER = "Valet-Action"

IdentitySource = Union[str, Callable[[], str]]

_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def _identity(src: IdentitySource) -> str:
    tok = src() if callable(src) else src
    if not isinstance(tok, str) or not tok:
        raise ValueError("identity: an identity token (or a function answering one) is required")
    return tok


def _parse_time(s: Any) -> Optional[datetime]:
    if not isinstance(s, str) or not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def _seconds(ttl: Optional[float]) -> Optional[int]:
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError("ttl: must be more than 0 seconds")
    return int(-(-ttl // 1))  # rounded up


class Client:
    """Talks to one Valet broker. Safe for concurrent use."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError(f"base_url: {base_url[:128]!r} must be an absolute http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    # -- the one sender ---------------------------------------------------

    def _send(self, method: str, path: str, *, bearer: Optional[str] = None, task_token: Optional[str] = None,
              key: Optional[DPoPKey] = None, proof_token: Optional[str] = None, json_body: Any = None,
              form: Optional[Dict[str, str]] = None, headers: Optional[Mapping[str, str]] = None) -> _http.Response:
        """Sends one request to Valet. bearer is an identity token
        (Authorization: Bearer); task_token a task token, sent as DPoP when
        key is set; key adds a DPoP proof (bound to task_token, or to
        proof_token for a token exchange). A use_dpop_nonce refusal with a
        new nonce is retried once."""
        url = self.base_url + path
        body: Optional[bytes] = None
        h: Dict[str, str] = {"Accept": "application/json"}
        if json_body is not None:
            body, h["Content-Type"] = _http.json_body(json_body), "application/json"
        elif form is not None:
            body, h["Content-Type"] = _http.form_body(form), "application/x-www-form-urlencoded"
        elif method == "POST":
            body = b""
        if bearer:
            h["Authorization"] = "Bearer " + bearer
        if task_token:
            h["Authorization"] = ("DPoP " if key else "Bearer ") + task_token
        h.update(headers or {})
        for attempt in (0, 1):
            if key is not None:
                h["DPoP"] = key.proof(method, url, task_token or proof_token)
            resp = _http.request(method, url, headers=h, body=body, timeout=self.timeout)
            if key is None:
                return resp
            fresh = key.remember_nonce(url, resp.headers.get("DPoP-Nonce"))
            if attempt == 0 and fresh and resp.status in (400, 401) and _wants_nonce(resp):
                continue
            return resp
        return resp  # pragma: no cover

    # -- tasks ------------------------------------------------------------

    def declare(self, identity_token: str, *, template: str, intent: str, tools: Sequence[str],
                ttl: Optional[float] = None, context: Optional[Mapping[str, Any]] = None,
                key: Optional[DPoPKey] = None, subject_token: Optional[str] = None) -> Dict[str, Any]:
        """Declares a task and answers Valet's answer: {"task", "credentials"}.
        With key, the task's tokens are bound to it (DPoP)."""
        d: Dict[str, Any] = {"template": template, "intent": intent, "tools": list(tools)}
        if (s := _seconds(ttl)) is not None:
            d["ttl_seconds"] = s
        if context is not None:
            d["context"] = dict(context)
        if subject_token:
            d["subject_token"] = subject_token
        resp = self._send("POST", "/v1/tasks", bearer=identity_token, key=key, json_body=d)
        if resp.status != 201:
            raise resp.error()
        return _grant(resp)

    def renew(self, identity_token: str, task_id: str, ttl: Optional[float] = None) -> Dict[str, Any]:
        """Asks for a later deadline with a fresh identity token of the agent
        that declared the task; answers {"task", "credentials"} with fresh
        credentials that live until the new deadline."""
        body: Dict[str, Any] = {}
        if (s := _seconds(ttl)) is not None:
            body["ttl_seconds"] = s
        resp = self._send("POST", f"/v1/tasks/{_seg(task_id)}/renew", bearer=identity_token, json_body=body)
        if resp.status != 200:
            raise resp.error()
        return _grant(resp)

    def get_task(self, token: str, task_id: str, key: Optional[DPoPKey] = None) -> Dict[str, Any]:
        resp = self._send("GET", f"/v1/tasks/{_seg(task_id)}", task_token=token, key=key)
        if resp.status != 200:
            raise resp.error()
        return dict(resp.json()["task"])

    def complete(self, token: str, task_id: str, key: Optional[DPoPKey] = None) -> Dict[str, Any]:
        """Ends the task with one of its task tokens; every credential of it
        is revoked. Completing a completed task again answers it unchanged."""
        resp = self._send("POST", f"/v1/tasks/{_seg(task_id)}/complete", task_token=token, key=key)
        if resp.status != 200:
            raise resp.error()
        return dict(resp.json()["task"])

    def delegate(self, parent_token: str, actor_identity_token: str, tools: Sequence[str], *,
                 ttl: Optional[float] = None, key: Optional[DPoPKey] = None) -> Dict[str, Any]:
        """Exchanges a parent task token for a sub-agent's (RFC 8693) and
        answers the token response: access_token, token_type, expires_in and
        the child task. A DPoP-bound parent needs its key; the child is bound
        to the same key."""
        form = {"grant_type": _TOKEN_EXCHANGE, "subject_token": parent_token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "actor_token": actor_identity_token, "actor_token_type": "urn:ietf:params:oauth:token-type:id_token",
                "tools": " ".join(tools)}
        if (s := _seconds(ttl)) is not None:
            form["ttl_seconds"] = str(s)
        resp = self._send("POST", "/v1/token", key=key, proof_token=parent_token, form=form)
        if resp.status != 200:
            raise resp.error()
        x = resp.json()
        if not isinstance(x, dict) or not x.get("access_token") or not isinstance(x.get("task"), dict):
            raise ValetError(resp.status, "invalid_response", "the answer is not a token exchange response")
        return x

    # -- actions, approvals, events ---------------------------------------

    def request_action(self, token: str, task_id: str, tool: str, args: Optional[Mapping[str, Any]] = None, *,
                       context: Optional[Mapping[str, Any]] = None, key: Optional[DPoPKey] = None) -> Dict[str, Any]:
        """Asks for a one-shot action token for one call of a sensitive tool
        with exactly args. Answers the ActionGrant ({"status": "granted",
        "action_token", ...}) or, when a human must approve, the
        ActionPending ({"status": "pending", "approval_id", ...})."""
        body: Dict[str, Any] = {"tool": tool, "args": dict(args or {})}
        if context is not None:
            body["context"] = dict(context)
        resp = self._send("POST", f"/v1/tasks/{_seg(task_id)}/actions", task_token=token, key=key, json_body=body)
        if resp.status not in (201, 202):
            raise resp.error()
        return dict(resp.json())

    def action_status(self, token: str, task_id: str, approval_id: str,
                      key: Optional[DPoPKey] = None) -> Dict[str, Any]:
        """Polls an approval: the ActionGrant once approved (handed out once),
        the ActionPending while pending; a denial or expiry is a ValetError."""
        resp = self._send("GET", f"/v1/tasks/{_seg(task_id)}/actions/{_seg(approval_id)}", task_token=token, key=key)
        if resp.status not in (201, 202):
            raise resp.error()
        return dict(resp.json())

    def report_event(self, token: str, task_id: str, tool: str, *, outcome: str = "ok", status: Optional[int] = None,
                     side_effect: Optional[str] = None, undo: Optional[Mapping[str, str]] = None,
                     key: Optional[DPoPKey] = None) -> Dict[str, Any]:
        """Reports one tool call of the task (what the agent did); answers
        the stored event."""
        body: Dict[str, Any] = {"tool": tool, "outcome": outcome}
        if status is not None:
            body["status"] = status
        if side_effect:
            body["side_effect"] = side_effect
        if undo:
            body["undo"] = dict(undo)
        resp = self._send("POST", f"/v1/tasks/{_seg(task_id)}/events", task_token=token, key=key, json_body=body)
        if resp.status != 201:
            raise resp.error()
        return dict(resp.json()["event"])

    def events(self, token: str, task_id: str, key: Optional[DPoPKey] = None) -> List[Dict[str, Any]]:
        resp = self._send("GET", f"/v1/tasks/{_seg(task_id)}/events", task_token=token, key=key)
        if resp.status != 200:
            raise resp.error()
        return list(resp.json().get("events") or [])


def _wants_nonce(resp: _http.Response) -> bool:
    if 'error="use_dpop_nonce"' in (resp.headers.get("WWW-Authenticate") or ""):
        return True
    try:
        return bool(resp.json().get("error") == "use_dpop_nonce")
    except (ValetError, AttributeError):
        return False


def _seg(s: str) -> str:
    if not isinstance(s, str) or not s:
        raise ValueError("id: must be a non-empty string")
    return urllib.parse.quote(s, safe="")


def _grant(resp: _http.Response) -> Dict[str, Any]:
    g = resp.json()
    if not isinstance(g, dict) or not isinstance(g.get("task"), dict) or not isinstance(g.get("credentials"), list):
        raise ValetError(resp.status, "invalid_response", "the answer is not a task grant")
    return g


def _task_token(credentials: List[Dict[str, Any]]) -> str:
    for c in credentials:
        if isinstance(c, dict) and c.get("kind") == "jwt" and c.get("access_token"):
            return str(c["access_token"])
    raise ValetError(0, "invalid_response", "the grant holds no task token")


class Task:
    """A declared task: its id, deadline, token and credentials, with what an
    agent does during it. Used as a context manager it completes the task on
    exit, also when the block raises; while it runs, a background thread
    renews it before its deadline (root tasks with an identity source that
    can give fresh tokens). Credentials are secrets: keep them out of logs."""

    def __init__(self, client: Client, grant: Dict[str, Any], *, key: Optional[DPoPKey] = None,
                 identity: Optional[IdentitySource] = None, token: Optional[str] = None,
                 auto_renew: bool = False, renew_before: Optional[float] = None,
                 renew_ttl: Optional[float] = None) -> None:
        self.client = client
        self.key = key
        self._identity = identity
        self._lock = threading.Lock()
        self._info: Dict[str, Any] = grant["task"]
        self._credentials: List[Dict[str, Any]] = list(grant.get("credentials") or [])
        self._token = token or _task_token(self._credentials)
        self._renew_before = renew_before
        self._renew_ttl = renew_ttl
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None
        self.renewals = 0
        self.renew_error: Optional[BaseException] = None
        self.completed = False
        if auto_renew and identity is not None:
            self._renewer = threading.Thread(target=self._renew_loop, name=f"valet-renew-{self.id}", daemon=True)
            self._renewer.start()

    def __repr__(self) -> str:  # never the token
        return f"Task(id={self.id!r}, template={self.template!r}, deadline={self._info.get('deadline')!r})"

    # -- what the task is --------------------------------------------------

    @property
    def id(self) -> str:
        return str(self._info["id"])

    @property
    def template(self) -> str:
        return str(self._info.get("template", ""))

    @property
    def info(self) -> Dict[str, Any]:
        """The task as Valet last answered it."""
        with self._lock:
            return dict(self._info)

    @property
    def deadline(self) -> datetime:
        with self._lock:
            d = _parse_time(self._info.get("deadline"))
        if d is None:
            raise ValetError(0, "invalid_response", "the task has no deadline")
        return d

    @property
    def token(self) -> str:
        """The task token (a secret)."""
        with self._lock:
            return self._token

    @property
    def credentials(self) -> List[Dict[str, Any]]:
        """Every credential of the task's last grant (secrets)."""
        with self._lock:
            return list(self._credentials)

    def auth_headers(self, method: str, url: str) -> Dict[str, str]:
        """The headers that carry the task token to a tool server for one
        request of method to url: Authorization (Bearer, or DPoP with a
        fresh proof for a bound task)."""
        tok = self.token
        if self.key is None:
            return {"Authorization": "Bearer " + tok}
        return {"Authorization": "DPoP " + tok, "DPoP": self.key.proof(method, url, tok)}

    # -- what an agent does ------------------------------------------------

    def renew(self, ttl: Optional[float] = None) -> None:
        """Renews the task now with a fresh identity token."""
        if self._identity is None:
            raise ValueError("renew: this task has no identity source (a delegated task is renewed through its root)")
        g = self.client.renew(_identity(self._identity), self.id, ttl if ttl is not None else self._renew_ttl)
        with self._lock:
            self._info, self._credentials = g["task"], list(g["credentials"])
            self._token = _task_token(self._credentials)
            self.renewals += 1

    def delegate(self, actor_identity_token: str, tools: Sequence[str], *, ttl: Optional[float] = None) -> "Task":
        """A sub-agent's task of some of this task's tools (token exchange),
        bound to the same DPoP key; a context manager too."""
        x = self.client.delegate(self.token, actor_identity_token, tools, ttl=ttl, key=self.key)
        return Task(self.client, {"task": x["task"], "credentials": []}, key=self.key, token=x["access_token"])

    def action(self, tool: str, args: Optional[Mapping[str, Any]] = None, *,
               context: Optional[Mapping[str, Any]] = None, wait: float = 300.0, poll: float = 1.0) -> str:
        """An action token for one call of a sensitive tool with exactly
        args, waiting up to wait seconds for a human's approval when one is
        needed. Send it in the Valet-Action header (ACTION_HEADER)."""
        a = self.client.request_action(self.token, self.id, tool, args, context=context, key=self.key)
        end = time.monotonic() + wait
        while a.get("status") == "pending":
            approval = str(a.get("approval_id", ""))
            if time.monotonic() >= end:
                raise ValetError(0, "approval_timeout", f"approval {approval[:64]} still pending after {wait:g} s")
            time.sleep(min(poll, max(0.0, end - time.monotonic())))
            a = self.client.action_status(self.token, self.id, approval, key=self.key)
        tok = a.get("action_token")
        if not isinstance(tok, str) or not tok:
            raise ValetError(0, "invalid_response", "the answer holds no action token")
        return tok

    def report(self, tool: str, *, outcome: str = "ok", status: Optional[int] = None,
               side_effect: Optional[str] = None, undo: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
        """Reports one tool call the agent made during the task."""
        return self.client.report_event(self.token, self.id, tool, outcome=outcome, status=status,
                                        side_effect=side_effect, undo=undo, key=self.key)

    def complete(self) -> Dict[str, Any]:
        """Ends the task; every credential of it is revoked."""
        self._stop.set()
        t = self.client.complete(self.token, self.id, key=self.key)
        with self._lock:
            self._info = t
        self.completed = True
        return t

    def close(self) -> None:
        """Stops the renewer without completing the task."""
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=5)

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        self.close()
        if self.completed:
            return
        try:
            self.complete()
        except Exception as e:
            if exc is None:
                raise
            # Keep the block's own exception; say the completion failed too.
            if hasattr(exc, "add_note"):
                exc.add_note(f"and completing task {self.id} failed: {e}")

    # -- renewal -----------------------------------------------------------

    def _renew_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                deadline = _parse_time(self._info.get("deadline"))
                created = _parse_time(self._info.get("created_at"))
            if deadline is None:
                return
            now = datetime.now(timezone.utc)
            life = (deadline - (created or now)).total_seconds()
            before = self._renew_before if self._renew_before is not None else max(1.0, min(60.0, life / 3))
            wait = (deadline - now).total_seconds() - before
            if self._stop.wait(max(0.0, wait)):
                return
            try:
                self.renew()
            except ValetError as e:
                # 409 (max lifetime reached, task ended) and 403 (policy)
                # will not change: stop. Anything else: try again soon.
                if e.status in (401, 403, 404, 409):
                    self.renew_error = e
                    return
                self.renew_error = e
                if self._stop.wait(min(5.0, max(0.5, before / 4))):
                    return
            except Exception as e:  # an identity source that failed
                self.renew_error = e
                if self._stop.wait(5.0):
                    return


def task(base_url: Union[str, Client], identity: IdentitySource, *, template: str, intent: str, tools: Sequence[str],
         ttl: Optional[float] = None, context: Optional[Mapping[str, Any]] = None, dpop: bool = True,
         key: Optional[DPoPKey] = None, auto_renew: bool = True, renew_before: Optional[float] = None,
         timeout: float = 30.0) -> Task:
    """Declares a task and answers it, ready for `with`:

        with valet.task(url, get_identity_token, template="support-triage",
                        intent="triage ticket 4521", tools=["tickets.read"]) as t:
            call_tool(headers=t.auth_headers("POST", tool_url))

    identity is the agent's identity token, or a function answering a fresh
    one (then the task is renewed before its deadline). With dpop (the
    default) the task's tokens are bound to a new EC P-256 key (or key)."""
    client = base_url if isinstance(base_url, Client) else Client(base_url, timeout=timeout)
    if dpop and key is None:
        key = DPoPKey.generate()
    g = client.declare(_identity(identity), template=template, intent=intent, tools=tools, ttl=ttl,
                       context=context, key=key if dpop else None)
    return Task(client, g, key=key if dpop else None, identity=identity,
                auto_renew=auto_renew and callable(identity), renew_before=renew_before, renew_ttl=ttl)
