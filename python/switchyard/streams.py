"""The channel layer on Redis streams: raw replies, groups, trimming.

redis-py parses stream replies into dicts and chokes on a deleted entry read
from a pending list (``[id, nil]``); the worker installs the identity as the
response callback of ``XREADGROUP``, ``XCLAIM`` and ``XAUTOCLAIM`` and parses the
raw replies here, once, skipping deleted entries as ``protocol/src/stream.rs``
does, and keeping every field in order: a packed entry repeats its ``m`` field,
one per message (``parts.py``), which a dict would collapse. Trimming lives
here too, with its one rule: only entries the group has both delivered and
acknowledged may go.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from .protocol import WORKER_GROUP

Entry = tuple[str, list[tuple[bytes, bytes]]]
"""A stream entry: its id and its fields, in order (a name may repeat)."""

RAW_COMMANDS = ("XREADGROUP", "XCLAIM", "XAUTOCLAIM")


def raw_replies(client: Any) -> None:
    """Makes ``client`` return the stream commands' replies unparsed."""
    for command in RAW_COMMANDS:
        client.set_response_callback(command, lambda response, **options: response)


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_entry(value: Any) -> Entry | None:
    """``[id, [field, value, …]]``; ``None`` for a deleted entry."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not isinstance(value[1], (list, tuple)):
        return None
    flat = value[1]
    fields = [(bytes(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]
    return text(value[0]), fields


def parse_entries(value: Any) -> list[Entry]:
    if not isinstance(value, (list, tuple)):
        return []
    return [entry for entry in map(parse_entry, value) if entry is not None]


def parse_read_reply(value: Any) -> list[tuple[str, list[Entry]]]:
    """An ``XREADGROUP`` reply (nil on timeout → empty), RESP2 or RESP3 shape."""
    if not value:
        return []
    pairs = value.items() if isinstance(value, dict) else value
    return [(text(stream), parse_entries(entries)) for stream, entries in pairs]


def parse_autoclaim_reply(value: Any) -> list[Entry]:
    """``XAUTOCLAIM``: ``[next-cursor, [entries…], [deleted ids…]]`` → the entries."""
    if isinstance(value, (list, tuple)) and len(value) >= 2:
        return parse_entries(value[1])
    return []


async def ensure_group(client: Any, stream: str) -> None:
    """Creates the worker group on a channel stream (and the stream), if missing."""
    try:
        await client.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def _entry_id(text_id: str) -> tuple[int, int]:
    ms, _, seq = text_id.partition("-")
    return int(ms), int(seq or 0)


async def trim_acked(client: Any, stream: str) -> int:
    """Trims entries the group has delivered and acknowledged; returns the number removed.

    The cut is the oldest pending entry, or — with nothing pending — the entry
    after the group's last delivered one; nothing at or after it is touched."""
    groups = await client.xinfo_groups(stream)
    last = None
    for info in groups:
        if text(info.get("name")) == WORKER_GROUP:
            last = info.get("last-delivered-id")
    if last is None:
        return 0
    ms, seq = _entry_id(text(last))
    cut = (ms, seq + 1)
    summary = await client.xpending(stream, WORKER_GROUP)
    oldest = summary.get("min") if isinstance(summary, dict) else None
    if oldest:
        cut = min(cut, _entry_id(text(oldest)))
    if cut == (0, 0):
        return 0
    removed: int = await client.xtrim(stream, minid=f"{cut[0]}-{cut[1]}", approximate=True)
    return removed
