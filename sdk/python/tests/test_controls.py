"""Incident controls reach the verifier through the revocation feed: a
frozen agent's live token is refused without a call to Valet, and accepted
again once the freeze is lifted (valet dev on a private Redis)."""

from __future__ import annotations

import json
import time
import unittest
import urllib.request

from tests.devserver import AUDIENCE, CLIENT_ID, CLIENT_SECRET, DevServer, RedisServer, add_sdk_to_path

add_sdk_to_path()
import valet  # noqa: E402

PUBLIC, PATH = "http://127.0.0.1:9999", "/tools/notes.read"


class ControlTest(unittest.TestCase):
    def setUp(self):
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)
        self.dev = DevServer("--redis", self.redis.url)
        self.addCleanup(self.dev.stop)

    def admin(self, method: str, path: str, body=None) -> int:
        req = urllib.request.Request(f"{self.dev.url}/dev/token?admin=rita", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            tok = json.load(r)["identity_token"]
        req = urllib.request.Request(self.dev.url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status

    def test_freeze_and_lift_through_the_feed(self):
        dev = self.dev
        with valet.Verifier(dev.url, AUDIENCE, CLIENT_ID, CLIENT_SECRET, public_url=PUBLIC) as v, \
                valet.task(dev.url, lambda: dev.identity("agent-py"), template="py-notes",
                           intent="read the meeting notes", tools=["notes.read"]) as t:
            self.assertTrue(v.wait_live(10))

            def check():
                return v.check(t.auth_headers("POST", PUBLIC + PATH), "POST", PATH, "notes.read")

            check()
            before = v.calls
            self.assertEqual(self.admin("POST", "/v1/admin/controls",
                                        {"kind": "freeze_agent", "target": "agent-py", "reason": "python sdk test"}), 201)
            frozen_at = time.perf_counter()
            while True:
                try:
                    check()
                except valet.VerifyError as e:
                    self.assertEqual(e.status, 401)
                    self.assertIn("incident control (feed)", e.reason)
                    break
                self.assertLess(time.perf_counter() - frozen_at, 1.0, "a frozen agent's token accepted 1 s later")
                time.sleep(0.002)
            took = time.perf_counter() - frozen_at
            self.assertEqual(v.calls, before, "the freeze was learnt by asking Valet, not from the feed")
            print(f"\nverify: frozen agent refused {took * 1000:.1f} ms after the freeze (via the feed)")
            self.assertEqual(self.admin("DELETE", "/v1/admin/controls?kind=freeze_agent&target=agent-py"), 200)
            deadline = time.monotonic() + 5
            while True:
                try:
                    check()
                    break
                except valet.VerifyError:
                    self.assertLess(time.monotonic(), deadline, "still refused after the freeze was lifted")
                    time.sleep(0.01)


if __name__ == "__main__":
    unittest.main()
