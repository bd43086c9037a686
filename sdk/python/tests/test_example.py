"""The example agent loop calls the example tool server, both on Valet."""

from __future__ import annotations

import os
import sys
import unittest

from tests.devserver import DevServer, add_sdk_to_path

add_sdk_to_path()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import agent_loop  # noqa: E402
import notes_server  # noqa: E402

import valet  # noqa: E402


class ExampleTest(unittest.TestCase):
    def test_agent_loop_against_the_protected_tool_server(self):
        dev = DevServer()
        self.addCleanup(dev.stop)
        srv, url, v = notes_server.serve(dev.url)
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        self.addCleanup(v.stop)
        self.assertTrue(v.wait_live(10))
        out = agent_loop.run(dev.url, url, agent_loop.dev_identity(dev.url))
        self.assertEqual(out["answer"], "read 2 notes, wrote a summary, deleted n-1")
        self.assertEqual([s["tool"] for s in out["steps"]], ["notes.read", "notes.write", "notes.delete"])
        self.assertEqual(out["steps"][0]["result"]["read_by"], "agent-notes")
        self.assertEqual(out["steps"][2]["result"], {"deleted": True})
        # The task ended with the loop: its token is dead.
        t = out["task"]
        self.assertTrue(t.completed)
        self.assertFalse(dev.introspect(t.token)["active"])
        # The verifier checked every call through the feed: no introspection.
        self.assertFalse(v.calls.get("introspect"), v.calls)
        self.assertEqual(v.calls.get("consume"), 1, v.calls)

    def test_a_tool_outside_the_task_is_refused(self):
        dev = DevServer()
        self.addCleanup(dev.stop)
        srv, url, v = notes_server.serve(dev.url)
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        self.addCleanup(v.stop)
        with valet.task(dev.url, agent_loop.dev_identity(dev.url), template="py-notes",
                        intent="only read the notes", tools=["notes.read"]) as t:
            self.assertIn("notes", agent_loop.call_tool(t, url, "notes.read", {}))
            with self.assertLogs("valet.verify", "WARNING") as logs:
                with self.assertRaisesRegex(RuntimeError, "notes.write: 403"):
                    agent_loop.call_tool(t, url, "notes.write", {"text": "x"})
                with self.assertRaisesRegex(RuntimeError, "notes.delete: 403"):
                    agent_loop.call_tool(t, url, "notes.delete", {"note": "n-1"})
                with self.assertRaisesRegex(RuntimeError, "notes.read: 401"):
                    _call_with(url, "notes.read", {"Authorization": "Bearer " + t.token + "x"})
            self.assertEqual(len(logs.records), 3, logs.output)
            # The refusals carry Go verify's challenges; the metadata is served.
            ch = _challenge(url, "notes.write", t.auth_headers("POST", url + "/tools/notes.write"))
            self.assertEqual(ch, 'DPoP error="insufficient_scope", scope="template:py-notes notes.write", '
                                 'resource_metadata="https://notes.example.com/.well-known/oauth-protected-resource"')
            self.assertEqual(_challenge(url, "notes.read", {}),
                             'Bearer resource_metadata="https://notes.example.com/.well-known/oauth-protected-resource", '
                             'DPoP algs="EdDSA ES256", resource_metadata="https://notes.example.com/.well-known/oauth-protected-resource"')
            self.assertEqual(_challenge(url, "notes.delete", t.auth_headers("POST", url + "/tools/notes.delete"),
                                        body=b'{"note": "n-1"}'),
                             'DPoP error="insufficient_scope", '
                             'resource_metadata="https://notes.example.com/.well-known/oauth-protected-resource"')
            import json
            import urllib.request
            with urllib.request.urlopen(url + "/.well-known/oauth-protected-resource", timeout=10) as r:
                md = json.load(r)
            self.assertEqual((md["resource"], md["authorization_servers"]), ("https://notes.example.com", [dev.url]))
            for line in logs.output:
                self.assertNotIn(t.token[20:60], line, "a log line holds the token")


def _call_with(url: str, tool: str, headers: dict) -> None:
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"{url}/tools/{tool}", method="POST", data=b"{}", headers=headers)
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except urllib.error.HTTPError as e:
        with e:
            raise RuntimeError(f"{tool}: {e.code} {json.load(e).get('message', '')}") from None


def _challenge(url: str, tool: str, headers: dict, body: bytes = b"{}"):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"{url}/tools/{tool}", method="POST", data=body, headers=headers)
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except urllib.error.HTTPError as e:
        with e:
            return e.headers.get("WWW-Authenticate")
    raise AssertionError(f"{tool} was not refused")


if __name__ == "__main__":
    unittest.main()
