"""Messages handed out again after their handler died: the one that kills is isolated.

The Python side of ``worker/src/runtime/redelivery.rs``, with the same key, so
Rust and Python workers sharing a channel agree on the suspect. A consumer that
kills the process on one message (``os.abort()``, an out-of-memory kill) takes
down every other message the worker held; whoever takes them over gets the
poison together with innocent ones, and handled all at once the poison would
kill them again until the delivery limit dead-lettered them too. So, by message
name (``ID``, or ``ID#N`` inside a packed entry, ``parts.py``):

- the message the previous handler was running alone when it died (recorded
  in ``P:suspect:{CHANNEL:N}``, the stream's slot) is the suspect: the others
  are handled first (concurrently) and committed, then the suspect alone;
- when the suspect is a message of a packed entry, its neighbours in that
  entry share its delivery count (Redis counts per entry): they are handled
  one at a time, after the others and before the suspect, each recorded as the
  suspect before it runs, and the delivery limit does not give them up — a
  second poison among them is named by the crash it causes;
- without a known suspect, messages whose entry was already handed out at
  least ``ISOLATE_FROM`` times are handled one at a time, each recorded as the
  suspect before it runs, so the next crash names its culprit. Fewer
  deliveries (a plain ``kill -9`` of a worker) keep the usual concurrency.

The poison then dies alone each time until ``--max-deliveries`` gives it up
(``handler.py``), while its neighbours are committed well within the limit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Awaitable, Callable

from .handler import RETRYABLE, delivery_count
from .parts import Part

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("switchyard.worker")

ISOLATE_FROM = 3
"""Deliveries from which messages without a known suspect are handled one at a time."""
SUSPECT_TTL_MS = 3_600_000
"""How long a suspect record is kept."""

Handle = Callable[[Part, bool], Awaitable[None]]
"""Handles one redelivered message to its end; the flag: ``--max-deliveries`` applies."""


async def run(worker: Worker, stream: str, parts: list[Part], handle: Handle) -> None:
    """Handles redelivered messages of one stream, in the order above."""
    key = worker.keys.suspect(stream)
    try:
        raw = await worker.redis.client.get(key)
        suspect = raw.decode() if isinstance(raw, bytes) else raw
    except RETRYABLE:
        suspect = None
    # The entry a packed suspect came in: its other messages are its neighbours.
    suspect_entry = suspect.partition("#")[0] if suspect is not None and "#" in suspect else None
    alone = [p for p in parts if p.name == suspect]
    beside = [p for p in parts if p.name != suspect and p.packed and p.entry_id == suspect_entry]
    others = [p for p in parts if p.name != suspect and not (p.packed and p.entry_id == suspect_entry)]
    if not alone and not beside and await _crashed_often(worker, stream, others):
        log.warning(
            "%d messages of %s handed out again after repeated crashes: handling them one at a time", len(others), stream
        )
        for part in others:
            await _one_alone(worker, key, part, handle, limit=True)
    else:
        await asyncio.gather(*(handle(part, True) for part in others))
    if beside:
        log.warning(
            "handling the %d other messages of the entry of %s on %s one at a time", len(beside), suspect, stream
        )
    for part in beside:
        await _one_alone(worker, key, part, handle, limit=False)
    for part in alone:
        log.warning("handling %s on %s, the message its last handler died with, alone", part.name, stream)
        await _one_alone(worker, key, part, handle, limit=True)


async def _crashed_often(worker: Worker, stream: str, parts: list[Part]) -> bool:
    """Was any of their entries handed out ``ISOLATE_FROM`` times or more? (one count per entry)"""
    for entry_id in dict.fromkeys(part.entry_id for part in parts):
        count = await delivery_count(worker, stream, entry_id)
        if count is not None and count >= ISOLATE_FROM:
            return True
    return False


async def _one_alone(worker: Worker, key: str, part: Part, handle: Handle, limit: bool) -> None:
    """Records the message as the suspect, then handles it (nothing else of this batch runs meanwhile)."""
    try:
        await worker.redis.client.set(key, part.name, px=SUSPECT_TTL_MS)
    except RETRYABLE as error:
        log.debug("cannot record the suspect message: %s", error)
    await handle(part, limit)
