"""What the Python workers serve in the end-to-end tests (tests/tests/python_*.rs).

The Django example's channels (``chat``: the chat counter; ``http.django``:
Django's views), plus two consumers that exist to be tested: ``echo`` (no
session) and ``broken`` (raises on ``boom``, to show that a consumer error
closes its connection with 1011 and the worker keeps serving; aborts the whole
process on ``abort``, to show that such a message is given up after
``--max-deliveries``).
"""

import os

from mysite.workers import APPS as EXAMPLE

from switchyard import AsyncWebsocketConsumer


class Echo(AsyncWebsocketConsumer):
    use_session = False

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


class Broken(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "boom":
            raise RuntimeError("boom, on purpose")
        if text_data == "abort":
            os.abort()  # what no `except` absorbs: the process dies, as with an out-of-memory kill
        await self.send(text_data=f"fine: {text_data}")


APPS = {**EXAMPLE, "echo": Echo, "broken": Broken}
