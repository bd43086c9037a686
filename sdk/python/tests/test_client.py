"""The agent client against a real `valet dev`."""

from __future__ import annotations

import http.server
import json
import threading
import time
import unittest

from tests.devserver import DevServer, add_sdk_to_path

add_sdk_to_path()
import valet  # noqa: E402
from valet import _jose  # noqa: E402

dev: DevServer


def setUpModule() -> None:
    global dev
    dev = DevServer()


def tearDownModule() -> None:
    dev.stop()


def declare(**kw):
    args = dict(template="py-notes", intent="read the meeting notes", tools=["notes.read", "notes.delete", "notes.purge"])
    args.update(kw)
    return valet.task(dev.url, lambda: dev.identity("agent-py"), **args)


class TaskTest(unittest.TestCase):
    def test_with_completes_on_exit(self):
        with declare() as t:
            tok = t.token
            self.assertTrue(dev.introspect(tok)["active"])
            self.assertEqual(t.info["state"], "active")
        self.assertTrue(t.completed)
        self.assertFalse(dev.introspect(tok)["active"], "the task token lives on after the with block")

    def test_with_completes_on_exception(self):
        with self.assertRaisesRegex(RuntimeError, "tool failed"):
            with declare() as t:
                tok = t.token
                raise RuntimeError("tool failed")
        self.assertTrue(t.completed)
        self.assertFalse(dev.introspect(tok)["active"])

    def test_typed_errors_carry_code_rule_field_request_id(self):
        with self.assertRaises(valet.ValetError) as cm:
            declare(tools=["notes.read", "payroll.export"])
        e = cm.exception
        self.assertEqual((e.status, e.code), (403, "forbidden"))
        self.assertTrue(e.rule, f"no rule in {e}")
        self.assertTrue(e.request_id, f"no request id in {e}")
        with self.assertRaises(valet.ValetError) as cm:
            declare(intent="")
        self.assertEqual(cm.exception.status, 400)
        self.assertEqual(cm.exception.field, "intent", str(cm.exception))
        with self.assertRaises(valet.Unreachable):
            valet.Client("http://127.0.0.1:9", timeout=2).declare("x", template="t", intent="i", tools=["a"])

    def test_errors_and_reprs_never_hold_a_token(self):
        with declare() as t:
            tok = t.token
            self.assertNotIn(tok, repr(t))
            dev.revoke(tok)
            with self.assertRaises(valet.ValetError) as cm:
                t.report("notes.read")
            self.assertEqual(cm.exception.status, 401)
            self.assertNotIn(tok, str(cm.exception))
            self.assertNotIn(tok[-20:], str(cm.exception))
            t.completed = True  # revoked: nothing to complete

    def test_dpop_binds_the_task_to_an_ec_p256_key(self):
        with declare() as t:
            self.assertIsNotNone(t.key)
            _, payload, _, _ = _jose.split(t.token)
            self.assertEqual(payload["cnf"]["jkt"], t.key.jkt)
            self.assertEqual(t.key.public_jwk["crv"], "P-256")
            # Without the proof the bound token is refused.
            with self.assertRaises(valet.ValetError) as cm:
                t.client.get_task(t.token, t.id)
            self.assertEqual(cm.exception.status, 401)
            self.assertEqual(t.client.get_task(t.token, t.id, key=t.key)["id"], t.id)

    def test_bearer_task_without_dpop(self):
        with declare(dpop=False) as t:
            self.assertIsNone(t.key)
            self.assertNotIn("cnf", _jose.split(t.token)[1])
            self.assertEqual(t.auth_headers("GET", "http://x/")["Authorization"], "Bearer " + t.token)

    def test_renews_before_the_deadline(self):
        with declare(ttl=3, renew_before=1.5) as t:
            first_deadline, first_token = t.deadline, t.token
            time.sleep(3.5)  # past the first deadline
            self.assertGreaterEqual(t.renewals, 1, f"not renewed: {t.renew_error}")
            self.assertGreater(t.deadline, first_deadline)
            self.assertNotEqual(t.token, first_token)
            self.assertTrue(dev.introspect(t.token)["active"], "the renewed token is not live")
            self.assertEqual(t.client.get_task(t.token, t.id, key=t.key)["state"], "active")

    def test_delegate_token_exchange(self):
        with declare() as t:
            with t.delegate(dev.identity("agent-helper"), ["notes.read"], ttl=30) as child:
                info = child.info
                self.assertEqual(info["parent"], t.id)
                self.assertEqual(info["tools"], ["notes.read"])
                _, payload, _, _ = _jose.split(child.token)
                self.assertEqual(payload["cnf"]["jkt"], t.key.jkt, "the child is not bound to the parent's key")
                self.assertEqual(payload["act"]["sub"], "agent-helper")
                self.assertTrue(dev.introspect(child.token)["active"])
                ctok = child.token
            self.assertFalse(dev.introspect(ctok)["active"], "the child lives on after its with block")
            self.assertTrue(dev.introspect(t.token)["active"])
            with self.assertRaises(valet.ValetError) as cm:
                t.delegate(dev.identity("agent-helper"), ["notes.write"])
            self.assertEqual(cm.exception.status, 403)

    def test_action_token_by_policy_hashes_args_as_valet_does(self):
        odd = {"note": "n-1", "z": [1, 1.5, 1e21, 1e-7, None, True], "é": "<&>\u2028\n", "a": {"b": {"c": -0.25}}}
        with declare() as t:
            tok = t.action("notes.delete", odd)
            _, payload, _, _ = _jose.split(tok)
            self.assertEqual(payload["tool"], "notes.delete")
            self.assertEqual(payload["task_id"], t.id)
            self.assertEqual(payload["args_hash"], valet.args_hash(odd))
            with self.assertRaises(valet.ValetError) as cm:
                t.action("notes.delete", {"note": "locked"})
            self.assertEqual(cm.exception.status, 403)
            self.assertTrue(cm.exception.rule)

    def test_action_waits_for_approval(self):
        with declare() as t:
            got = {}
            client = t.client

            def agent():
                try:
                    got["token"] = t.action("notes.purge", {"note": "n-9"}, wait=20, poll=0.1)
                except Exception as e:  # surfaced below
                    got["err"] = e

            # Ask first to learn the approval id, then approve it while the
            # SDK waits on a second request for the same call.
            pending = client.request_action(t.token, t.id, "notes.purge", {"note": "n-8"}, key=t.key)
            self.assertEqual(pending["status"], "pending")
            th = threading.Thread(target=agent)
            th.start()
            time.sleep(0.5)
            approval = _find_pending(t.id, exclude=pending["approval_id"])
            dev.approve(approval)
            th.join(30)
            self.assertNotIn("err", got, got.get("err"))
            _, payload, _, _ = _jose.split(got["token"])
            self.assertEqual(payload["tool"], "notes.purge")
            self.assertEqual(payload["args_hash"], valet.args_hash({"note": "n-9"}))

    def test_denied_approval_is_a_typed_error(self):
        with declare() as t:
            got = {}

            def agent():
                try:
                    got["token"] = t.action("notes.purge", {"note": "n-3"}, wait=20, poll=0.1)
                except valet.ValetError as e:
                    got["err"] = e

            th = threading.Thread(target=agent)
            th.start()
            approval = _find_pending(t.id, exclude="")
            status, body = dev.post(f"/v1/approvals/{approval}/deny", basic=("approver", "dev-approver-not-for-production"),
                                    body={"reason": "not today"})
            self.assertEqual(status, 200, body)
            th.join(30)
            self.assertNotIn("token", got)
            self.assertEqual(got["err"].status, 403, str(got["err"]))
            self.assertTrue(got["err"].rule, str(got["err"]))

    def test_report_tool_calls(self):
        with declare() as t:
            ev = t.report("notes.read", status=200, side_effect="read 3 notes")
            self.assertEqual((ev["tool"], ev["outcome"], ev["task_id"]), ("notes.read", "ok", t.id))
            events = t.client.events(t.token, t.id, key=t.key)
            self.assertEqual([e["tool"] for e in events], ["notes.read"])


