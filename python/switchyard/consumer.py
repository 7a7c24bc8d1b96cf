"""``AsyncWebsocketConsumer``: Channels' consumer API on Switchyard's worker.

The names are Channels' wherever the meaning is the same: ``connect()``,
``receive(text_data=None, bytes_data=None)``, ``disconnect(code)``;
``await self.accept(subprotocol=None)``, ``await self.send(...)``,
``await self.close(code)``, ``await self.group_add(name)``,
``await self.group_discard(name)``; ``self.scope`` with ``path``,
``query_string``, ``headers``, ``client`` and ``session``; ``groups`` joined
on accept.

What differs, because workers are stateless (docs/python.md, "Porting a
Channels consumer"):

- **One instance per message.** Consecutive events of one connection may run
  on different worker processes, so an instance lives for one event: anything
  kept on ``self`` in ``connect()`` is gone in ``receive()``. State that must
  last goes in ``self.scope["session"]``, committed atomically with the reply.
- **Nothing happens until the handler returns.** ``accept``, ``send``,
  ``close``, group changes, group sends and session writes are collected and
  committed together once the method returns; a worker that dies mid-message
  leaves no trace and another one handles the message again. An exception
  discards them all and closes the connection with 1011.
- **Group sends go straight to the clients.** ``await self.group_send(group,
  text_data=...)`` delivers a frame to every member (one publish), instead of
  Channels' typed event dispatched to each member's consumer.
- ``headers``, ``client`` and ``subprotocols`` are known while handling ``connect`` only.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from .protocol import Action, GroupSend

INTERNAL_ERROR = 1011


class AsyncWebsocketConsumer:
    """Subclass it and override ``connect``, ``receive``, ``disconnect`` (and ``drain``)."""

    groups: ClassVar[list[str]] = []
    """Groups every connection joins when it is accepted (as in Channels)."""

    use_session: ClassVar[bool] = True
    """Load the session before each event (one Redis read); False for consumers that never use it."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.channel_name: str = scope["reply"]
        """The connection's reply address, ``IFACE!CONN`` (Channels' per-connection channel name)."""
        self.actions: list[Action] = []
        self.group_sends: list[GroupSend] = []

    # ----- events: override these ------------------------------------------------------------

    async def connect(self) -> None:
        """A client asks to connect; accept it (the default) or close it (HTTP 403)."""
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The client sent a message."""

    async def disconnect(self, code: int) -> None:
        """The socket is gone (1006 if it just dropped); nothing can be sent any more."""

    async def drain(self) -> None:
        """The interface is shutting down: a last chance to send a goodbye before it closes with 1001."""

    # ----- what a handler may do -------------------------------------------------------------

    async def accept(self, subprotocol: str | None = None) -> None:
        action: Action = {"type": "websocket.accept"}
        if subprotocol is not None:
            action["subprotocol"] = subprotocol
        self.actions.append(action)
        for group in self.groups:
            await self.group_add(group)

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
        if text_data is not None:
            self.actions.append({"type": "websocket.send", "text": text_data})
        elif bytes_data is not None:
            self.actions.append({"type": "websocket.send", "bytes": bytes(bytes_data)})
        else:
            raise ValueError("send() needs text_data or bytes_data")
        if close:
            await self.close(close if isinstance(close, int) and not isinstance(close, bool) else 1000)

    async def send_json(self, content: Any, close: bool = False) -> None:
        await self.send(text_data=json.dumps(content), close=close)

    async def close(self, code: int | None = 1000, reason: str | None = None) -> None:
        """Closes the socket (before accept: refuses the handshake with 403)."""
        self.actions.append({"type": "websocket.close", "code": 1000 if code is None else code, "reason": reason or ""})

    async def group_add(self, group: str, *, since: int | None = None, epoch: str | None = None) -> None:
        """Joins ``group``. With ``since`` (and the ``epoch`` it belongs to), the interface first
        delivers the group's broadcasts after ``since`` from its history, then the live ones; a
        position the history cannot serve gets ``{"type": "recover_failed", …}`` instead."""
        action: dict[str, Any] = {"type": "group.add", "group": group}
        if since is not None:
            action["since"] = since
            action["epoch"] = epoch or ""
        self.actions.append(action)

    async def group_discard(self, group: str) -> None:
        self.actions.append({"type": "group.discard", "group": group})

    async def group_send(
        self, group: str, text_data: str | None = None, bytes_data: bytes | None = None, *, json_seq: bool = False
    ) -> None:
        """A frame to every member of ``group``, sent once when this event is committed.

        ``json_seq=True`` with ``text_data`` holding a JSON object adds the group's
        broadcast number to it as ``"seq"`` (a client can notice a gap)."""
        data: str | bytes | None = text_data if text_data is not None else bytes_data
        if data is None:
            raise ValueError("group_send() needs text_data or bytes_data")
        self.group_sends.append(GroupSend.of(group, data, json_object=json_seq))

    def reset(self) -> None:
        """Drops everything collected (the handler failed)."""
        self.actions = []
        self.group_sends = []
