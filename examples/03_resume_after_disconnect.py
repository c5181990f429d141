"""Start a run, drop the connection mid-stream, and pick up exactly where it stopped.

    PETRI_URL=http://127.0.0.1:8000 python examples/03_resume_after_disconnect.py
"""

import os

import httpx

from petri_sdk import Petri

URL = os.environ.get("PETRI_URL", "http://127.0.0.1:8000")

with Petri(URL) as petri:
    sandbox = petri.create("python")
    code = "import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.2)\n"
    execution_id = sandbox.start(code=code)

    # A client reads three events, then goes away (the run goes on without it).
    seen = []
    with httpx.stream("GET", f"{URL}/v1/sandboxes/{sandbox.id}/executions/{execution_id}/events",
                      headers={"Accept": "text/event-stream"}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("id: "):
                seen.append(int(line[4:]))
            if len(seen) == 3:
                break
    print(f"first connection saw events {seen}, then dropped")

    # Reconnect with Last-Event-ID = the last id seen: every later event, exactly once.
    rest = list(sandbox.follow(execution_id, after=seen[-1]))
    print(f"resumed with events {[e.id for e in rest]}")
    print("stdout:", "".join(e.data["text"] for e in rest if e.type == "stdout").split())
    assert [e.id for e in rest] == list(range(seen[-1] + 1, seen[-1] + 1 + len(rest)))
    assert rest[-1].type == "exit"
    sandbox.delete()
