"""The verifier against a real `valet dev` and its revocation feed."""

from __future__ import annotations

import time
import unittest

from tests.devserver import AUDIENCE, CLIENT_ID, CLIENT_SECRET, DevServer, add_sdk_to_path

add_sdk_to_path()
import valet  # noqa: E402

dev: DevServer
PUBLIC = "http://127.0.0.1:9999"  # the tool server's URL as its callers name it
PATH = "/tools/notes.read"


def setUpModule() -> None:
    global dev
    dev = DevServer()


def tearDownModule() -> None:
    dev.stop()


def declare(dpop=True, **kw):
    args = dict(template="py-notes", intent="read the meeting notes", tools=["notes.read", "notes.delete"], dpop=dpop)
    args.update(kw)
    return valet.task(dev.url, lambda: dev.identity("agent-py"), **args)


def verifier(**kw) -> valet.Verifier:
    return valet.Verifier(dev.url, AUDIENCE, CLIENT_ID, CLIENT_SECRET, public_url=PUBLIC, **kw)


def headers(t: valet.Task, path: str = PATH, method: str = "POST") -> dict:
    return t.auth_headers(method, PUBLIC + path)


class VerifierTest(unittest.TestCase):
    def test_introspects_until_the_feed_is_live_then_asks_no_one(self):
        v = verifier()
        with declare() as t:
            c = v.check(headers(t), "POST", PATH, "notes.read")
            self.assertEqual((c.task_id, c.actor, c.template), (t.id, "agent-py", "py-notes"))
            self.assertEqual(v.calls.get("introspect"), 1, v.calls)
            with v:
                self.assertTrue(v.wait_live(10), "the feed never went live")
                v.check(headers(t), "POST", PATH, "notes.read")  # warm
                before = v.calls
                n = 500
                start = time.perf_counter()
                for _ in range(n):
                    v.check(headers(t), "POST", PATH, "notes.read")
                per_check = (time.perf_counter() - start) / n
                after = v.calls
                self.assertEqual(after, before, "a warm check called Valet")
                print(f"\nverify: {n} warm checks, {sum(after.values()) - sum(before.values())} calls to Valet, "
                      f"{per_check * 1e6:.0f} us per check (DPoP proof made and checked)")

    def test_concurrent_checks_share_one_jwks_fetch_and_ask_no_one(self):
        import threading
        with verifier() as v, declare(dpop=False) as t:
            self.assertTrue(v.wait_live(10))
            errors = []
            go = threading.Event()

            def worker():
                go.wait()
                for _ in range(50):
                    try:
                        v.check(headers(t), "POST", PATH, "notes.read")
                    except Exception as e:  # reported below
                        errors.append(e)

            threads = [threading.Thread(target=worker) for _ in range(8)]
            for th in threads:
                th.start()
            go.set()
            for th in threads:
                th.join(60)
            self.assertEqual(errors, [])
            calls = v.calls
            self.assertEqual(calls.get("jwks"), 1, calls)
            self.assertFalse(calls.get("introspect"), calls)

    def test_revoked_task_refused_within_one_second_through_the_feed(self):
        with verifier() as v:
            self.assertTrue(v.wait_live(10))
            worst = 0.0
            for _ in range(5):
                t = declare()
                v.check(headers(t), "POST", PATH, "notes.read")
                introspections = v.calls.get("introspect", 0)
                dev.revoke(t.token)
                revoked_at = time.perf_counter()
                while True:
                    try:
                        v.check(headers(t), "POST", PATH, "notes.read")
                    except valet.VerifyError as e:
                        self.assertEqual(e.status, 401)
                        self.assertIn("feed", e.reason)
                        break
                    self.assertLess(time.perf_counter() - revoked_at, 1.0, "still accepted 1 s after revocation")
                    time.sleep(0.002)
                took = time.perf_counter() - revoked_at
                worst = max(worst, took)
                self.assertEqual(v.calls.get("introspect", 0), introspections, "refused by introspection, not the feed")
            print(f"\nverify: revoked task refused {worst * 1000:.1f} ms after revocation (worst of 5, via the feed)")
            self.assertLess(worst, 1.0)

    def test_completed_task_refused_by_introspection_before_the_feed(self):
        v = verifier()
        t = declare()
        v.check(headers(t), "POST", PATH, "notes.read")
        tok_headers = headers(t)
        t.complete()
        with self.assertRaises(valet.VerifyError) as cm:
            v.check(tok_headers, "POST", PATH, "notes.read")
        self.assertEqual(cm.exception.status, 401)
        self.assertIn("introspection", cm.exception.reason)

    def test_tool_not_granted_is_403_with_the_scope(self):
        v = verifier()
        with declare() as t:
            with self.assertRaises(valet.VerifyError) as cm:
                v.check(headers(t), "POST", PATH, "notes.write")
            self.assertEqual(cm.exception.status, 403)
            self.assertEqual(cm.exception.scope, "template:py-notes notes.write")
            # A sensitive tool is never accepted by check().
            with self.assertRaises(valet.VerifyError) as cm:
                v.check(headers(t), "POST", PATH, "notes.delete")
            self.assertEqual(cm.exception.status, 403)

    def test_token_checks(self):
        v = verifier()
        other = valet.Verifier(dev.url, "https://other.example.com", CLIENT_ID, CLIENT_SECRET, public_url=PUBLIC)
        with declare() as t:
            cases = {
                "no token": {},
                "garbage": {"Authorization": "Bearer not-a-jwt"},
                "bound token as Bearer": {"Authorization": "Bearer " + t.token},
                "no proof": {"Authorization": "DPoP " + t.token},
                "proof for another URL": t.auth_headers("POST", PUBLIC + "/tools/other"),
                "proof for another method": t.auth_headers("GET", PUBLIC + PATH),
                "proof by another key": {"Authorization": "DPoP " + t.token,
                                         "DPoP": valet.DPoPKey().proof("POST", PUBLIC + PATH, t.token)},
                "tampered signature": {"Authorization": "DPoP " + t.token[:-4] + ("AAAA" if t.token[-4:] != "AAAA" else "BBBB"),
                                       "DPoP": t.key.proof("POST", PUBLIC + PATH, t.token[:-4] + "AAAA")},
            }
            for name, h in cases.items():
                with self.subTest(name):
                    with self.assertRaises(valet.VerifyError) as cm:
                        v.check(h, "POST", PATH, "notes.read")
                    self.assertEqual(cm.exception.status, 401, str(cm.exception))
                    self.assertNotIn(t.token, str(cm.exception))
            h = headers(t)
            v.check(h, "POST", PATH, "notes.read")
            with self.assertRaises(valet.VerifyError) as cm:
                v.check(h, "POST", PATH, "notes.read")
            self.assertIn("replayed", cm.exception.reason)
            with self.assertRaises(valet.VerifyError) as cm:
                other.check(headers(t), "POST", PATH, "notes.read")
            self.assertIn("audience", cm.exception.reason)
            no_public = valet.Verifier(dev.url, AUDIENCE, CLIENT_ID, CLIENT_SECRET)
            with self.assertRaises(valet.VerifyError) as cm:
                no_public.check(headers(t), "POST", PATH, "notes.read")
            self.assertIn("DPoP", cm.exception.message)
        with declare(dpop=False) as t:
            self.assertEqual(no_public.check(t.auth_headers("POST", ""), "POST", PATH, "notes.read").task_id, t.id)

    def test_valet_down_is_503_not_a_pass(self):
        with declare(dpop=False) as t:
            good = verifier()
            good.check(headers(t), "POST", PATH, "notes.read")  # keys cached
            # The same keys, but introspection at a port nobody listens on.
            down = verifier(valet_url="http://127.0.0.1:9", timeout=1)
            down._keys = good._keys
            with self.assertRaises(valet.VerifyError) as cm:
                down.check(headers(t), "POST", PATH, "notes.read")
            self.assertEqual(cm.exception.status, 503)

    def test_action_tokens(self):
        with verifier() as v, declare() as t:
            self.assertTrue(v.wait_live(10))
            args = {"note": "n-7"}
            path = "/tools/notes.delete"
            act = t.action("notes.delete", args)
            # Other arguments: refused before Valet is asked.
            h = dict(headers(t, path), **{valet.ACTION_HEADER: act})
            consumed = v.calls.get("consume", 0)
            with self.assertRaises(valet.VerifyError) as cm:
                v.check_action(h, "POST", path, "notes.delete", {"note": "n-8"})
            self.assertEqual(cm.exception.status, 403)
            self.assertEqual(v.calls.get("consume", 0), consumed)
            # The right ones: accepted once.
            h = dict(headers(t, path), **{valet.ACTION_HEADER: act})
            c = v.check_action(h, "POST", path, "notes.delete", args)
            self.assertEqual(c.task_id, t.id)
            self.assertEqual(v.calls.get("consume", 0), consumed + 1)
            h = dict(headers(t, path), **{valet.ACTION_HEADER: act})
            with self.assertRaises(valet.VerifyError) as cm:
                v.check_action(h, "POST", path, "notes.delete", args)
            self.assertIn("used already", cm.exception.message)
            # No action token at all.
            with self.assertRaises(valet.VerifyError) as cm:
                v.check_action(headers(t, path), "POST", path, "notes.delete", args)
            self.assertIn(valet.ACTION_HEADER, cm.exception.message)
            self.assertEqual(v.challenge(headers(t, path), cm.exception), "", "an action token's refusal has a challenge")

    def test_reports_tool_calls(self):
        with verifier() as v, declare() as t:
            c = v.check(headers(t), "POST", PATH, "notes.read")
            v.report(headers(t), c, "notes.read", 200, side_effect="read 2 notes")
            deadline = time.monotonic() + 5
            while v.report_stats["sent"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertEqual(v.report_stats["sent"], 1, dict(v.report_stats))
            events = t.client.events(t.token, t.id, key=t.key)
            self.assertEqual([(e["tool"], e["reported_with"]) for e in events][-1][0], "notes.read")

    def test_unknown_kid_fetches_the_jwks_at_most_every_30_s(self):
        from valet import _jose
        v = verifier()
        with declare(dpop=False) as t:
            v.check(headers(t), "POST", PATH, "notes.read")
            self.assertEqual(v.calls.get("jwks"), 1)
            h, p, _, sig = _jose.split(t.token)
            forged = ".".join([_jose.json_b64(dict(h, kid="not-a-valet-key")), _jose.json_b64(p), _jose.b64e(sig)])
            for _ in range(3):
                with self.assertRaises(valet.VerifyError) as cm:
                    v.check({"Authorization": "Bearer " + forged}, "POST", PATH, "notes.read")
                self.assertEqual(cm.exception.status, 401)
            self.assertEqual(v.calls.get("jwks"), 1, "an unknown kid refetched the JWKS within 30 s")

    def test_a_broken_feed_falls_back_to_introspection_and_fails_closed(self):
        own = DevServer()
        try:
            v = valet.Verifier(own.url, AUDIENCE, CLIENT_ID, CLIENT_SECRET, public_url=PUBLIC, timeout=2)
            with v:
                self.assertTrue(v.wait_live(10))
                t = valet.task(own.url, own.identity("agent-py"), template="py-notes", intent="read the notes",
                               tools=["notes.read"], dpop=False)
                v.check(headers(t), "POST", PATH, "notes.read")
                own.stop()
                deadline = time.monotonic() + 10
                while v.live and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.assertFalse(v.live, "the verifier still trusts a feed whose server is gone")
                with self.assertRaises(valet.VerifyError) as cm:
                    v.check(headers(t), "POST", PATH, "notes.read")
                self.assertEqual(cm.exception.status, 503)
        finally:
            own.stop()


if __name__ == "__main__":
    unittest.main()