def _find_pending(task_id: str, exclude: str) -> str:
    import base64
    import urllib.request
    for _ in range(100):
        req = urllib.request.Request(f"{dev.url}/v1/approvals?task_id={task_id}", headers={
            "Authorization": "Basic " + base64.b64encode(b"approver:dev-approver-not-for-production").decode()})
        with urllib.request.urlopen(req, timeout=10) as r:
            ids = [a["id"] for a in json.load(r)["approvals"] if a["id"] != exclude]
        if ids:
            return ids[0]
        time.sleep(0.05)
    raise AssertionError("no pending approval")


class NonceTest(unittest.TestCase):
    """RFC 9449 section 8 server nonces, against a loopback server that
    demands one (Valet itself does not)."""

    def test_retries_once_with_the_server_nonce(self):
        seen = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                _, claims, _, _ = _jose.split(self.headers["DPoP"])
                seen.append(claims.get("nonce"))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if claims.get("nonce") != "n-1":
                    body = json.dumps({"error": "use_dpop_nonce", "error_description": "use the nonce"}).encode()
                    self.send_response(401)
                    self.send_header("DPoP-Nonce", "n-1")
                    self.send_header("WWW-Authenticate", 'DPoP error="use_dpop_nonce"')
                else:
                    body = json.dumps({"task": {"id": "tsk_1", "deadline": "2030-01-01T00:00:00Z"},
                                       "credentials": [{"kind": "jwt", "access_token": "a.b.c"}]}).encode()
                    self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            key = valet.DPoPKey()
            c = valet.Client(f"http://127.0.0.1:{srv.server_address[1]}")
            g = c.declare("id-token", template="t", intent="a test intent", tools=["x"], key=key)
            self.assertEqual(g["task"]["id"], "tsk_1")
            self.assertEqual(seen, [None, "n-1"])
            c.declare("id-token", template="t", intent="a test intent", tools=["x"], key=key)
            self.assertEqual(seen, [None, "n-1", "n-1"], "the nonce is not remembered")
        finally:
            srv.shutdown()
            srv.server_close()


if __name__ == "__main__":
    unittest.main()
