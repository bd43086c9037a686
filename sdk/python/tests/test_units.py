"""Offline checks: canonical arguments (vectors computed by Valet's Go
package canonical), DPoP proofs, typed errors."""

from __future__ import annotations

import json
import unittest

from tests.devserver import add_sdk_to_path

add_sdk_to_path()
import valet  # noqa: E402
from valet import _jose  # noqa: E402
from valet.verify import _check_dpop  # noqa: E402

# (value of "x", canonical form) as Go's canonical.Args writes them.
GO_VECTORS = [
    (0.1, '{"x":0.1}'), (1.5, '{"x":1.5}'), (-2.25, '{"x":-2.25}'), (1e-7, '{"x":1e-7}'),
    (1.5e-7, '{"x":1.5e-7}'), (1e21, '{"x":1e+21}'), (1.2345e22, '{"x":1.2345e+22}'),
    (123456.789, '{"x":123456.789}'), (1e-6, '{"x":0.000001}'), (9.999e20, '{"x":999900000000000000000}'),
    (3.0e15, '{"x":3000000000000000}'), (float(1 << 53), '{"x":9007199254740992}'), (2e300, '{"x":2e+300}'),
    (-1e-300, '{"x":-1e-300}'), (0.000123, '{"x":0.000123}'), (1.0, '{"x":1}'), (7, '{"x":7}'),
]


class CanonicalTest(unittest.TestCase):
    def test_numbers_as_go_writes_them(self):
        for v, want in GO_VECTORS:
            with self.subTest(v=v):
                self.assertEqual(valet.canonical_args({"x": v}).decode(), want)

    def test_strings_keys_and_nesting(self):
        self.assertEqual(valet.canonical_args({"s": "a\bb\fc\x01<>&\u2028é\"\\"}).decode(),
                         '{"s":"a\\bb\\fc\\u0001<>&\\u2028é\\"\\\\"}')
        self.assertEqual(valet.canonical_args({"b": [True, None], "a": {"d": 1, "c": "x"}}),
                         b'{"a":{"c":"x","d":1},"b":[true,null]}')
        self.assertEqual(valet.canonical_args(None), b"{}")
        self.assertEqual(valet.args_hash({}), "RBNvo1WzZ4oRRq0W9-hknpT7T8If536DEMBg9hyq_4o")
        with self.assertRaises(ValueError):
            valet.canonical_args([1])
        deep: dict = {}
        cur = deep
        for _ in range(40):
            cur["a"] = {}
            cur = cur["a"]
        with self.assertRaises(ValueError):
            valet.canonical_args(deep)


class DPoPTest(unittest.TestCase):
    def test_proof_checks_and_thumbprint(self):
        k = valet.DPoPKey()
        p = k.proof("POST", "http://Tools.Example.com:80/a?q=1", "tok")
        header, claims, _, _ = _jose.split(p)
        self.assertEqual((header["typ"], header["alg"]), ("dpop+jwt", "ES256"))
        self.assertNotIn("d", header["jwk"])
        self.assertEqual(claims["htu"], "http://Tools.Example.com:80/a")
        import time
        jkt, _, _ = _check_dpop(p, "POST", "http://tools.example.com/a", time.time(), "tok")
        self.assertEqual(jkt, k.jkt)
        with self.assertRaises(ValueError):
            _check_dpop(p, "POST", "http://tools.example.com/a", time.time(), "other")
        with self.assertRaises(ValueError):
            _check_dpop(p, "POST", "http://tools.example.com/a", time.time() + 120, "tok")
        with self.assertRaises(TypeError):
            import pickle
            pickle.dumps(k)
        # RFC 7638 section 3.1's example uses RSA; check the EC member set
        # and order instead.
        jwk = k.public_jwk
        canon = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]}, separators=(",", ":"))
        import base64
        import hashlib
        self.assertEqual(k.jkt, base64.urlsafe_b64encode(hashlib.sha256(canon.encode()).digest()).rstrip(b"=").decode())


