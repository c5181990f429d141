"""Start a run, drop the connection mid-stream, and pick up exactly where it stopped.

    PETRI_URL=http://127.0.0.1:8000 python examples/03_resume_after_disconnect.py

The SDK does this by itself (a dropped stream reconnects with `Last-Event-ID`); here the drop
is made by hand to show the gateway's side: every later event, exactly once, in order.
"""

import os

import httpx

from petri_sdk import Sandbox, StartEvent, StdoutEvent

URL = os.environ.get("PETRI_URL", "http://127.0.0.1:8000")
code = "import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.2)\n"

with Sandbox.create("python", url=URL) as sb:
    # A client reads three events, then goes away (the run goes on without it).
    seen = []
    stream = sb.stream(code=code)
    for event in stream:
        seen.append(event)
        if len(seen) == 3:
            break
    stream.close()
    execution_id = next(e.execution_id for e in seen if isinstance(e, StartEvent))
    print(f"first connection saw events {[e.id for e in seen]}, then dropped")

    # Reconnect after the last id seen: every later event, exactly once.
    rest = list(sb.stream(execution_id=execution_id, after=seen[-1].id))
    print(f"resumed with events {[e.id for e in rest]}")
    print("stdout:", "".join(e.text for e in seen + rest if isinstance(e, StdoutEvent)).split())
    assert [e.id for e in rest] == list(range(seen[-1].id + 1, seen[-1].id + 1 + len(rest)))
    assert rest[-1].type == "exit"

    # The same with raw HTTP: the Last-Event-ID header.
    with httpx.stream(
        "GET",
        f"{URL}/v1/sandboxes/{sb.id}/executions/{execution_id}/events",
        headers={"Last-Event-ID": str(seen[-1].id)},
        timeout=30,
    ) as r:
        ids = [int(line[4:]) for line in r.iter_lines() if line.startswith("id: ")]
    assert ids == [e.id for e in rest]
    print("raw HTTP replay matches:", ids)
