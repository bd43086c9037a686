"""Typed errors of the Valet SDK. No error holds a token."""

from __future__ import annotations

import json

__all__ = ["ValetError", "Unreachable", "VerifyError"]

# How much of an unexpected answer an error quotes.
_MAX_QUOTED = 256


class ValetError(Exception):
    """A refusal by Valet: the HTTP status and the body's code, message, rule
    (the policy rule or control that decided), field (the part of the request
    that was wrong) and request_id (the key to Valet's log and audit lines)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str = "",
        *,
        rule: str = "",
        field: str = "",
        request_id: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.rule = rule
        self.field = field
        self.request_id = request_id
        super().__init__(str(self))

    def __str__(self) -> str:
        s = f"valet: {self.status} {self.code}: {self.message}"
        if self.rule:
            s += f" (rule {self.rule})"
        if self.field:
            s += f" (field {self.field})"
        if self.request_id:
            s += f" [request {self.request_id}]"
        return s

    @classmethod
    def from_response(cls, status: int, body: bytes, request_id: str = "") -> "ValetError":
        """Builds the error of a non-success answer from Valet's Error body or
        an OAuth error body; any other body keeps its status and a bounded
        quote."""
        try:
            e = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            e = None
        if not isinstance(e, dict) or not isinstance(e.get("error"), str) or not e["error"]:
            quoted = body[:_MAX_QUOTED].decode("utf-8", "replace")
            if len(body) > _MAX_QUOTED:
                quoted += "..."
            return cls(status, f"http_{status}", repr(quoted), request_id=request_id)

        def s(k: str) -> str:
            v = e.get(k)
            return v[:_MAX_QUOTED] if isinstance(v, str) else ""

        return cls(
            status,
            s("error"),
            s("message") or s("error_description"),
            rule=s("rule"),
            field=s("field"),
            request_id=s("request_id") or request_id,
        )


class Unreachable(ValetError):
    """Valet could not be reached (connection refused, timeout): status 0,
    code "unreachable"."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


class VerifyError(Exception):
    """A tool server's refusal of a call: status 401 (token), 403 (tool not
    granted, action token) or 503 (Valet could not be asked and nothing is
    known). message is safe to send to the caller; reason is for the log
    (never a token); scope, on a 403, is the scope that was needed."""

    def __init__(self, status: int, message: str, reason: str = "", scope: str = "") -> None:
        self.status = status
        self.message = message
        self.reason = reason
        self.scope = scope
        self.challenge = True
        super().__init__(f"{status} {message}" + (f": {reason}" if reason else ""))
