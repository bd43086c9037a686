"""A Valet-protected tool server in plain Python (WSGI, standard library):
POST /tools/<tool> with the tool's JSON arguments. notes.read and
notes.write are checked by the verifier's middleware; notes.delete is a
sensitive tool, so each call also needs a one-shot action token.

    VALET_URL=http://127.0.0.1:8080 python examples/notes_server.py
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any, Callable, Dict, Iterable, List
from wsgiref.simple_server import WSGIRequestHandler, make_server

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import valet  # noqa: E402

AUDIENCE = "https://notes.example.com"


class Notes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.notes: Dict[str, str] = {"n-1": "ship the python sdk", "n-2": "renew the task before its deadline"}

    def app(self, verifier: valet.Verifier) -> Callable:
        def tool_of(environ: Dict[str, Any]) -> str:
            return environ.get("PATH_INFO", "").removeprefix("/tools/")

        checked = verifier.wsgi(self._tools, tool_of)

        def app(environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "").startswith("/.well-known/"):
                return checked(environ, start_response)  # the RFC 9728 metadata, served by the middleware
            if environ.get("REQUEST_METHOD") != "POST" or not environ.get("PATH_INFO", "").startswith("/tools/"):
                return _json(start_response, 404, {"error": "not found"})
            if tool_of(environ) == "notes.delete":
                return self._delete(verifier, environ, start_response)
            return checked(environ, start_response)

        return app

    def _tools(self, environ: Dict[str, Any], start_response: Callable) -> List[bytes]:
        tool, args = environ["PATH_INFO"].removeprefix("/tools/"), _args(environ)
        claims: valet.Claims = environ["valet.claims"]
        with self.lock:
            if tool == "notes.read":
                return _json(start_response, 200, {"notes": dict(self.notes), "read_by": claims.actor})
            if tool == "notes.write":
                nid = f"n-{len(self.notes) + 1}"
                self.notes[nid] = str(args.get("text", ""))[:1000]
                environ["valet.side_effect"] = f"added note {nid}"
                return _json(start_response, 201, {"id": nid})
        return _json(start_response, 404, {"error": "no such tool"})

    def _delete(self, verifier: valet.Verifier, environ: Dict[str, Any], start_response: Callable) -> List[bytes]:
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        args = _args(environ)
        try:
            c = verifier.check_action(headers, "POST", environ["PATH_INFO"], "notes.delete", args)
        except valet.VerifyError as e:
            return verifier.refusal(e, start_response, headers)
        with self.lock:
            gone = self.notes.pop(str(args.get("note")), None)
        verifier.report(headers, c, "notes.delete", 200 if gone else 404, side_effect=f"deleted note {args.get('note')}")
        return _json(start_response, 200 if gone else 404, {"deleted": gone is not None})


def _args(environ: Dict[str, Any]) -> Dict[str, Any]:
    n = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(min(n, 1 << 20)) if n else b""
    try:
        v = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _json(start_response: Callable, status: int, body: Any) -> List[bytes]:
    data = json.dumps(body).encode("utf-8")
    start_response(f"{status} {'OK' if status < 300 else 'Error'}", [("Content-Type", "application/json"),
                                                                     ("Content-Length", str(len(data)))])
    return [data]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def serve(valet_url: str, host: str = "127.0.0.1", port: int = 0):
    """Starts the server in a thread; answers (server, its URL, verifier)."""
    from wsgiref.simple_server import WSGIServer
    from socketserver import ThreadingMixIn

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    srv = make_server(host, port, lambda e, s: [b""], server_class=Server, handler_class=_Quiet)
    url = f"http://{host}:{srv.server_port}"
    v = valet.Verifier(valet_url, AUDIENCE, os.environ.get("VALET_CLIENT_ID", "tool-server"),
                       os.environ.get("VALET_CLIENT_SECRET", "dev-secret-not-for-production"), public_url=url).start()
    srv.set_app(Notes().app(v))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, url, v


if __name__ == "__main__":
    srv, url, v = serve(os.environ.get("VALET_URL", "http://127.0.0.1:8080"), port=int(os.environ.get("PORT", "9091")))
    print(f"notes tool server on {url}", flush=True)
    threading.Event().wait()
