"""The Python worker process: reading, keeping the pool healthy, stopping.

It behaves as ``switchyard-worker`` does (``worker/src/runtime.rs``,
``reader.rs``, ``maintenance.rs``), so Rust and Python workers can share a
channel's consumer group:

- **Reading.** One ``XREADGROUP`` per hash slot group of the served shard
  streams (one on a single Redis), never more entries than free permits
  (``--concurrency``), each message handled in its own task — every ``m`` of
  a packed entry is a message of its own (``parts.py``). The first read of a
  stream asks for this consumer's own pending entries (id ``0``), and so does
  every read after a failed one, at once and two seconds later: a read whose
  answer was lost left entries pending to us that no task holds.
- **Liveness.** Every second ``SET P:worker:NAME {json} PX 3000`` and
  ``ZADD P:workers``, with the same JSON fields as the Rust worker, so
  ``switchyard status`` and the interfaces' ``/readyz`` count Python workers.
- **Claims.** Every second, entries pending to a consumer without a liveness
  key (a ``kill -9``\\ ed worker of either language) are claimed and handled;
  every ten seconds ``XAUTOCLAIM`` takes entries idle longer than
  ``--claim-idle`` whoever holds them.
- **Shards.** Every second the channels' announced shard counts are read and
  new shard streams joined.
- **Trimming.** Entries delivered and acknowledged are trimmed.
- **Stopping.** SIGTERM/SIGINT: no new read (the last blocking one ends within
  a second), every message in hand finished and committed (up to
  ``--drain-timeout``), the group left if nothing is pending to us, the liveness
  key deleted, exit 0. Client sockets never notice.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from . import __version__, redelivery
from .apps import Target
from .asgi import Lifespan
from .commit import Committer
from .handler import RETRYABLE, Backoff, handle
from .keys import Keys
from .metrics import Metrics, serve
from .parts import Part, split_all
from .protocol import WORKER_GROUP, GroupHistory
from .redis_conn import READ_BLOCK_MS, Redis, TlsFiles
from .streams import ensure_group, parse_autoclaim_reply, parse_entries, parse_read_reply, raw_replies, text, trim_acked

log = logging.getLogger("switchyard.worker")

EVERY = 1.0
"""Seconds between maintenance passes."""
LIVENESS_TTL_MS = 3000
BACKSTOP_EVERY = 10
CLAIM_BATCH = 256
MAX_READ = 256
RECHECK = 2.0
"""Seconds after the first good read past a failure when the pending list is read again."""
MAX_SHARDS = 1024


@dataclass
class WorkerConfig:
    """The flags of ``python -m switchyard runworker`` (docs/python.md)."""

    redis_url: str = "redis://127.0.0.1:6379/"
    tls: TlsFiles = field(default_factory=TlsFiles)
    wait_replicas: int = 0
    prefix: str = "switchyard"
    only_channels: list[str] = field(default_factory=list)
    exclude_channels: list[str] = field(default_factory=list)
    concurrency: int = 512
    channel_shards: int = 0
    claim_idle: int = 60
    max_deliveries: int = 5
    session_ttl: int = 86_400
    reply_ttl: int = 60
    drain_timeout: int = 20
    history: GroupHistory = field(default_factory=GroupHistory)
    name: str | None = None
    metrics_bind: tuple[str, int] | None = None

    def consumer_name(self) -> str:
        if self.name:
            return self.name
        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Permits:
    """How many more messages this process may take (``--concurrency``)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        while self.free == 0:
            self._changed.clear()
            await self._changed.wait()
        self.free -= 1

    async def wait_free(self) -> None:
        while self.free == 0:
            self._changed.clear()
            await self._changed.wait()

    def release(self) -> None:
        self.free += 1
        self._changed.set()

    async def wait_all(self) -> None:
        while self.free < self.total:
            self._changed.clear()
            await self._changed.wait()


