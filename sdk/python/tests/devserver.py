"""Starts a real `valet dev` for the tests: the binary in VALET_BIN (the Go
test builds it), else one built here with `go build`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TEMPLATES = os.path.join(HERE, "templates.yaml")
CLIENT_ID, CLIENT_SECRET = "tool-server", "dev-secret-not-for-production"
APPROVER_ID, APPROVER_SECRET = "approver", "dev-approver-not-for-production"
AUDIENCE = "https://notes.example.com"

_built: Optional[str] = None


def valet_binary() -> str:
    global _built
    if os.environ.get("VALET_BIN"):
        return os.environ["VALET_BIN"]
    if _built:
        return _built
    if not shutil.which("go"):
        raise unittest_skip("set VALET_BIN to a valet binary, or put go on PATH to build one")
    out = os.path.join(tempfile.mkdtemp(prefix="valet-py-"), "valet")
    subprocess.run(["go", "build", "-o", out, "./cmd/valet"], cwd=REPO, check=True)
    _built = out
    return out


def unittest_skip(msg: str) -> Exception:
    import unittest
    return unittest.SkipTest(msg)


class DevServer:
    """One `valet dev` on a free loopback port, with the tests' templates."""

    def __init__(self, *extra: str) -> None:
        self.audit_dir = tempfile.mkdtemp(prefix="valet-py-audit-")
        self.proc = subprocess.Popen(
            [valet_binary(), "dev", "--addr", "127.0.0.1:0", "--templates", TEMPLATES,
             "--audit", os.path.join(self.audit_dir, "audit.jsonl"), "--log-level", "warn", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log: List[str] = []
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", first)
        if not m:
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"valet dev did not start: {first!r} {err[-2000:]}")
        self.url = m.group(1)
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._drain, args=(stream,), daemon=True).start()

    def _drain(self, stream) -> None:
        for line in stream:
            self.log.append(line)

    def identity(self, agent: str = "agent-py") -> str:
        req = urllib.request.Request(f"{self.url}/dev/token?agent={agent}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)["identity_token"]

    def post(self, path: str, *, basic: Optional[tuple] = None, form: Optional[dict] = None,
             body: Optional[dict] = None) -> tuple:
        import base64
        import urllib.error
        import urllib.parse
        headers = {}
        data = b""
        if basic:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, method="POST", data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            with e:
                raw = e.read()
            return e.code, (json.loads(raw) if raw else None)

    def introspect(self, token: str) -> dict:
        status, body = self.post("/v1/introspect", basic=(CLIENT_ID, CLIENT_SECRET), form={"token": token})
        assert status == 200, (status, body)
        return body

    def revoke(self, token: str) -> None:
        status, body = self.post("/v1/revoke", basic=(CLIENT_ID, CLIENT_SECRET), form={"token": token})
        assert status == 200, (status, body)

    def approve(self, approval_id: str) -> None:
        status, body = self.post(f"/v1/approvals/{approval_id}/approve", basic=(APPROVER_ID, APPROVER_SECRET),
                                 body={"reason": "python sdk test"})
        assert status == 200, (status, body)

    def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        shutil.rmtree(self.audit_dir, ignore_errors=True)


def add_sdk_to_path() -> None:
    sdk = os.path.abspath(os.path.join(HERE, ".."))
    if sdk not in sys.path:
        sys.path.insert(0, sdk)


class RedisServer:
    """A private redis-server on a free loopback port, nothing saved."""

    def __init__(self) -> None:
        import socket
        import time
        exe = shutil.which("redis-server")
        if not exe:
            raise unittest_skip("the incident-control test needs redis-server (Debian package redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="valet-py-redis-")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.025)
        else:
            self.stop()
            raise RuntimeError("redis-server did not start")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
