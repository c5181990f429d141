"""The fast path of `Event.data_json` (output events) gives exactly `json.dumps`'s bytes."""

from __future__ import annotations

import json
import random

from gateway.events import Event


def slow(data: dict[str, object]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def test_fast_path_is_byte_identical_to_json_dumps() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        text = "".join(chr(rng.randrange(0, 128)) for _ in range(rng.randrange(0, 60)))
        data: dict[str, object] = {"text": text, "n": rng.randrange(-(10**12), 10**12)}
        assert Event(1, "stdout", data).data_json() == slow(data)


def test_what_the_fast_path_leaves_to_json_dumps_still_encodes_right() -> None:
    for data in (
        {"text": "del \x7f"},
        {"text": "é \u2028 \x85"},
        {"ok": True, "none": None},
        {"nested": {"a": [1, 2]}},
        {"é": "x"},
        {"f": 1.5},
    ):
        out = Event(1, "exit", dict(data)).data_json()
        assert json.loads(out) == data and "\u2028" not in out and "\n" not in out
