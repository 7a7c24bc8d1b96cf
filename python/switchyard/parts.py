"""Packed entries: one stream entry, several messages, one acknowledgement.

An interface writes every message of one flush bound for a shard as one entry
with one ``m`` field per message (docs/protocol.md, "Packed entries"). Each
``m`` is a message of its own — a :class:`Part` here — handled, committed and
dead-lettered on its own, concurrently with the others, named ``ID#N``
(``N`` from 0). An entry with a single ``m`` is one part named plain ``ID``,
acknowledged by its commit as before packing.

Redis acknowledges whole entries, so the parts of a packed entry commit
without ``XACK`` and share an :class:`EntryAck`: the part that finishes last —
committed, found committed before, dead-lettered or given up — acknowledges
the entry. Until then the entry stays pending, so a worker that dies midway
leaves all of it to whoever takes it over, who handles every part again (those
committed before finish as repeated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .protocol import PAYLOAD_FIELD, WORKER_GROUP
from .streams import Entry


class EntryAck:
    """Which parts of a packed entry are finished; ``XACK`` once the last one is.

    Finishing is idempotent: a part finished twice counts once, and a call that
    finds every part finished but the entry not yet acknowledged (its ``XACK``
    failed) sends it again."""

    def __init__(self, stream: str, entry_id: str, count: int) -> None:
        self.stream = stream
        self.entry_id = entry_id
        self.count = count
        self.finished: set[int] = set()
        self.acknowledged = False

    async def finish(self, client: Any, index: int) -> None:
        """Marks part ``index`` finished; acknowledges the entry if none is left (raises on a Redis error)."""
        self.finished.add(index)
        if len(self.finished) == self.count and not self.acknowledged:
            await client.xack(self.stream, WORKER_GROUP, self.entry_id)
            self.acknowledged = True


@dataclass(frozen=True, eq=False)
class Part:
    """One message of a stream entry: its only ``m``, or one of a packed entry's."""

    stream: str
    entry_id: str
    index: int
    fields: dict[bytes, bytes]
    """What its dead letter keeps as ``field:<name>``: the entry's fields, or a packed part's own ``m``."""
    entry: EntryAck | None = None
    """Shared by the parts of a packed entry; ``None`` for an entry with a single ``m``."""

    @property
    def packed(self) -> bool:
        """A part of a packed entry: its commit does not acknowledge the entry."""
        return self.entry is not None

    @property
    def name(self) -> str:
        """``ID#N`` for a part of a packed entry, plain ``ID`` otherwise: logs and the suspect use it."""
        return f"{self.entry_id}#{self.index}" if self.packed else self.entry_id

    @property
    def key(self) -> tuple[str, str, int]:
        """What the worker's in-hand set holds while the part is handled."""
        return self.stream, self.entry_id, self.index

    @property
    def payload(self) -> bytes | None:
        return self.fields.get(PAYLOAD_FIELD)

    async def finish(self, client: Any) -> None:
        """Done with this part outside a commit (dead-lettered, or committed without ``XACK``):
        acknowledges its entry — at once for a single part, after the last of a packed
        entry's. Raises on a Redis error; calling it again is safe."""
        if self.entry is None:
            await client.xack(self.stream, WORKER_GROUP, self.entry_id)
        else:
            await self.entry.finish(client, self.index)


def split(stream: str, entry: Entry) -> list[Part]:
    """An entry's parts, in order: one per ``m`` field (one for an entry without any, to be rejected)."""
    entry_id, fields = entry
    payloads = [value for name, value in fields if name == PAYLOAD_FIELD]
    if len(payloads) <= 1:
        return [Part(stream, entry_id, 0, dict(fields))]
    ack = EntryAck(stream, entry_id, len(payloads))
    return [Part(stream, entry_id, i, {PAYLOAD_FIELD: payload}, ack) for i, payload in enumerate(payloads)]


def split_all(stream: str, entries: list[Entry]) -> list[Part]:
    """The parts of entries read together, entry after entry."""
    return [part for entry in entries for part in split(stream, entry)]