class BatchedReads:
    """One read command for many keys at once: the sessions of every message read
    together go out as one pipeline (per node on a cluster) instead of one
    round trip — and one pooled connection — each."""

    def __init__(self, redis: Redis, command: str) -> None:
        self.redis = redis
        self.command = command
        self._queue: list[tuple[str, asyncio.Future[Any]]] = []

    async def read(self, key: str) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(lambda: loop.create_task(self._flush()))
        self._queue.append((key, future))
        return await future

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        pipe = self.redis.client.pipeline(transaction=False)
        for key, _ in batch:
            pipe.execute_command(self.command, key)
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as error:  # handed to every waiting handler, which retries
            results = [error] * len(batch)
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class Worker:
    def __init__(self, config: WorkerConfig, targets: dict[str, Target]) -> None:
        self.config = config
        self.targets = targets
        self.consumer = config.consumer_name()
        self.keys = Keys(config.prefix)
        self.redis = Redis(config.redis_url, config.tls, max_connections=config.concurrency + 64)
        raw_replies(self.redis.client)
        self.metrics = Metrics()
        self.permits = Permits(config.concurrency)
        self.committer = Committer(
            self.redis,
            self.keys,
            self.consumer,
            reply_ttl_ms=config.reply_ttl * 1000,
            session_ttl_ms=config.session_ttl * 1000,
            wait_replicas=config.wait_replicas,
            history=config.history,
        )
        self._sessions = BatchedReads(self.redis, "HGETALL")
        self.stopping = False
        self.reading = False
        self.base_shards = 1
        self.streams: list[str] = []
        self.in_hand: set[tuple[str, str, int]] = set()
        """The messages being handled (``Part.key``): a re-read of the pending list skips them."""
        self.lifespans: dict[int, Lifespan] = {}
        """ASGI lifespan per HTTP application (by id): its state is each request's ``scope["state"]``."""
        self._readers: dict[int, asyncio.Task[None]] = {}
        self._reader_streams: dict[int, list[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._redeliveries: set[asyncio.Task[None]] = set()

    # ----- lookups -------------------------------------------------------------------------

    def channel_of(self, stream: str) -> tuple[str, Target] | None:
        parsed = self.keys.channel_of_stream(stream)
        if parsed is None or parsed[0] not in self.targets:
            return None
        return parsed[0], self.targets[parsed[0]]

    def channel_names(self) -> list[str]:
        return sorted(self.targets)

    async def load_session(self, session_id: str) -> dict[str, str]:
        raw = await self._sessions.read(self.keys.session(session_id))
        # Fields starting with "~" are Switchyard's (outboxes, expiry: commit_session.lua).
        return {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items() if not k.startswith(b"~")
        }

    # ----- start and stop ------------------------------------------------------------------

    async def run(self) -> None:
        """Runs until SIGTERM/SIGINT, then stops gracefully."""
        log.info(
            "worker starting: consumer=%s channels=%s redis=%s", self.consumer, self.channel_names(), self.redis.shown
        )
        unreachable = await self.redis.check_at_start()  # refused credentials raise ConfigError
        if unreachable is None:
            log.info("redis reachable (cluster: %s)", self.redis.is_cluster)
        else:
            log.warning("redis unreachable at start: retrying in the background (%s)", unreachable)
        metrics_server = None
        if self.config.metrics_bind is not None:
            host, port = self.config.metrics_bind
            try:
                metrics_server = await serve(host, port, self.metrics)
            except OSError as error:
                raise SystemExit(f"switchyard: --metrics-bind: cannot listen on {host}:{port}: {error.strerror}")
        await self._resolve_base_shards()
        self.streams = sorted(
            s for channel in self.targets for s in self.keys.channel_streams(channel, self.base_shards)
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for target in self.targets.values():
            if target.is_http and id(target.app) not in self.lifespans:
                lifespan = Lifespan(target.app)
                try:
                    await lifespan.startup()
                except RuntimeError as error:
                    raise SystemExit(f"switchyard: {error}") from None
                self.lifespans[id(target.app)] = lifespan
        self.committer.start()
        await self.announce()
        try:
            await self.refresh_shards()
        except RETRYABLE as error:
            log.debug("cannot read the announced channel shards yet: %s", error)
        self._spawn_readers()
        maintenance = loop.create_task(self._keep_running("maintenance", self._maintenance), name="maintenance")
        await stop.wait()
        log.info("stopping: finishing messages in hand")
        self.stopping = True
        await asyncio.gather(*self._readers.values(), return_exceptions=True)
        try:
            await asyncio.wait_for(self._drain(), self.config.drain_timeout)
        except asyncio.TimeoutError:
            log.warning("drain timeout: leaving unfinished messages to other workers")
        maintenance.cancel()
        await asyncio.gather(maintenance, return_exceptions=True)
        await self.leave()
        for lifespan in self.lifespans.values():
            await lifespan.shutdown()
        await self.committer.stop()
        if metrics_server is not None:
            metrics_server.close()
        await self.redis.aclose()
        log.info("worker stopped")

    async def _drain(self) -> None:
        """Until every message in hand is finished, redelivered ones still waiting their turn too."""
        while self._redeliveries:
            await asyncio.gather(*list(self._redeliveries), return_exceptions=True)
        await self.permits.wait_all()

    async def _resolve_base_shards(self) -> None:
        if self.config.channel_shards > 0:
            self.base_shards = min(self.config.channel_shards, MAX_SHARDS)
            return
        try:
            self.base_shards = max(1, min(await asyncio.wait_for(self.redis.primaries(), 5), MAX_SHARDS))
        except (asyncio.TimeoutError, *RETRYABLE) as error:
            log.warning(
                "cannot count the cluster's primaries (%s); reading one shard per channel until interfaces announce theirs",
                error,
            )

    async def announce(self) -> None:
        """Publishes (or refreshes) this worker's liveness key."""
        info = {
            "consumer": self.consumer,
            "pid": os.getpid(),
            "channels": self.channel_names(),
            "in_flight": self.permits.total - self.permits.free,
            "stopping": self.stopping,
            "reading": self.reading,
            "version": __version__,
            "runtime": "python",
        }
        try:
            await self.redis.client.set(self.keys.worker_alive(self.consumer), json.dumps(info), px=LIVENESS_TTL_MS)
            await self.redis.client.zadd(self.keys.workers_index(), {self.consumer: int(time.time() * 1000)})
        except RETRYABLE as error:
            log.warning("cannot refresh liveness key: %s", error)

    async def leave(self) -> None:
        """Leaves every group it has nothing pending in, and deletes its liveness key."""
        client = self.redis.client
        for stream in self.streams:
            try:
                pending = await client.xpending_range(stream, WORKER_GROUP, "-", "+", 1, consumername=self.consumer)
                if not pending:
                    await client.xgroup_delconsumer(stream, WORKER_GROUP, self.consumer)
            except RETRYABLE as error:
                log.debug("cannot leave the group of %s: %s", stream, error)
        try:
            await client.delete(self.keys.worker_alive(self.consumer))
            await client.zrem(self.keys.workers_index(), self.consumer)
        except RETRYABLE as error:
            log.warning("cannot delete the liveness key: %s", error)

    # ----- shards and readers --------------------------------------------------------------

    async def refresh_shards(self) -> None:
        """Reads the shard counts interfaces announced and joins any new shard stream."""
        announced = await self.redis.client.hgetall(self.keys.channel_shards())
        counts = {text(k): int(v) for k, v in announced.items() if v.isdigit()}
        streams = sorted(
            s
            for channel in self.targets
            for s in self.keys.channel_streams(
                channel, max(min(max(counts.get(channel, 1), 1), MAX_SHARDS), self.base_shards)
            )
        )
        added = [s for s in streams if s not in self.streams]
        if not added:
            return
        for stream in added:
            await ensure_group(self.redis.client, stream)
        log.info("reading new channel shards: %s", added)
        self.streams = streams
        self._spawn_readers()

    def _spawn_readers(self) -> None:
        groups: dict[int, list[str]] = {}
        for stream in self.streams:
            groups.setdefault(self.redis.slot_group(stream), []).append(stream)
        for group, members in groups.items():
            self._reader_streams[group] = members
            if group not in self._readers:
                self._readers[group] = asyncio.get_running_loop().create_task(
                    self._keep_running(f"reader {group}", functools.partial(self._read_loop, group))
                )

    async def _keep_running(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Runs a loop of the worker, restarting it (after logging the traceback) if a bug
        escapes it: a reader or the maintenance loop that died quietly would leave a
        worker that looks alive and does nothing."""
        backoff = Backoff()
        while True:
            try:
                await run()
                return
            except Exception:
                log.exception("%s failed unexpectedly; restarting it", name)
                await backoff.wait()

    def _spawn(self, part: Part, redelivered: bool, after_death: bool | None = None) -> None:
        """Handles a message in a task of its own; the caller holds a permit for it."""
        self.in_hand.add(part.key)
        task = asyncio.get_running_loop().create_task(self._handle_held(part, redelivered, after_death))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_held(self, part: Part, redelivered: bool, after_death: bool | None) -> None:
        """Handles a message in hand; then it is no longer, and its permit is free."""
        try:
            await handle(self, part, redelivered, after_death)
        except Exception:  # a bug must not kill the worker; the entry stays pending
            log.exception("handling %s on %s failed unexpectedly", part.name, part.stream)
        finally:
            self.in_hand.discard(part.key)
            self.permits.release()

    async def _read_loop(self, group: int) -> None:
        """Reads one slot group's streams (the list may grow) until the worker stops."""
        client = self.redis.client
        backoff = Backoff()
        positions: dict[str, str] = {}
        # Streams whose pending list this process has read through once: what is found there
        # later comes from lost reads, not from a handler that died.
        read_through: set[str] = set()
        recheck = False
        recheck_at: float | None = None
        while not self.stopping:
            await self.permits.wait_free()
            if self.stopping:
                break
            streams = self._reader_streams[group]
            try:
                for stream in streams:
                    if stream not in positions:
                        await ensure_group(client, stream)
                        positions[stream] = "0"
            except RETRYABLE as error:
                log.warning("cannot create consumer groups; retrying: %s", error)
                await backoff.wait()
                continue
            if recheck_at is not None and time.monotonic() >= recheck_at:
                recheck_at = None
                positions = dict.fromkeys(positions, "0")
            count = min(self.permits.free, MAX_READ)
            try:
                reply = await client.xreadgroup(
                    WORKER_GROUP, self.consumer, {s: positions[s] for s in streams}, count=count, block=READ_BLOCK_MS
                )
            except RETRYABLE as error:
                log.warning("read failed; reading the pending list again: %s", error)
                if "NOGROUP" in str(error):
                    positions = {}
                else:
                    positions = dict.fromkeys(positions, "0")
                recheck = True
                await backoff.wait()
                continue
            backoff.reset()
            if recheck:
                recheck = False
                recheck_at = time.monotonic() + RECHECK
            if not self.reading:
                self.reading = True
                await self.announce()
            batches = parse_read_reply(reply)
            history = {s for s in streams if positions[s] != ">"}
            for stream in streams:
                if positions[stream] == ">":
                    continue
                entries = next((e for s, e in batches if s == stream), [])
                positions[stream] = entries[-1][0] if entries else ">"
            after_death = history - read_through
            read_through |= {s for s in streams if positions[s] == ">"}
            for stream, entries in batches:
                parts = split_all(stream, entries)
                if stream in after_death:
                    # Our own pending list after our previous life: handled together, the one
                    # that may have killed it isolated.
                    self._handle_redelivered(stream, parts)
                    continue
                # Re-read after a lost read (history): maybe half committed, but no handler died.
                again = stream in history
                for part in parts:
                    if part.key in self.in_hand:
                        continue
                    await self.permits.acquire()
                    self._spawn(part, redelivered=again, after_death=False)

    # ----- maintenance ---------------------------------------------------------------------

    async def _maintenance(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(EVERY)
            tick += 1
            await self.announce()
            if self.stopping:
                continue
            try:
                await self.refresh_shards()
            except RETRYABLE as error:
                log.debug("cannot read the announced channel shards: %s", error)
            for stream in list(self.streams):
                try:
                    await self._take_over_dead(stream)
                    if tick % BACKSTOP_EVERY == 0:
                        await self._backstop(stream)
                    await trim_acked(self.redis.client, stream)
                except RETRYABLE as error:
                    log.debug("maintenance of %s failed: %s", stream, error)

    async def _alive(self, consumers: list[str]) -> list[bool]:
        client = self.redis.client
        found = await asyncio.gather(*(client.exists(self.keys.worker_alive(c)) for c in consumers))
        return [bool(n) for n in found]

    async def _take_over_dead(self, stream: str) -> None:
        """Claims and handles the entries of consumers that are no longer alive."""
        client = self.redis.client
        summary = await client.xpending(stream, WORKER_GROUP)
        owners = [text(c["name"]) for c in summary.get("consumers") or []]
        owners = [o for o in owners if o != self.consumer]
        if not owners:
            return
        for dead, alive in zip(owners, await self._alive(owners)):
            if alive:
                continue
            pending = await client.xpending_range(stream, WORKER_GROUP, "-", "+", CLAIM_BATCH, consumername=dead)
            ids = [text(row["message_id"]) for row in pending]
            if not ids:
                await client.xgroup_delconsumer(stream, WORKER_GROUP, dead)
                log.info("removed dead consumer %s from the group of %s", dead, stream)
                continue
            reply = await client.execute_command("XCLAIM", stream, WORKER_GROUP, self.consumer, 0, *ids)
            claimed = split_all(stream, parse_entries(reply))
            self.metrics.claimed += len(claimed)
            log.warning("took over %d messages of dead worker %s on %s", len(claimed), dead, stream)
            self._handle_redelivered(stream, claimed)

    async def _backstop(self, stream: str) -> None:
        """Takes over entries idle longer than --claim-idle; removes dead consumers that own nothing."""
        client = self.redis.client
        reply = await client.execute_command(
            "XAUTOCLAIM", stream, WORKER_GROUP, self.consumer, self.config.claim_idle * 1000, "0-0", "COUNT", CLAIM_BATCH
        )
        parts = split_all(stream, parse_autoclaim_reply(reply))
        if parts:
            self.metrics.claimed += len(parts)
            log.warning("took over %d messages idle longer than --claim-idle on %s", len(parts), stream)
            self._handle_redelivered(stream, parts)
        consumers = await client.xinfo_consumers(stream, WORKER_GROUP)
        idle_empty = [
            text(c["name"])
            for c in consumers
            if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > 10_000 and text(c["name"]) != self.consumer
        ]
        if idle_empty:
            for name, alive in zip(idle_empty, await self._alive(idle_empty)):
                if not alive:
                    await client.xgroup_delconsumer(stream, WORKER_GROUP, name)

    def _handle_redelivered(self, stream: str, parts: list[Part]) -> None:
        """Handles messages handed out before (claimed, or re-read from our pending list)
        without waiting for them, each with a permit taken when its turn comes (a
        claimed entry may hold more messages than ``--concurrency``); the one that may
        have killed their last handler isolated (``redelivery.py``). They are in hand
        from now: a re-read skips them."""
        taken = [part for part in parts if part.key not in self.in_hand]
        if not taken:
            return
        self.in_hand.update(part.key for part in taken)
        started: set[tuple[str, str, int]] = set()

        async def one(part: Part, limit: bool) -> None:
            started.add(part.key)
            await self.permits.acquire()
            await self._handle_held(part, True, limit)

        async def run() -> None:
            try:
                await redelivery.run(self, stream, taken, one)
            except Exception:  # a bug must not kill the worker; the entries stay pending
                log.exception("handling redelivered messages of %s failed unexpectedly", stream)
            finally:
                self.in_hand.difference_update(part.key for part in taken if part.key not in started)

        task = asyncio.get_running_loop().create_task(run())
        self._redeliveries.add(task)
        task.add_done_callback(self._redeliveries.discard)