class ErrorTest(unittest.TestCase):
    def test_from_valet_and_oauth_bodies(self):
        e = valet.ValetError.from_response(403, json.dumps({"error": "forbidden", "message": "no", "rule": "tools",
                                                            "field": "tools", "request_id": "r-1"}).encode())
        self.assertEqual((e.status, e.code, e.message, e.rule, e.field, e.request_id), (403, "forbidden", "no", "tools", "tools", "r-1"))
        self.assertEqual(str(e), "valet: 403 forbidden: no (rule tools) (field tools) [request r-1]")
        e = valet.ValetError.from_response(400, b'{"error":"invalid_grant","error_description":"bad"}', "r-2")
        self.assertEqual((e.code, e.message, e.request_id), ("invalid_grant", "bad", "r-2"))
        e = valet.ValetError.from_response(502, b"<html>" + b"x" * 1000)
        self.assertEqual(e.code, "http_502")
        self.assertLess(len(e.message), 300)


if __name__ == "__main__":
    unittest.main()


class DenySetTest(unittest.TestCase):
    """The deny set's semantics, case by case as in Go's verify."""

    def setUp(self):
        from valet.verify import Claims, _DenySet
        self.d = _DenySet(lambda: 1_000.0)
        self.d.is_live = True
        self.root = Claims(id="j1", task_id="t1", subject="agent-a", template="tp", agent_issuer="https://iss",
                           issued_at=500.0, expires_at=2_000.0)
        self.child = Claims(id="j2", task_id="t2", subject="agent-a", template="tp", agent_issuer="https://iss",
                            act=("agent-b",), issued_at=500.0, expires_at=2_000.0)

    def test_revoked_jti_and_task(self):
        self.assertFalse(self.d.denied(self.root))
        self.d.add_revoked({"jti": "j1", "exp": 2_000})
        self.assertTrue(self.d.denied(self.root))
        self.d.add_revoked({"task_id": "t2", "exp": 2_000})
        self.assertTrue(self.d.denied(self.child))
        self.d.now = lambda: 3_000.0
        self.d.prune()
        self.assertFalse(self.d.denied(self.root), "an expired entry was kept")

    def test_epochs_cover_tokens_issued_before(self):
        for dim, key in (("agent", "https://iss/agent-a"), ("template", "tp"), ("issuer", "https://iss"), ("all", "*")):
            with self.subTest(dim):
                from valet.verify import _DenySet
                d = _DenySet(lambda: 1_000.0)
                d.add_epoch({"dimension": dim, "key": key, "before": 500_001})
                self.assertTrue(d.denied(self.root))
                d2 = _DenySet(lambda: 1_000.0)
                d2.add_epoch({"dimension": dim, "key": key, "before": 500_000})
                self.assertFalse(d2.denied(self.root), "a token issued at the epoch is not before it")

    def test_controls(self):
        d = self.d
        d.apply_control({"kind": "freeze_agent", "target": "agent-a", "issuer": "", "active": True})
        self.assertEqual(d.controlled(self.root), (True, False))
        self.assertEqual(d.controlled(self.child), (True, False), "the subject of a chain is covered")
        d.apply_control({"kind": "freeze_agent", "target": "agent-a", "issuer": "", "active": False})
        self.assertEqual(d.controlled(self.root), (False, False))
        d.apply_control({"kind": "freeze_agent", "target": "agent-a", "issuer": "https://other", "active": True})
        self.assertEqual(d.controlled(self.root), (False, False))
        self.assertEqual(d.controlled(self.child), (False, True), "the subject's issuer is unknown: ask Valet")
        d.set_controls([{"kind": "quarantine_template", "target": "tp", "active": True}])
        self.assertEqual(d.controlled(self.root), (True, False))
        d.set_controls([{"kind": "distrust_issuer", "target": "https://iss", "active": True}])
        self.assertEqual(d.controlled(self.root), (True, False))
        d.set_controls([{"kind": "distrust_issuer", "target": "https://else", "active": True}])
        self.assertEqual(d.controlled(self.root), (False, False))
        self.assertEqual(d.controlled(self.child), (False, True))


