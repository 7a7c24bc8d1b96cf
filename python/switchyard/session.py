"""Sessions: per-client state in a Redis hash, written with the reply.

A session is keyed by the client's ``session_uuid`` query parameter when it
gives a well-formed one (state survives reconnects), else by the connection's
reply address — exactly as the Rust worker keys it (``worker/src/session.rs``),
so a Rust and a Python worker serving one channel share the same sessions.
Values are strings, as in the Redis hash both sides read: a counter is stored
as its decimal text (``str(n)``), a structure as JSON.

Nothing is written when the consumer changes the session: the changes are
collected and committed in step 1 of the commit, atomically with the outbox
that makes the message's reply and group sends happen once.
"""

from __future__ import annotations

import re
from typing import Iterator, MutableMapping

_SESSION_UUID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def query_param(query: str, name: str) -> str | None:
    """First value of a query parameter, as sent (no percent-decoding)."""
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return None


def session_id(query: str, reply: str) -> str:
    """The session id: a well-formed ``session_uuid``, else the reply address."""
    candidate = query_param(query, "session_uuid")
    if candidate is not None and _SESSION_UUID.match(candidate):
        return candidate
    return reply


RESERVED = "~"
"""Session fields starting with this are Switchyard's (a connection's outbox, the key's
expiry: ``commit_session.lua``); consumers never see them and cannot write them."""


def _check_name(key: str) -> None:
    if key.startswith(RESERVED):
        raise KeyError(f"session fields starting with {RESERVED!r} are Switchyard's: {key!r}")


class Session(MutableMapping[str, str]):
    """The connection's session: a dict of strings, committed with the reply."""

    def __init__(self, session_id: str, values: dict[str, str]) -> None:
        self.id = session_id
        self._values = values
        self._changes: dict[str, str | None] = {}
        self.used = False
        """Read or written by the consumer: the commit checks (and writes) it."""

    def __getitem__(self, key: str) -> str:
        self.used = True
        return self._values[key]

    def __setitem__(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                "session keys and values are strings (a Redis hash, shared with Rust workers): "
                f"store str(value) or json.dumps(value), not {type(value).__name__}"
            )
        _check_name(key)
        self.used = True
        self._values[key] = value
        self._changes[key] = value

    def __delitem__(self, key: str) -> None:
        _check_name(key)
        self.used = True
        del self._values[key]
        self._changes[key] = None

    def __iter__(self) -> Iterator[str]:
        self.used = True
        return iter(self._values)

    def __len__(self) -> int:
        self.used = True
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        self.used = True
        return key in self._values

    def __repr__(self) -> str:
        return f"Session({self.id!r}, {self._values!r})"

    def changes(self) -> tuple[list[tuple[str, str]], list[str]]:
        """Fields to set and fields to delete."""
        sets = [(k, v) for k, v in self._changes.items() if v is not None]
        deletes = [k for k, v in self._changes.items() if v is None]
        return sets, deletes
