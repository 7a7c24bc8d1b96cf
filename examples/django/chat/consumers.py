"""The chat counter, in Python: the same service as the Rust worker's ``chat`` app.

Every text message is answered with ``{"count": n}``. The count lives in the
session, a Redis hash committed atomically with each reply, so it survives
reconnects (``?session_uuid=…``), worker restarts, and a mix of Python and
Rust workers on the channel: both read and write the same ``count`` field.
Every connection joins group ``chat``; when the interface shuts down each
client gets ``{"bye": true, "total": n}``.

Porting note: a Channels consumer would keep ``self.count`` on the instance.
Here an instance lives for one event (the next message may be handled by
another process), so the count is in ``self.scope["session"]``.
"""

import json

from switchyard import AsyncWebsocketConsumer

GROUP = "chat"


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class ChatCounterConsumer(AsyncWebsocketConsumer):
    groups = [GROUP]

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            return
        session = self.scope["session"]
        count = int(session.get("count", "0")) + 1
        session["count"] = str(count)
        await self.send(text_data=dumps({"count": count}))

    async def drain(self):
        total = int(self.scope["session"].get("count", "0"))
        await self.send(text_data=dumps({"bye": True, "total": total}))
