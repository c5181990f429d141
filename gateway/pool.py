"""The warm pool (DESIGN §13): sandboxes made ahead, so a create is a claim, not a start.

An entry is exactly what a cold create with default limits and no `env` makes — its id
(`sb-…`), its workspace made and mounted, its hardened container started with the labels and
name of that id — only not yet in the registry. A create that fits claims one (no await
between the claim and the registry row), the pool refills in the background, and nothing of
the pool ever counts against a tenant or shows in a list: until claimed it is no sandbox.

The pool asks the domain (`Sandboxes`) for three things, the `Provider` protocol:

- `provision(sandbox) -> container id`: make and mount its workspace, start its container
  (through the runner, so within `PETRI_MAX_CONCURRENT_STARTS`);
- `unprovision(sandbox_id)`: remove its container, then its workspace;
- `claimed(sandbox_id) -> bool`: whether the registry holds it (claimed before a crash).

Each entry leaves a mark, an empty file `<data dir>/pool/<id>`, from before its workspace is
made until it is claimed or removed: at start-up `sweep` removes what a killed gateway left
(its containers carry the usual labels, so the orphan sweep takes them too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .config import Settings, parse_pool_size
from .errors import PetriError
from .models import Limits, Sandbox, now

log = logging.getLogger("petri.pool")
BACKOFF_SECONDS = (1.0, 60.0)  # after a failed fill: first wait, longest wait
# A refill waits this long after a claim: the new sandbox's first exec (~0.1-0.2 s) runs
# before a container start and an mkfs compete with it for the CPU (bench/exec_latency.py).
REFILL_PAUSE_SECONDS = 0.5


class Provider(Protocol):
    async def provision(self, sandbox: Sandbox) -> str: ...

    async def unprovision(self, sandbox_id: str) -> None: ...

    def claimed(self, sandbox_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Warm:
    """A claimed entry: the sandbox takes its id and container."""

    sandbox_id: str
    container_id: str


def default_limits(settings: Settings) -> Limits:
    s = settings
    return Limits(s.memory_mb, s.cpus, s.pids_limit, s.disk_mb)


def sizes_for(settings: Settings, languages: Iterable[str]) -> dict[str, int]:
    """`PETRI_POOL_SIZE` for these languages (one known to no runtime is left out)."""
    known = set(languages)
    parsed = parse_pool_size(settings.pool_size)
    if isinstance(parsed, int):
        return {lang: parsed for lang in sorted(known) if parsed}
    for lang in sorted(set(parsed) - known):
        log.warning("PETRI_POOL_SIZE names %r, which no runtime provides", lang)
    return {lang: n for lang, n in parsed.items() if lang in known and n}


class Pool:
    def __init__(
        self, settings: Settings, sizes: dict[str, int], provider: Provider, marks: Path
    ) -> None:
        self.sizes = dict(sizes)
        self.limits = default_limits(settings)
        self._provider = provider
        self._marks = marks
        self._ready: dict[str, deque[Warm]] = {lang: deque() for lang in self.sizes}
        self._filling: dict[str, int] = dict.fromkeys(self.sizes, 0)
        # At most half the runner's start slots: users' cold creates keep the rest.
        self._parallel = max(1, settings.max_concurrent_starts // 2)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # --- what a create asks -----------------------------------------------------------------

    def fits(self, language: str, limits: Limits, env: dict[str, str]) -> bool:
        """Whether a cold create of this would make exactly what the pool holds."""
        return language in self.sizes and limits == self.limits and not env

    def claim(self, language: str) -> Warm | None:
        """The oldest ready entry of `language` (no await: the caller writes its row at once),
        or None: the cold path."""
        ready = self._ready.get(language)
        if not ready or self._closed:
            return None
        warm = ready.popleft()
        self._unmark(warm.sandbox_id)
        self._wake.set()
        return warm

    def ready(self) -> dict[str, int]:
        return {lang: len(q) for lang, q in self._ready.items()}

    # --- life of the pool -------------------------------------------------------------------

    async def sweep(self) -> list[str]:
        """At start-up: remove the entries a killed gateway left (claimed ones stay)."""
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self._marks):
                if not self._provider.claimed(name):
                    with contextlib.suppress(PetriError, OSError):
                        await self._provider.unprovision(name)
                        removed.append(name)
                self._unmark(name)
        if removed:
            log.info("removed %d pool entr(ies) left by the last run", len(removed))
        return removed

    def start(self) -> None:
        if self.sizes and self._task is None:
            self._marks.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._task = asyncio.create_task(self._fill_forever(), name="petri-pool")
            self._wake.set()

    async def close(self) -> None:
        """Stop filling and remove every entry not claimed."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for ready in self._ready.values():
            while ready:
                await self._discard(ready.popleft().sandbox_id)

    async def wait_full(self, seconds: float) -> bool:
        """Until every language holds its size (benchmarks, tests); False on timeout."""
        deadline = asyncio.get_running_loop().time() + seconds
        while any(len(self._ready[lang]) < n for lang, n in self.sizes.items()):
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # --- filling ----------------------------------------------------------------------------

    def _wanted(self) -> list[str]:
        wanted = []
        for lang, size in self.sizes.items():
            wanted += [lang] * (size - len(self._ready[lang]) - self._filling[lang])
        return wanted

    async def _fill_forever(self) -> None:
        backoff = BACKOFF_SECONDS[0]
        first = True
        while True:
            await self._wake.wait()
            if not first:
                await asyncio.sleep(REFILL_PAUSE_SECONDS)  # claims meanwhile join this round
            first = False
            self._wake.clear()
            while wanted := self._wanted()[: self._parallel]:
                results = await asyncio.gather(
                    *(self._add(lang) for lang in wanted), return_exceptions=True
                )
                failed = [r for r in results if isinstance(r, BaseException)]
                for exc in failed:
                    if not isinstance(exc, PetriError | OSError):
                        raise exc
                if failed:
                    log.warning("pool fill failed (%s); again in %.0f s", failed[0], backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_SECONDS[1])
                else:
                    backoff = BACKOFF_SECONDS[0]

    async def _add(self, language: str) -> None:
        sandbox_id = f"sb-{secrets.token_hex(8)}"
        at = now()
        template = Sandbox(sandbox_id, language, "running", at, at, 0, self.limits)
        self._filling[language] += 1
        try:
            (self._marks / sandbox_id).touch(mode=0o600)
            try:
                container_id = await self._provider.provision(template)
            except BaseException:
                await asyncio.shield(self._discard(sandbox_id))
                raise
        finally:
            self._filling[language] -= 1
        if self._closed:
            await self._discard(sandbox_id)
            return
        self._ready[language].append(Warm(sandbox_id, container_id))

    async def _discard(self, sandbox_id: str) -> None:
        with contextlib.suppress(PetriError, OSError):
            await self._provider.unprovision(sandbox_id)
        self._unmark(sandbox_id)

    def _unmark(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._marks / sandbox_id).unlink()
