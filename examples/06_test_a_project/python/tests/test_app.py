"""The app's tests: they reach the running app at APP_URL (test mode sets it)."""

import json
import os
import urllib.error
import urllib.request

URL = os.environ.get("APP_URL", "http://127.0.0.1:5000")


def get(path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(URL + path, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_health() -> None:
    assert get("/") == (200, {"status": "ok"})


def test_add() -> None:
    assert get("/add?a=2&b=3") == (200, {"sum": 5})


def test_add_refuses_words() -> None:
    status, body = get("/add?a=two&b=3")
    assert status == 400 and "integers" in body["error"]
