"""`Event.data_json` (orjson, `json` for what orjson refuses) gives `json.dumps`'s bytes for
output events, and one line of valid JSON for anything."""

from __future__ import annotations

import json
import random

from gateway.events import Event


def slow(data: dict[str, object]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def test_output_events_are_byte_identical_to_json_dumps() -> None:
    rng = random.Random(7)
    for n in range(5000):
        top = 128 if n % 2 else 0x3000  # ASCII, then anything in the BMP up to CJK
        chars = (chr(rng.randrange(0, top)) for _ in range(rng.randrange(0, 60)))
        text = "".join(c for c in chars if not 0xD800 <= ord(c) < 0xE000)
        data: dict[str, object] = {"text": text, "n": rng.randrange(-(10**12), 10**12)}
        expected = slow(data).translate({0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"})
        assert Event(1, "stdout", data).data_json() == expected


def test_what_the_fast_path_leaves_to_json_dumps_still_encodes_right() -> None:
    for data in (
        {"text": "del \x7f"},
        {"text": "é \u2028 \x85"},
        {"ok": True, "none": None},
        {"nested": {"a": [1, 2]}},
        {"é": "x"},
        {"f": 1.5},
        {"big": 2**70, "text": "x"},
        {"lone": "\ud800 surrogate"},
    ):
        out = Event(1, "exit", dict(data)).data_json()
        assert json.loads(out) == data and "\u2028" not in out and "\n" not in out
