"""The few things the async twin does differently from the sync one (hand-written in both:
`_sync/_io.py` is not generated)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import IO, Any, Generic, ParamSpec, Protocol, TypeVar

P = ParamSpec("P")


class _AsyncContext(Protocol):
    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> Any: ...


T = TypeVar("T", bound=_AsyncContext)

sleep = asyncio.sleep


async def call(fn: Callable[[Any], Any], arg: Any) -> None:
    """Call a callback; await what it returns when that is awaitable (async callbacks)."""
    result = fn(arg)
    if inspect.isawaitable(result):
        await result


async def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def body(file: IO[bytes]) -> AsyncIterator[bytes]:
    """A file as a request body, read in chunks off the event loop."""
    while chunk := await asyncio.to_thread(file.read, 1024 * 1024):
        yield chunk


class Entering(Generic[T]):
    """What `AsyncSandbox.create` returns: await it for the sandbox, or `async with` it to
    have the sandbox deleted at the end of the block."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._value: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()

    async def __aenter__(self) -> T:
        self._value = await self._coro
        return await self._value.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: object) -> Any:
        assert self._value is not None
        return await self._value.__aexit__(*exc)


def entering(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Entering[T]]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Entering[T]:
        return Entering(fn(*args, **kwargs))

    return wrapper
