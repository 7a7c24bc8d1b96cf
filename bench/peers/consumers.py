"""Channels consumers that are the peers of Switchyard's built-in chat and rooms apps.

Chat counter (/ws/chat/, shared with Switchyard so one load tool measures both): every text
message a client sends is answered with {"count": n}, n = 1, 2, 3 ... per connection. Each
connection joins the group "chat"; a background task per process sends {"ts": iso-time} to
the group every PEERS_HEARTBEAT_SECONDS (default 30, 0 disables) — clients ignore frames
without "count".

Rooms (/ws/rooms/, the peer of worker/src/apps/rooms.rs for `switchyard-bench broadcast
--protocol channels-rooms`): {"join": room} -> group_add, answered {"joined": room} once the
layer has it; {"leave": room} -> group_discard, {"left": room}; {"say": text, "room": room} ->
one channel_layer.group_send, and every member's handler sends {"room": room, "text": text}
(no "seq": Channels has no per-group broadcast number). Anything else -> {"error": ...}.
"""

import asyncio
import datetime
import json
import os
import re

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

GROUP = "chat"
HEARTBEAT_SECONDS = float(os.environ.get("PEERS_HEARTBEAT_SECONDS", "30"))
_heartbeat_task = None


async def _heartbeat():
    layer = get_channel_layer()
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        ts = datetime.datetime.now(datetime.timezone.utc).isoformat()
        try:
            await layer.group_send(GROUP, {"type": "chat.heartbeat", "ts": ts})
        except Exception:  # Redis away: try again next tick.
            pass


def _ensure_heartbeat():
    global _heartbeat_task
    if HEARTBEAT_SECONDS > 0 and _heartbeat_task is None:
        _heartbeat_task = asyncio.get_running_loop().create_task(_heartbeat())


class ChatCounterConsumer(AsyncWebsocketConsumer):
    groups = [GROUP]

    async def connect(self):
        self.count = 0
        _ensure_heartbeat()
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        self.count += 1
        await self.send(text_data=json.dumps({"count": self.count}))

    async def chat_heartbeat(self, event):
        await self.send(text_data=json.dumps({"ts": event["ts"]}))


# Room names: the characters both Switchyard and Channels group names accept.
_ROOM = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _room_group(room):
    return f"room.{room}"


class RoomsConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.rooms = set()
        await self.accept()

    async def disconnect(self, code):
        for room in list(self.rooms):
            try:
                await self.channel_layer.group_discard(_room_group(room), self.channel_name)
            except Exception:  # Redis away while closing: the membership expires anyway.
                pass
        self.rooms.clear()

    async def receive(self, text_data=None, bytes_data=None):
        try:
            command = json.loads(text_data) if text_data is not None else None
        except ValueError:
            command = None
        if not isinstance(command, dict):
            await self.send(text_data=json.dumps({"error": "expected a JSON object"}))
            return

        def room_of(key):
            value = command.get(key)
            return value if isinstance(value, str) and _ROOM.match(value) else None

        said = command.get("say")
        if room_of("join"):
            room = room_of("join")
            await self.channel_layer.group_add(_room_group(room), self.channel_name)
            self.rooms.add(room)
            await self.send(text_data=json.dumps({"joined": room}))
        elif room_of("leave"):
            room = room_of("leave")
            await self.channel_layer.group_discard(_room_group(room), self.channel_name)
            self.rooms.discard(room)
            await self.send(text_data=json.dumps({"left": room}))
        elif room_of("room") and isinstance(said, str):
            room = room_of("room")
            await self.channel_layer.group_send(
                _room_group(room), {"type": "room.message", "room": room, "text": said}
            )
        else:
            await self.send(
                text_data=json.dumps(
                    {"error": 'expected {"join": room}, {"leave": room} or {"say": text, "room": room}'}
                )
            )

    async def room_message(self, event):
        await self.send(text_data=json.dumps({"room": event["room"], "text": event["text"]}))
