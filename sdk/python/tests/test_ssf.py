"""The verifier following Valet's Shared Signals stream (RFC 8936 poll)
instead of the revocation feed, against `valet dev --redis` (its SSF
transmitter is on there) on a private Redis: 0 calls to Valet per warm
check; an ended task and a frozen agent refused from the SETs alone; a
malformed, unsigned, wrong-audience, tampered or replayed SET changes
nothing; a failing poll falls back to introspection."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import unittest
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

from tests.devserver import AUDIENCE, CLIENT_ID, CLIENT_SECRET, DevServer, RedisServer, add_sdk_to_path

add_sdk_to_path()
import valet  # noqa: E402

PUBLIC, PATH = "http://127.0.0.1:9999", "/tools/notes.read"
CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
EVENTS = [CAEP + "session-revoked", CAEP + "credential-change", RISC + "account-disabled", RISC + "account-enabled"]


def b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()


def payload_of(set_: str) -> Dict[str, Any]:
    p = set_.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))


def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.005)


class SSFTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis = RedisServer()
        try:
            cls.dev = DevServer("--redis", cls.redis.url)
        except Exception:
            cls.redis.stop()
            raise
        cls.admin_auth = "Bearer " + cls.admin_token()

    @classmethod
    def tearDownClass(cls):
        cls.dev.stop()
        cls.redis.stop()

    @classmethod
    def admin_token(cls) -> str:
        req = urllib.request.Request(f"{cls.dev.url}/dev/token?admin=rita", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)["identity_token"]

    def call(self, method: str, url: str, body: Any = None) -> tuple:
        req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": self.admin_auth, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)

    def stream(self, aud: str) -> str:
        status, body = self.call("POST", self.dev.url + "/ssf/streams",
                                 {"aud": aud, "events_requested": EVENTS, "delivery": {"method": "urn:ietf:rfc:8936"}})
        self.assertEqual(status, 201, body)
        return body["delivery"]["endpoint_url"]

    def take(self, poll_url: str, want: Callable[[Dict[str, Any]], bool]) -> str:
        """Polls poll_url as the test (acknowledging everything) until a SET
        that want accepts arrives."""
        acks: List[str] = []
        end = time.monotonic() + 5
        while True:
            _, body = self.call("POST", poll_url, {"ack": acks, "returnImmediately": True})
            acks = list(body["sets"])
            for raw in body["sets"].values():
                if want(payload_of(raw)):
                    return raw
            self.assertLess(time.monotonic(), end, "the SET did not come within 5 s")
            time.sleep(0.02)

    def freeze(self, agent: str) -> None:
        self.assertEqual(self.call("POST", self.dev.url + "/v1/admin/controls",
                                   {"kind": "freeze_agent", "target": agent, "reason": "python sdk test"})[0], 201)

    def lift(self, agent: str) -> None:
        self.assertEqual(self.call("DELETE", self.dev.url + f"/v1/admin/controls?kind=freeze_agent&target={agent}")[0], 200)

    def task(self, agent: str) -> valet.Task:
        return valet.task(self.dev.url, lambda: self.dev.identity(agent), template="py-notes",
                          intent="read the meeting notes", tools=["notes.read"])

    def verifier(self) -> valet.Verifier:
        return valet.Verifier(self.dev.url, AUDIENCE, CLIENT_ID, CLIENT_SECRET, public_url=PUBLIC)

    @staticmethod
    def checking(calls: Dict[str, int]) -> int:
        """The calls a check can make (polls and reports apart)."""
        return sum(n for kind, n in calls.items() if kind not in ("ssf", "events"))

    def test_warm_checks_ask_no_one_and_sets_end_tasks_and_freeze_agents(self):
        poll_url = self.stream("urn:sdk-py")
        v = self.verifier()
        with self.assertRaises(ValueError):
            v.follow_ssf(valet.SSFStream(poll_url="ftp://x", audience="a", authorization=lambda: ""))
        with self.task("agent-ssf-1") as t, self.task("agent-ssf-2") as other:
            def check(task: valet.Task) -> valet.Claims:
                return v.check(task.auth_headers("POST", PUBLIC + PATH), "POST", PATH, "notes.read")

            check(t)  # not following yet: introspection
            self.assertEqual(v.calls.get("introspect"), 1, v.calls)
            v.follow_ssf(valet.SSFStream(poll_url=poll_url, audience="urn:sdk-py", authorization=lambda: self.admin_auth))
            self.addCleanup(v.stop)
            self.assertTrue(v.wait_live(10), "the SSF stream never went live")
            before = self.checking(v.calls)
            n = 500
            for _ in range(n):
                check(t)
            self.assertEqual(self.checking(v.calls) - before, 0, f"warm checks called Valet: {v.calls}")

            def refused_after(task: valet.Task, start: float, reason: str) -> float:
                while True:
                    try:
                        check(task)
                    except valet.VerifyError as e:
                        self.assertEqual(e.status, 401)
                        self.assertIn(reason, e.reason)
                        return time.perf_counter() - start
                    self.assertLess(time.perf_counter() - start, 5.0, "still accepted 5 s later")
                    time.sleep(0.005)

            start = time.perf_counter()
            t.complete()
            ended = refused_after(t, start, "revoked (feed)")
            start = time.perf_counter()
            self.freeze("agent-ssf-2")
            frozen = refused_after(other, start, "incident control (feed)")
            self.assertEqual(self.checking(v.calls) - before, 0, f"the verifier asked Valet: {v.calls}")
            print(f"\nverify (SSF): {n} warm checks, 0 calls to Valet; ended task refused {ended * 1000:.0f} ms "
                  f"after the end, frozen agent {frozen * 1000:.0f} ms after the freeze ({v.calls.get('ssf')} polls)")
            self.lift("agent-ssf-2")
            until(lambda: _accepted(lambda: check(other)), 5, "account-enabled lifts the freeze")

    def test_bad_sets_change_nothing_deferred_ones_fail_closed_and_a_failing_poll_falls_back(self):
        own, elsewhere = self.stream("urn:sdk-py-bad"), self.stream("urn:py-elsewhere")
        with self.task("agent-ssf-3") as t:
            def about(typ: str) -> Callable[[Dict[str, Any]], bool]:
                return lambda p: typ in p["events"] and p["sub_id"].get("id") == "agent-ssf-3"

            self.freeze("agent-ssf-3")
            disabled = self.take(own, about(RISC + "account-disabled"))
            foreign = self.take(elsewhere, about(RISC + "account-disabled"))
            self.lift("agent-ssf-3")
            enabled = self.take(own, about(RISC + "account-enabled"))

            fake = FakePoll()
            self.addCleanup(fake.close)
            v = self.verifier()
            v.follow_ssf(valet.SSFStream(poll_url=fake.url, audience="urn:sdk-py-bad", authorization=lambda: "Bearer test"))
            self.addCleanup(v.stop)
            self.assertTrue(v.wait_live(10), "the fake stream never went live")

            def check() -> valet.Claims:
                return v.check(t.auth_headers("POST", PUBLIC + PATH), "POST", PATH, "notes.read")

            check()  # fetches Valet's JWKS
            introspections = v.calls.get("introspect", 0)
            h, p, s = disabled.split(".")
            jti = payload_of(disabled)["jti"]
            header = json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))

            # A SET under a kid the verifier does not know, within 30 s of its
            # JWKS fetch (a key Valet may have just rotated in): neither
            # acknowledged nor refused, and checks ask Valet while Valet keeps
            # sending it.
            fake.sticky = {jti: f"{b64({**header, 'kid': 'rotated-in'})}.{p}.{s}"}
            until(lambda: not v.live, 5, "a deferred SET takes the verifier off the stream")
            check()
            self.assertEqual(v.calls.get("introspect", 0), introspections + 1, "a check while a SET is deferred must introspect")
            introspections += 1
            since = len(fake.polls)
            until(lambda: len(fake.polls) > since + 1, 5, "the verifier polls again")
            self.assertTrue(all(not q.get("ack") and not q.get("setErrs") for q in fake.polls[since:]),
                            "a deferred SET was acknowledged or refused")
            fake.sticky = None
            self.assertTrue(v.wait_live(10), "the stream is not live again once the SET is gone")
            forged = {
                "malformed": {"m-1": "not.a.jws!", "m-2": "e30.e30", "m-3": "x" * 20000, "m-4": 7},
                "unsigned (alg none)": {jti: f"{b64({**header, 'alg': 'none'})}.{p}."},
                "signature stripped": {jti: f"{h}.{p}."},
                "payload tampered": {jti: f"{h}.{b64({**payload_of(disabled), 'txn': 'tampered'})}.{s}"},
                "wrong typ": {jti: f"{b64({**header, 'typ': 'JWT'})}.{p}.{s}"},
                "wrong audience": {payload_of(foreign)["jti"]: foreign},
                "jti not the poll's": {"other-jti": disabled},
            }
            for what, sets in forged.items():
                nxt = fake.deliver(sets)
                self.assertEqual(nxt.get("ack"), [], f"{what}: acknowledged")
                self.assertEqual(sorted(nxt.get("setErrs", {})), sorted(sets), f"{what}: not reported in setErrs")
                check()  # the freeze it carries did not apply
            self.assertEqual(v.calls.get("introspect", 0), introspections, "checks asked Valet")

            # Valet's own SET applies; its replay after the lift does not freeze again.
            self.assertEqual(fake.deliver({jti: disabled}).get("ack"), [jti])
            with self.assertRaises(valet.VerifyError) as e:
                check()
            self.assertIn("incident control (feed)", e.exception.reason)
            enabled_jti = payload_of(enabled)["jti"]
            self.assertEqual(fake.deliver({enabled_jti: enabled}).get("ack"), [enabled_jti])
            check()
            replay = fake.deliver({jti: disabled})
            self.assertEqual(replay.get("ack"), [])
            self.assertIn("replayed", replay.get("setErrs", {}).get(jti, {}).get("description", ""))
            check()
            self.assertEqual(v.calls.get("introspect", 0), introspections, "checks asked Valet")

            # The stream fails: checks go back to Valet (fail closed), and
            # follow the stream again once it answers.
            fake.failing = True
            until(lambda: not v.live, 5, "a failing poll takes the verifier off the stream")
            check()
            self.assertEqual(v.calls.get("introspect", 0), introspections + 1, "a check while the stream fails must introspect")
            fake.failing = False
            self.assertTrue(v.wait_live(10), "the stream did not come back")


def _accepted(f: Callable[[], Any]) -> bool:
    try:
        f()
        return True
    except valet.VerifyError:
        return False


class FakePoll:
    """An RFC 8936 poll endpoint the test controls: it serves the batches
    given to deliver, one per poll, and records each poll's body."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: List[Tuple[int, Dict[str, Any]]] = []  # (batch number, sets)
        self.batches = 0
        self.polls: List[Dict[str, Any]] = []
        self.taken: Dict[int, int] = {}  # batch number: index of the poll that took it
        self.failing = False
        # Served on every poll while set, as Valet resends what is not acknowledged.
        self.sticky: Optional[Dict[str, Any]] = None
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with fake.lock:
                    fake.polls.append(body)
                    sets = fake.sticky
                    if fake.queue and not fake.failing:
                        n, sets = fake.queue.pop(0)
                        fake.taken[n] = len(fake.polls) - 1
                if fake.failing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if sets is None or sets is fake.sticky:
                    time.sleep(0.05)
                out = json.dumps({"sets": sets or {}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/ssf/poll/s1"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def deliver(self, sets: Dict[str, Any]) -> Dict[str, Any]:
        """Serves sets in one poll and answers the next poll, which reports
        on them."""
        with self.lock:
            self.batches += 1
            batch = self.batches
            self.queue.append((batch, sets))
        until(lambda: batch in self.taken, 5, "the verifier polls")
        n = self.taken[batch] + 1
        until(lambda: len(self.polls) > n, 5, "the verifier polls again")
        return self.polls[n]

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


if __name__ == "__main__":
    unittest.main()
