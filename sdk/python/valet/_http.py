"""One small HTTP layer over urllib: JSON and form bodies, bounded answers,
no redirects (a redirect could carry a token elsewhere), and connection
failures as Unreachable."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from typing import Any, Dict, Mapping, Optional

from .errors import Unreachable, ValetError

MAX_BODY = 1 << 20


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Message,
                         newurl: str) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Message, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValetError(self.status, "invalid_response", f"the answer is not JSON ({e.__class__.__name__})",
                             request_id=self.headers.get("X-Request-Id", "") or "") from None

    def error(self) -> ValetError:
        return ValetError.from_response(self.status, self.body, self.headers.get("X-Request-Id", "") or "")


def request(method: str, url: str, *, headers: Optional[Mapping[str, str]] = None, body: Optional[bytes] = None,
            timeout: float = 30.0) -> Response:
    """Sends one request and answers whatever status came back; raises
    Unreachable when no answer came."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read(MAX_BODY))
    except urllib.error.HTTPError as e:
        try:
            data = e.read(MAX_BODY)
        except (OSError, ValueError):
            data = b""
        finally:
            e.close()
        return Response(e.code, e.headers, data)
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        host = urllib.parse.urlsplit(url).netloc
        raise Unreachable(f"{method} {host}: {reason.__class__.__name__}: {reason}") from None


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def form_body(fields: Dict[str, str]) -> bytes:
    return urllib.parse.urlencode(fields).encode("ascii")
