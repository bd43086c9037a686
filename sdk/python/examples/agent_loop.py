"""A small agent loop with the Python client: a (scripted) model picks the
next tool call from what it has seen, the loop calls the Valet-protected
tool server with the task's token, and the task ends, its token revoked,
when the loop does, even if a tool call fails.

    VALET_URL=http://127.0.0.1:8080 TOOLS_URL=http://127.0.0.1:9091 python examples/agent_loop.py
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import valet  # noqa: E402

TOOLS = ["notes.read", "notes.write", "notes.delete"]


def scripted_model(goal: str, history: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stands in for an LLM: the next step, given the tool results so far.
    Read the notes, write a summary, delete the first done note, finish."""
    done = [h["tool"] for h in history]
    if "notes.read" not in done:
        return {"tool": "notes.read", "args": {}}
    notes = history[0]["result"]["notes"]
    if "notes.write" not in done:
        return {"tool": "notes.write", "args": {"text": f"{goal}: {len(notes)} notes read"}}
    if "notes.delete" not in done:
        return {"tool": "notes.delete", "args": {"note": sorted(notes)[0]}}
    return {"final": f"read {len(notes)} notes, wrote a summary, deleted {sorted(notes)[0]}"}


def call_tool(t: valet.Task, tools_url: str, tool: str, args: Dict[str, Any],
              action_token: Optional[str] = None) -> Dict[str, Any]:
    url = f"{tools_url}/tools/{tool}"
    headers = {"Content-Type": "application/json", **t.auth_headers("POST", url)}
    if action_token:
        headers[valet.ACTION_HEADER] = action_token
    req = urllib.request.Request(url, method="POST", data=json.dumps(args).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{tool}: {e.code} {json.load(e).get('message', '')}") from None


def run(valet_url: str, tools_url: str, identity, goal: str = "summarise the notes") -> Dict[str, Any]:
    history: List[Dict[str, Any]] = []
    with valet.task(valet_url, identity, template="py-notes", intent=goal, tools=TOOLS, ttl=120) as t:
        while True:
            step = scripted_model(goal, history)
            if "final" in step:
                return {"task_id": t.id, "answer": step["final"], "steps": history, "task": t}
            action = t.action(step["tool"], step["args"]) if step["tool"] == "notes.delete" else None
            result = call_tool(t, tools_url, step["tool"], step["args"], action)
            history.append({"tool": step["tool"], "args": step["args"], "result": result})


def dev_identity(valet_url: str, agent: str = "agent-notes"):
    """Fresh identity tokens from `valet dev`'s development issuer."""
    def get() -> str:
        req = urllib.request.Request(f"{valet_url}/dev/token?agent={agent}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)["identity_token"]
    return get


if __name__ == "__main__":
    vu = os.environ.get("VALET_URL", "http://127.0.0.1:8080")
    out = run(vu, os.environ.get("TOOLS_URL", "http://127.0.0.1:9091"), dev_identity(vu))
    print(json.dumps({"task_id": out["task_id"], "answer": out["answer"]}))
