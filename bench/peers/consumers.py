"""The seed chat counter as a Channels consumer, the peer of Switchyard's built-in chat app.

Protocol (shared with Switchyard so one load tool measures both): every text message a
client sends is answered with {"count": n}, n = 1, 2, 3 ... per connection. Each connection
joins the group "chat"; a background task per process sends {"ts": iso-time} to the group
every PEERS_HEARTBEAT_SECONDS (default 30, 0 disables) — clients ignore frames without
"count".
"""

import asyncio
import datetime
import json
import os

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
