"""``switchyard.Client``: group sends from anywhere — Django views, Celery tasks, scripts.

A group send is one Lua script (``protocol/lua/group_send.lua``): it takes the
group's next broadcast number, keeps the broadcast in the group's capped
history (for members and interfaces that reconnect) and publishes the frame
once on the group's channel (``SPUBLISH`` on a Redis Cluster); every interface
with a member passes it on. It is not tied to a message, so it happens once per call (a
consumer's ``self.group_send`` instead happens once per message, with the
commit).

``group_send`` blocks (for sync code: views, tasks, scripts); ``agroup_send``
is its ``async`` twin, following Django's ``a`` prefix. The sync calls run on
a private event loop thread, so they work from sync code called inside an
async server too.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import Any

from . import scripts
from .keys import Keys
from .protocol import GroupData, GroupHistory, GroupSend
from .redis_conn import Redis, TlsFiles, env_tls

_GROUP_SEND = scripts.Script(scripts.GROUP_SEND)

worker_settings: tuple[str, str, TlsFiles] | None = None
"""Set by ``runworker``: inside a worker, ``Client()`` talks to the worker's Redis
(``--redis-url``, ``--prefix``, TLS files) unless told otherwise."""
worker_history: GroupHistory | None = None
"""Set by ``runworker``: its ``--group-history`` and ``--group-history-ttl``."""
SYNC_TIMEOUT = 30.0
"""Seconds a blocking ``group_send`` waits for Redis."""


def env_history() -> GroupHistory:
    """``SWITCHYARD_GROUP_HISTORY`` and ``SWITCHYARD_GROUP_HISTORY_TTL`` (seconds), else the defaults;
    a value that is not a whole number >= 0 raises ``ValueError`` naming the variable."""
    default = GroupHistory()
    values = []
    for name, fallback in (("SWITCHYARD_GROUP_HISTORY", default.length), ("SWITCHYARD_GROUP_HISTORY_TTL", default.ttl_ms // 1000)):
        raw = os.environ.get(name)
        try:
            value = fallback if raw in (None, "") else int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{name}: {raw!r} is not a whole number >= 0")
        values.append(value)
    return GroupHistory(length=values[0], ttl_ms=values[1] * 1000)


class Client:
    """Talks to a Switchyard deployment's Redis, as ``--redis-url`` and ``--prefix`` name it."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        prefix: str | None = None,
        tls: TlsFiles | None = None,
        history: GroupHistory | None = None,
    ) -> None:
        """Without arguments: the running worker's settings, else ``REDIS_URL``,
        ``SWITCHYARD_PREFIX``, ``REDIS_CA_FILE``/``REDIS_CLIENT_CERT``/``REDIS_CLIENT_KEY`` and
        ``SWITCHYARD_GROUP_HISTORY``/``SWITCHYARD_GROUP_HISTORY_TTL`` (seconds)."""
        if worker_settings is not None:
            default_url, default_prefix, default_tls = worker_settings
        else:
            default_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/"
            default_prefix = os.environ.get("SWITCHYARD_PREFIX") or "switchyard"
            default_tls = env_tls()
        self.history = history if history is not None else (worker_history or env_history())
        self.url = redis_url or default_url
        self.keys = Keys(prefix or default_prefix)
        self.tls = tls if tls is not None else (default_tls if redis_url is None else env_tls())
        Redis(self.url, self.tls)  # refuses a bad URL now, naming the flag; connects lazily
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = weakref.WeakKeyDictionary()
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _redis(self) -> Redis:
        loop = asyncio.get_running_loop()
        redis = self._per_loop.get(loop)
        if redis is None:
            redis = Redis(self.url, self.tls, max_connections=64)
            self._per_loop[loop] = redis
        return redis

    async def agroup_send(self, group: str, data: GroupData, *, json_seq: bool = False) -> int:
        """Sends ``data`` (str: a text frame, bytes: a binary one) to every member of ``group``.

        ``json_seq=True``: ``data`` is a JSON object; the broadcast number is added as ``"seq"``.
        Returns the group's broadcast number."""
        send = GroupSend.of(group, data, json_object=json_seq)
        redis = self._redis()
        publish = "SPUBLISH" if redis.is_cluster else "PUBLISH"
        keys = self.keys.group_send_keys(group)
        args = [publish, group, send.kind, send.data, self.history.length, self.history.ttl_ms]
        seq: Any = await _GROUP_SEND(redis.client, keys, args)
        return int(seq)

    def group_send(self, group: str, data: GroupData, *, json_seq: bool = False) -> int:
        """The blocking ``agroup_send``."""
        future = asyncio.run_coroutine_threadsafe(self.agroup_send(group, data, json_seq=json_seq), self._loop())
        return future.result(SYNC_TIMEOUT)

    def _loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._thread_loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="switchyard-client", daemon=True).start()
                self._thread_loop = loop
            return self._thread_loop

    async def aclose(self) -> None:
        redis = self._per_loop.pop(asyncio.get_running_loop(), None)
        if redis is not None:
            await redis.aclose()

    def close(self) -> None:
        """Closes the sync side's connections and thread."""
        with self._lock:
            loop, self._thread_loop = self._thread_loop, None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(SYNC_TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
