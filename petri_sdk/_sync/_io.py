"""The few things the sync twin does differently from the async one (hand-written in both:
this file is not generated from `_async/_io.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

sleep = time.sleep


def call(fn: Callable[[Any], Any], arg: Any) -> None:
    fn(arg)


def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def body(file: IO[bytes]) -> IO[bytes]:
    return file
