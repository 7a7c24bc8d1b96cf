"""Entries handed out again after their handler died: the one that kills is isolated.

The Python side of ``worker/src/runtime/redelivery.rs``, with the same key, so
Rust and Python workers sharing a channel agree on the suspect. A consumer that
kills the process on one message (``os.abort()``, an out-of-memory kill) takes
down every other message the worker held; whoever takes them over gets the
poison together with innocent entries, and handled all at once the poison
would kill them again until the delivery limit dead-lettered them too. So:

- the entry the previous handler was running alone when it died (recorded in
  ``P:suspect:{CHANNEL:N}``, the stream's slot) is the suspect: the others are
  handled first (concurrently) and committed, then the suspect alone;
- without a known suspect, entries already handed out at least
  ``ISOLATE_FROM`` times are handled one at a time, each recorded as the
  suspect before it runs, so the next crash names its culprit. Fewer deliveries
  (a plain ``kill -9`` of a worker) keep the usual concurrency.

The poison then dies alone each time until ``--max-deliveries`` gives it up
(``handler.py``), while its neighbours are committed well within the limit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from .handler import RETRYABLE, delivery_count, handle

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("switchyard.worker")

ISOLATE_FROM = 3
"""Deliveries from which entries without a known suspect are handled one at a time."""
SUSPECT_TTL_MS = 3_600_000
"""How long a suspect record is kept."""

Entry = tuple[str, dict[bytes, bytes]]


async def run(worker: Worker, stream: str, entries: list[Entry], done: Callable[[str], None]) -> None:
    """Handles redelivered entries of one stream; ``done(entry_id)`` after each (its permit)."""
    key = worker.keys.suspect(stream)
    try:
        raw = await worker.redis.client.get(key)
        suspect = raw.decode() if isinstance(raw, bytes) else raw
    except RETRYABLE:
        suspect = None
    alone = [e for e in entries if e[0] == suspect]
    others = [e for e in entries if e[0] != suspect]
    isolate = False
    if suspect is None or not alone:
        for entry_id, _ in others:
            count = await delivery_count(worker, stream, entry_id)
            if count is not None and count >= ISOLATE_FROM:
                isolate = True
                break
    if isolate:
        log.warning(
            "%d entries of %s handed out again after repeated crashes: handling them one at a time", len(others), stream
        )
        for entry_id, fields in others:
            await _one_alone(worker, stream, key, entry_id, fields, done)
    else:
        await asyncio.gather(*(_handle(worker, stream, entry_id, fields, done) for entry_id, fields in others))
    for entry_id, fields in alone:
        log.warning("handling %s on %s, the entry its last handler died with, alone", entry_id, stream)
        await _one_alone(worker, stream, key, entry_id, fields, done)


async def _handle(
    worker: Worker, stream: str, entry_id: str, fields: dict[bytes, bytes], done: Callable[[str], None]
) -> None:
    try:
        await handle(worker, stream, entry_id, fields, redelivered=True)
    except Exception:  # a bug must not kill the worker; the entry stays pending
        log.exception("handling %s on %s failed unexpectedly", entry_id, stream)
    finally:
        done(entry_id)


async def _one_alone(
    worker: Worker, stream: str, key: str, entry_id: str, fields: dict[bytes, bytes], done: Callable[[str], None]
) -> None:
    """Records the entry as the suspect, then handles it (nothing else of this batch runs meanwhile)."""
    try:
        await worker.redis.client.set(key, entry_id, px=SUSPECT_TTL_MS)
    except RETRYABLE as error:
        log.debug("cannot record the suspect entry: %s", error)
    await _handle(worker, stream, entry_id, fields, done)
