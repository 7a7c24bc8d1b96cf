"""Committing handled messages: every effect once, in four slot-local steps.

This is ``worker/src/commit.rs`` in Python, running the same Lua files
(docs/protocol.md, "How a worker handles a message"):

1. **session** (``commit_session.lua``, the session's slot): the session
   writes and an *outbox* — the message's sequence number with its reply and
   group sends — unless the outbox already holds this or a later message of
   the connection. If it holds this one, a worker committed it before and died
   (or was slow): its stored outcome is finished instead of ours.
2. **groups** (``commit_groups.lua``, each group's slot): each group send, only
   if the sender's marker is below the message's sequence number.
3. **reply** (``commit_reply.lua``, the interface's slot): the reply with its
   ``done``, and the HTTP request body append guarded by the sequence table.
4. **ack**: ``XACK``, for an entry with a single message; a message of a
   packed entry is finished after its commit instead, and the last one
   acknowledges the entry (``parts.py``).

Each step is safe to run again, so a message handled twice — by a worker that
claimed a dead one's entry, or after a Redis error — has each effect once.
The outbox is the msgpack ``{v, reply, groups: [{group, kind, data}]}`` after
``"<seq> "``, the format the Rust worker writes, so in a mixed pool either kind
of worker finishes the other's half-committed message.

Handlers hand their commits to one batcher, which runs each step for a whole
batch together: one script call per hash slot (on one Redis, one per step).
With ``--redis-wait-replicas N`` each call is followed by ``WAIT N 2000`` on the
same connection, and fewer acknowledgements fail the messages of that call
(they are handled again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Sequence

from . import scripts
from .keys import Keys
from .parts import Part
from .protocol import PAYLOAD_FIELD, WORKER_GROUP, DecodeError, GroupHistory, GroupSend, decode_outbox, encode_outbox
from .redis_conn import Redis

log = logging.getLogger("switchyard.commit")

MAX_BATCH = 64
"""Most messages committed by one batch."""
BATCHES_IN_FLIGHT = 4
"""Batches under way at once."""
CLOSING_TTL_MS = 3_600_000
"""How long an outbox outlives a connection that is gone."""
WAIT_TIMEOUT_MS = 2000
"""How long a step waits for ``--redis-wait-replicas`` replicas."""


class Outcome(Enum):
    COMMITTED = "committed"
    REPEATED = "repeated"
    """Committed before (an earlier attempt or another worker): its stored outcome was finished."""
    NOT_OWNED = "not_owned"
    """The entry is no longer pending to this worker (streamed responses only)."""


class CommitError(Exception):
    """A step failed; the handler runs the message again."""


class BodyOp(Enum):
    KEEP = ""
    APPEND = "append"
    DELETE = "delete"


@dataclass
class SessionWrite:
    id: str
    sets: list[tuple[str, str]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    def writes(self) -> bool:
        return bool(self.sets or self.deletes)


@dataclass
class Commit:
    part: Part
    """The message committed: its stream entry, and whether the commit acknowledges it."""
    interface: str
    conn: int
    seq: int
    reply: bytes | None
    """Encoded reply; ``None`` when the connection is gone."""
    forget: bool = False
    """The connection (or request) is over."""
    body: BodyOp = BodyOp.KEEP
    chunk: bytes = b""
    session: SessionWrite | None = None
    group_sends: list[GroupSend] = field(default_factory=list)

    @property
    def reply_address(self) -> str:
        return f"{self.interface}!{self.conn}"


@dataclass
class _Item:
    commit: Commit
    future: asyncio.Future[Outcome]
    outcome: Outcome = Outcome.COMMITTED
    error: BaseException | None = None
    finished: bool = False
    """Only the ack is left: a later message of the connection is committed."""

    def going(self) -> bool:
        return self.error is None

    def writing(self) -> bool:
        return self.error is None and not self.finished


class Committer:
    """The commit batcher, plus the early-reply step of streamed responses."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        consumer: str,
        reply_ttl_ms: int,
        session_ttl_ms: int,
        wait_replicas: int = 0,
        history: GroupHistory = GroupHistory(),
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.consumer = consumer
        self.reply_ttl_ms = reply_ttl_ms
        self.session_ttl_ms = session_ttl_ms
        self.wait_replicas = wait_replicas
        self.history = history
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        self._session = scripts.Script(scripts.COMMIT_SESSION)
        self._groups = scripts.Script(scripts.COMMIT_GROUPS)
        self._reply = scripts.Script(scripts.COMMIT_REPLY)
        self._owner = scripts.Script(scripts.STREAM_OWNER)
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="commit-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def commit(self, commit: Commit) -> Outcome:
        """Commits one message (batched with whatever else is ready); raises on failure."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(commit, future))
        return await future

    async def stream_reply(self, stream: str, entry_id: str, interface: str, reply: bytes) -> bool:
        """Appends one early piece of a streamed response if the entry is still ours."""
        client = self.redis.client
        owned = await self._owner(client, [stream], [WORKER_GROUP, self.consumer, entry_id])
        if int(owned) != 1:
            return False
        key = self.keys.reply_stream(interface)
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key, {PAYLOAD_FIELD: reply})
        pipe.pexpire(key, self.reply_ttl_ms)
        await pipe.execute()
        return True

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            task = asyncio.get_running_loop().create_task(self._commit_batch(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _commit_batch(self, items: list[_Item]) -> None:
        try:
            await self._session_step(items)
            await self._groups_step(items)
            await self._reply_step(items)
            await self._ack_step(items)
        except Exception as error:  # a bug here must fail the messages, not hang them
            log.exception("commit batch failed")
            for item in items:
                item.error = item.error or error
        finally:
            self._slots.release()
            for item in items:
                if item.future.done():
                    continue
                if item.error is not None:
                    item.future.set_exception(CommitError(str(item.error) or type(item.error).__name__))
                else:
                    item.future.set_result(item.outcome)

    def _by_slot(self, items: list[_Item], key: Callable[[_Item], str | None]) -> dict[int, list[tuple[_Item, str]]]:
        groups: dict[int, list[tuple[_Item, str]]] = defaultdict(list)
        for item in items:
            k = key(item)
            if k is not None:
                groups[self.redis.slot_group(k)].append((item, k))
        return groups

    async def _call(self, script: scripts.Script, key: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call; with --redis-wait-replicas, followed by WAIT on the same connection."""
        if self.wait_replicas == 0:
            return await script(self.redis.client, keys, args)
        async with self.redis.pinned(key) as con:
            result = await script(con, keys, args)
            acked = int(await con.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS))
            if acked < self.wait_replicas:
                raise CommitError(
                    f"fewer replicas than --redis-wait-replicas acknowledged a write ({acked} of {self.wait_replicas})"
                )
            return result

    async def _run_calls(self, calls: list[tuple[list[_Item], Any]]) -> list[Any]:
        """Runs the calls at once; a failed call fails its items. Returns the results (None on failure)."""
        results = await asyncio.gather(*(call for _, call in calls), return_exceptions=True)
        out: list[Any] = []
        for (members, _), result in zip(calls, results):
            if isinstance(result, BaseException):
                for item in members:
                    item.error = item.error or result
                out.append(None)
            else:
                out.append(result)
        return out

    async def _session_step(self, items: list[_Item]) -> None:
        def session_key(item: _Item) -> str | None:
            session = item.commit.session
            return self.keys.session(session.id) if session is not None and item.writing() else None

        groups = self._by_slot(items, session_key)
        calls = []
        for members in groups.values():
            keys: list[str] = []
            args: list[Any] = [self.session_ttl_ms, min(CLOSING_TTL_MS, self.session_ttl_ms), int(time.time() * 1000)]
            for item, key in members:
                commit = item.commit
                session = commit.session
                assert session is not None
                keys += [key, self.keys.outbox(session.id, commit.reply_address)]
                outbox = encode_outbox(commit.reply, commit.group_sends) if session.writes() else b""
                flags = ("c" if commit.forget else "") + ("o" if session.id == commit.reply_address else "")
                args += [commit.seq, commit.reply_address, outbox, flags, len(session.sets)]
                for name, value in session.sets:
                    args += [name, value]
                args.append(len(session.deletes))
                args += session.deletes
            calls.append(([item for item, _ in members], self._call(self._session, members[0][1], keys, args)))
        results = await self._run_calls(calls)
        for (items_of_call, _), codes in zip(calls, results):
            if codes is None:
                continue
            for item, code in zip(items_of_call, codes):
                self._apply_session_result(item, code)

    @staticmethod
    def _apply_session_result(item: _Item, code: Any) -> None:
        """1 → go on; 0 → a later message is committed; "<seq> <outbox>" → finish that."""
        if code == 1:
            return
        if code == 0:
            item.outcome = Outcome.REPEATED
            item.finished = True
            return
        if isinstance(code, bytes):
            try:
                reply, groups = decode_outbox(code)
            except DecodeError as error:
                item.error = error
                return
            item.commit.reply = reply
            item.commit.group_sends = groups
            item.outcome = Outcome.REPEATED
            return
        item.error = CommitError(f"unexpected answer from the session step: {code!r}")

    async def _groups_step(self, items: list[_Item]) -> None:
        sends: dict[int, list[tuple[_Item, GroupSend]]] = defaultdict(list)
        for item in items:
            if item.writing():
                for send in item.commit.group_sends:
                    sends[self.redis.slot_group(self.keys.group_channel(send.group))].append((item, send))
        if not sends:
            return
        publish = "SPUBLISH" if self.redis.is_cluster else "PUBLISH"
        calls = []
        for members in sends.values():
            keys: list[str] = []
            args: list[Any] = [publish, self.session_ttl_ms, self.history.length, self.history.ttl_ms]
            for item, send in members:
                commit = item.commit
                keys += [
                    *self.keys.group_send_keys(send.group),
                    self.keys.group_sent(send.group, commit.reply_address),
                ]
                args += [commit.seq, send.group, send.kind, send.data]
            first_key = keys[0]
            calls.append(([item for item, _ in members], self._call(self._groups, first_key, keys, args)))
        await self._run_calls(calls)

    async def _reply_step(self, items: list[_Item]) -> None:
        groups = self._by_slot(
            items, lambda item: self.keys.reply_stream(item.commit.interface) if item.writing() else None
        )
        calls = []
        for members in groups.values():
            keys: list[str] = []
            args: list[Any] = [self.reply_ttl_ms]
            for item, stream in members:
                commit = item.commit
                keys += [
                    stream,
                    self.keys.connection_seqs(commit.interface),
                    self.keys.http_body(commit.interface, commit.conn),
                ]
                args += [
                    commit.conn,
                    commit.seq,
                    commit.reply or b"",
                    commit.body.value,
                    commit.chunk if commit.body is BodyOp.APPEND else b"",
                    "1" if commit.forget else "0",
                ]
            calls.append(([item for item, _ in members], self._call(self._reply, members[0][1], keys, args)))
        await self._run_calls(calls)

    async def _ack_step(self, items: list[_Item]) -> None:
        streams: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            if item.going() and not item.commit.part.packed:
                streams[item.commit.part.stream].append(item)
        calls = [
            (members, self.redis.client.xack(stream, WORKER_GROUP, *(i.commit.part.entry_id for i in members)))
            for stream, members in streams.items()
        ]
        await self._run_calls(calls)


async def dead_letter_record(
    redis: Redis, keys: Keys, part: Part, consumer: str, error: str, extra: dict[str, str] | None = None
) -> None:
    """Appends a message to the dead-letter stream (capped at ~100,000) with why, who gave
    up on it, ``extra`` fields (a poison message's ``deliveries``) and its fields as
    ``field:<name>`` (a packed entry's message: its ``part`` index and its own ``m`` only);
    does not acknowledge it (``Part.finish`` does, after)."""
    entry: dict[Any, Any] = {"stream": part.stream, "id": part.entry_id}
    if part.packed:
        entry["part"] = str(part.index)
    entry.update({"error": error, "consumer": consumer})
    entry.update(extra or {})
    for name, value in part.fields.items():
        entry[b"field:" + name] = value
    await redis.client.xadd(keys.dead_letter(), entry, maxlen=100_000, approximate=True)
