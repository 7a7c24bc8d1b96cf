"""The wire format: channel messages in, replies and outboxes out.

Everything an interface and a worker exchange is a msgpack map with a version
field ``v`` (docs/protocol.md, "Encoding"). This module is the Python side of
``protocol/src/message.rs`` and ``codec.rs``: it decodes a channel message
strictly enough that anything a Rust worker would refuse is refused here too
(and dead-lettered by the worker), and it encodes replies and outboxes with
the same field names and types, so Rust and Python workers can finish each
other's messages in a mixed pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import builtins
from typing import Any, Union

import msgpack  # type: ignore[import-untyped,unused-ignore]

PROTOCOL_VERSION = 1
"""Version of the wire format; carried as ``v`` in every message."""

WORKER_GROUP = "workers"
"""Consumer group every worker of a channel joins."""

PAYLOAD_FIELD = b"m"
"""Stream entry field that carries the msgpack payload."""

PIECE = 64 * 1024
"""Largest HTTP request chunk and response piece."""

WEBSOCKET_EVENTS = ("websocket.connect", "websocket.receive", "websocket.disconnect", "websocket.drain")
HTTP_EVENTS = ("http.request", "http.disconnect")

Headers = list[tuple[str, str]]
Action = dict[str, Any]


class DecodeError(Exception):
    """Bytes that are not a channel message this worker speaks."""


@dataclass
class ChannelMessage:
    """A client event read from a channel stream (``ChannelMessage`` in Rust)."""

    type: str
    reply: str
    seq: int
    path: str
    query: str = ""
    headers: Headers = field(default_factory=list)
    client: str = ""
    subprotocols: list[str] = field(default_factory=list)
    text: str | None = None
    bytes: builtins.bytes | None = None
    code: int = 1000
    method: str = ""
    body: builtins.bytes = b""
    more_body: bool = False

    @property
    def interface(self) -> str:
        return self.reply.rsplit("!", 1)[0]

    @property
    def conn(self) -> int:
        return int(self.reply.rsplit("!", 1)[1])

    @property
    def is_http(self) -> bool:
        return self.type in HTTP_EVENTS


def parse_reply_address(text: str) -> tuple[str, int] | None:
    """``IFACE!CONN`` → (interface, connection); ``None`` when malformed (as ReplyAddress::parse)."""
    interface, bang, conn = text.rpartition("!")
    if not bang or not interface or not conn.isdigit() or not conn.isascii():
        return None
    value = int(conn)
    return (interface, value) if value < 2**64 else None


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"not a valid msgpack message: `{name}` must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError(f"not a valid msgpack message: `{name}` is not valid UTF-8") from None
    return value


def _binary(value: Any, name: str) -> bytes:
    # Redis' cmsgpack writes binary data as a msgpack str holding arbitrary bytes.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise DecodeError(f"not a valid msgpack message: `{name}` must be binary")


def _uint(value: Any, name: str, limit: int = 2**64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise DecodeError(f"not a valid msgpack message: `{name}` must be an unsigned integer")
    return value


def _pairs(value: Any, name: str) -> Headers:
    if not isinstance(value, list):
        raise DecodeError(f"not a valid msgpack message: `{name}` must be an array of pairs")
    pairs = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise DecodeError(f"not a valid msgpack message: `{name}` must be an array of pairs")
        pairs.append((_text(pair[0], name), _text(pair[1], name)))
    return pairs


def decode_channel_message(raw: bytes) -> ChannelMessage:
    """Decodes and checks a channel message; raises :class:`DecodeError` with the reason."""
    try:
        value = msgpack.unpackb(raw, raw=False, unicode_errors="surrogateescape", strict_map_key=False)
    except Exception as error:  # msgpack raises several types for malformed input
        raise DecodeError(f"not a valid msgpack message: {error}") from None
    if not isinstance(value, dict):
        raise DecodeError("not a valid msgpack message: expected a map")
    version = value.get("v")
    if isinstance(version, int) and not isinstance(version, bool) and version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {version} (this build speaks {PROTOCOL_VERSION})")
    if version != PROTOCOL_VERSION:
        raise DecodeError("not a valid msgpack message: missing field `v`")
    kind = value.get("type")
    if kind not in WEBSOCKET_EVENTS + HTTP_EVENTS:
        raise DecodeError(f"not a valid msgpack message: unknown event type {kind!r}")
    for required in ("reply", "seq", "path"):
        if required not in value:
            raise DecodeError(f"not a valid msgpack message: missing field `{required}`")
    message = ChannelMessage(
        type=kind,
        reply=_text(value["reply"], "reply"),
        seq=_uint(value["seq"], "seq"),
        path=_text(value["path"], "path"),
        query=_text(value.get("query", ""), "query"),
    )
    if kind == "websocket.connect":
        message.headers = _pairs(value.get("headers", []), "headers")
        message.client = _text(value.get("client", ""), "client")
        offered = value.get("subprotocols", [])
        if not isinstance(offered, list):
            raise DecodeError("not a valid msgpack message: `subprotocols` must be an array")
        message.subprotocols = [_text(p, "subprotocols") for p in offered]
    elif kind == "websocket.receive":
        if value.get("text") is not None:
            message.text = _text(value["text"], "text")
        if value.get("bytes") is not None:
            message.bytes = _binary(value["bytes"], "bytes")
    elif kind == "websocket.disconnect":
        if "code" not in value:
            raise DecodeError("not a valid msgpack message: missing field `code`")
        message.code = _uint(value["code"], "code", 2**16)
    elif kind == "http.request":
        if "method" not in value:
            raise DecodeError("not a valid msgpack message: missing field `method`")
        message.method = _text(value["method"], "method")
        message.headers = _pairs(value.get("headers", []), "headers")
        message.client = _text(value.get("client", ""), "client")
        message.body = _binary(value.get("body", b""), "body")
        more = value.get("more_body", False)
        if not isinstance(more, bool):
            raise DecodeError("not a valid msgpack message: `more_body` must be a boolean")
        message.more_body = more
    return message


def encode(value: Any) -> bytes:
    """msgpack with str as str and bytes as bin, as ``rmp_serde::to_vec_named`` writes."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def encode_reply(conn: int, done: int | None, actions: list[Action]) -> bytes:
    """A reply for one connection (``Reply``); ``done=None`` for an early piece."""
    reply: dict[str, Any] = {"v": PROTOCOL_VERSION, "conn": conn}
    if done is not None:
        reply["done"] = done
    reply["actions"] = actions
    return encode(reply)


