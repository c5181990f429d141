"""The last-active TTL loop: removes sandboxes idle past their TTL."""

from __future__ import annotations

import asyncio
import logging

from .errors import PetriError
from .sandboxes import Sandboxes

log = logging.getLogger("petri.reaper")


async def reap_forever(sandboxes: Sandboxes, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            reaped = await sandboxes.reap_expired()
        except PetriError as exc:  # Docker away for a moment: try again next round
            log.warning("reaper round failed: %s", exc.message)
            continue
        if reaped:
            log.info("reaped %d expired sandbox(es): %s", len(reaped), ", ".join(reaped))