class SSFEventTest(unittest.TestCase):
    """What each SSF event does to the deny set (Go's verify.applySSFEvent),
    and the staleness rule of the stream."""

    def setUp(self):
        from valet.verify import Claims
        self.v = valet.Verifier("http://127.0.0.1:1", "aud", "id", "secret", public_url="http://127.0.0.1:2")
        self.d = self.v._deny
        self.root = Claims(id="j1", task_id="t1", subject="agent-a", template="tp", agent_issuer="dev",
                           issued_at=500.0, expires_at=2_000.0)

    def test_events(self):
        from valet.verify import (SSF_ACCOUNT_DISABLED, SSF_ACCOUNT_ENABLED, SSF_CREDENTIAL_CHANGE,
                                  SSF_SESSION_REVOKED)
        apply, d, root = self.v._apply_ssf_event, self.d, self.root
        agent = {"format": "iss_sub", "iss": "https://idp", "sub": "agent-a"}
        apply(SSF_CREDENTIAL_CHANGE, {"format": "complex", "user": agent,
                                      "credential": {"format": "opaque", "id": "j1"}}, {"change_type": "revoke"})
        self.assertIn("j1", d.jtis)
        apply(SSF_SESSION_REVOKED, {"format": "complex", "user": agent, "session": {"format": "opaque", "id": "t9"}}, {})
        self.assertIn("t9", d.tasks)
        d.jtis.clear()
        self.assertFalse(d.denied(root))
        apply(SSF_SESSION_REVOKED, agent, {"event_timestamp": 499})
        self.assertFalse(d.denied(root), "a token issued after the agent's epoch is refused")
        apply(SSF_SESSION_REVOKED, agent, {"event_timestamp": 500})
        self.assertTrue(d.denied(root), "a token issued at the agent's epoch is accepted")
        apply(SSF_ACCOUNT_DISABLED, {"format": "opaque", "id": "agent-a"}, {})
        self.assertEqual(d.controlled(root), (True, False))
        apply(SSF_ACCOUNT_ENABLED, {"format": "opaque", "id": "agent-a"}, {})
        self.assertEqual(d.controlled(root), (False, False))
        apply("https://example.com/unknown", agent, {})  # ignored
        apply(SSF_ACCOUNT_DISABLED, {"format": "email", "email": "a@example.com"}, {})  # names no agent
        self.assertEqual(d.controlled(root), (False, False))

    def test_a_stream_not_heard_from_for_stream_idle_is_not_live(self):
        import time as _time
        from valet.verify import STREAM_IDLE
        self.v._set_live(True)
        self.assertTrue(self.v.live)
        self.d.heard_mono = _time.monotonic() - STREAM_IDLE - 1
        self.assertFalse(self.v.live, "a stale stream still counts as live")


class GarbageTest(unittest.TestCase):
    def test_garbage_tokens_are_401_never_a_crash(self):
        from valet import _jose
        v = valet.Verifier("http://127.0.0.1:9", "aud", "id", "secret", public_url="http://127.0.0.1:1", timeout=1)
        hdr = _jose.json_b64({"typ": "at+jwt", "alg": "EdDSA", "kid": "k"})
        for tok in ["", "x", "a.b", "a.b.c", "e30.e30.", "\u00e9.\u00e9.\u00e9", "e30.bnVsbA.AA", hdr + ".e30.AA",
                    hdr + "." + _jose.json_b64({"iat": None}) + ".AA", "x" * 9000, "..", "Zm9v.YmFy.YmF6"]:
            with self.subTest(tok=tok[:40]):
                with self.assertRaises(valet.VerifyError) as cm:
                    v.check({"Authorization": "Bearer " + tok}, "POST", "/t", "tool")
                self.assertEqual(cm.exception.status, 401)