def decode_reply(raw: bytes) -> dict[str, Any]:
    """A reply back (for tests and for reading an outbox); raises :class:`DecodeError`."""
    try:
        value = msgpack.unpackb(raw, raw=False)
    except Exception as error:  # msgpack raises several types for malformed input
        raise DecodeError(f"not a valid msgpack reply: {error}") from None
    if not isinstance(value, dict) or value.get("v") != PROTOCOL_VERSION:
        raise DecodeError("not a version 1 reply")
    return value


# ----- group sends -------------------------------------------------------------------------

GroupData = Union[str, bytes]


@dataclass(frozen=True)
class GroupSend:
    """One broadcast, as the group-send script takes it: kind ``t`` text, ``b``
    bytes, ``j`` a JSON object sent as text with the broadcast's ``seq`` added."""

    group: str
    kind: str
    data: bytes

    @staticmethod
    def of(group: str, data: GroupData, *, json_object: bool = False) -> GroupSend:
        if isinstance(data, bytes):
            if json_object:
                raise TypeError("a JSON group send takes text (the encoded object)")
            return GroupSend(group, "b", data)
        if isinstance(data, str):
            return GroupSend(group, "j" if json_object else "t", data.encode("utf-8"))
        raise TypeError(f"a group send takes str or bytes, not {type(data).__name__}")


@dataclass(frozen=True)
class GroupHistory:
    """How much of each group's broadcasts a send keeps for recovery
    (``--group-history``, ``--group-history-ttl``; docs/protocol.md, "Group history and recovery")."""

    length: int = 100
    """Most broadcasts kept per group; 0: none."""
    ttl_ms: int = 300_000
    """Older broadcasts are dropped, and the history expires this long after the group's last send; 0: no age limit."""


# ----- outboxes ----------------------------------------------------------------------------


def encode_outbox(reply: bytes | None, groups: list[GroupSend]) -> bytes:
    """The outcome kept with a session write (``Outbox``): ``{v, reply, groups}``."""
    return encode(
        {
            "v": PROTOCOL_VERSION,
            "reply": reply or b"",
            "groups": [{"group": g.group, "kind": g.kind, "data": g.data} for g in groups],
        }
    )


def decode_outbox(stored: bytes) -> tuple[bytes | None, list[GroupSend]]:
    """The reply and group sends back from a stored ``"<seq> <outbox>"``."""
    _, space, packed = stored.partition(b" ")
    if not space:
        raise DecodeError("unreadable outbox in Redis: no sequence number")
    try:
        value = msgpack.unpackb(packed, raw=False, unicode_errors="surrogateescape")
    except Exception as error:  # msgpack raises several types for malformed input
        raise DecodeError(f"unreadable outbox in Redis: {error}") from None
    if not isinstance(value, dict) or value.get("v") != PROTOCOL_VERSION:
        raise DecodeError("unreadable outbox in Redis: not version 1")
    reply = _binary(value.get("reply", b""), "reply")
    groups = []
    for send in value.get("groups", []):
        if not isinstance(send, dict) or send.get("kind") not in ("t", "b", "j"):
            raise DecodeError("unreadable outbox in Redis: bad group send")
        groups.append(GroupSend(_text(send.get("group"), "group"), send["kind"], _binary(send.get("data"), "data")))
    return (reply or None), groups
