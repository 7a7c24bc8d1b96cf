"""Packed entries (docs/protocol.md, "Packed entries"): several ``m`` fields in one stream
entry, each a message of its own, the entry acknowledged after the last is finished.

From the bottom up, on a real Redis: the raw stream replies keep every ``m`` in order
(a dict would collapse them); the parts and their names; the shared bookkeeping that
sends one ``XACK`` after the last part, idempotently; a part's commit that leaves the
entry pending; the suspect rules by message name (the neighbours of a packed suspect
one at a time and not given up; without a suspect, past the limit every part given
up); and real worker processes (``python -m switchyard runworker test_packed:APPS``)
facing a packed entry with garbage in it, and one with a message that aborts them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from switchyard import AsyncWebsocketConsumer
from switchyard.apps import targets
from switchyard.handler import handle
from switchyard.keys import Keys
from switchyard.parts import Part, split, split_all
from switchyard.protocol import decode_reply, encode
from switchyard.redelivery import run as run_redelivered
from switchyard.streams import ensure_group, parse_autoclaim_reply, parse_entries, parse_read_reply
from switchyard.worker import Worker, WorkerConfig

HERE = Path(__file__).resolve().parent
IFACE = "if-packed"
CHANNEL = "packed"
LIMIT = 3
"""--max-deliveries in these tests: a poison is given up on its fourth delivery."""


class Packed(AsyncWebsocketConsumer):
    """Answers ``fine: TEXT`` and keeps TEXT in its session (so its commit leaves an outbox);
    ``abort`` kills the process, as no ``except`` can absorb."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "abort":
            os.abort()
        self.scope["session"]["last"] = text_data or ""
        await self.send(text_data=f"fine: {text_data}")


APPS = {CHANNEL: Packed}
"""What the worker processes of the last tests serve (``test_packed:APPS``)."""


def receive(conn: int, text: str, seq: int = 2) -> bytes:
    """A channel message as an interface encodes it."""
    return encode(
        {"v": 1, "type": "websocket.receive", "reply": f"{IFACE}!{conn}", "seq": seq, "path": "/ws/", "query": "", "text": text}
    )


class Stack:
    """A Worker (not reading: the tests hand it what it reads) and a raw Redis client."""

    def __init__(self, worker: Worker, raw: aioredis.Redis) -> None:
        self.worker = worker
        self.raw = raw
        self.stream = worker.keys.channel_stream(CHANNEL, 0)

    async def add(self, *fields: tuple[bytes, bytes]) -> str:
        """XADD with the fields as given, a name repeated as often as it comes."""
        flat = [item for pair in fields for item in pair]
        entry_id = await self.raw.execute_command("XADD", self.stream, "*", *flat)
        return str(entry_id.decode())

    async def pack(self, *payloads: bytes) -> str:
        return await self.add(*((b"m", payload) for payload in payloads))

    async def read(self) -> list[Part]:
        """Reads new entries as the worker does, split into their messages."""
        reply = await self.worker.redis.client.xreadgroup("workers", self.worker.consumer, {self.stream: ">"}, count=100)
        return [part for stream, entries in parse_read_reply(reply) for part in split_all(stream, entries)]

    async def hand_out_again(self, entry_id: str, times: int) -> None:
        """Each handler died: the entry is handed out ``times`` more times."""
        for _ in range(times):
            await self.raw.xclaim(self.stream, "workers", self.worker.consumer, 0, [entry_id])

    async def pending(self) -> int:
        return int((await self.raw.xpending(self.stream, "workers"))["pending"])

    async def replies(self) -> dict[int, list[list[dict[str, Any]]]]:
        """Every reply's actions, by connection."""
        return await replies_by_conn(self.raw, self.worker.keys)

    async def letters(self) -> list[dict[bytes, bytes]]:
        return [fields for _, fields in await self.raw.xrange(self.worker.keys.dead_letter())]


async def replies_by_conn(raw: aioredis.Redis, keys: Keys) -> dict[int, list[list[dict[str, Any]]]]:
    """Every reply's actions, by connection. A reply stream entry is packed too (one ``m``
    per reply of a commit batch): read raw, as the worker reads its channel streams."""
    unparsed = aioredis.Redis(connection_pool=raw.connection_pool)
    unparsed.set_response_callback("XRANGE", lambda response, **options: response)
    found: dict[int, list[list[dict[str, Any]]]] = {}
    for _, fields in parse_entries(await unparsed.execute_command("XRANGE", keys.reply_stream(IFACE), "-", "+")):
        for _, payload in fields:
            reply = decode_reply(payload)
            found.setdefault(reply["conn"], []).append(reply["actions"])
    return found


def fine(text: str) -> list[dict[str, Any]]:
    return [{"type": "websocket.send", "text": f"fine: {text}"}]


CLOSED = [{"type": "websocket.close", "code": 1011, "reason": ""}]


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    raw = aioredis.Redis.from_url(redis_url)
    await raw.flushall()
    worker = Worker(WorkerConfig(redis_url=redis_url, name="py-packed", max_deliveries=LIMIT), targets(APPS))
    await ensure_group(worker.redis.client, worker.keys.channel_stream(CHANNEL, 0))
    worker.committer.start()
    yield Stack(worker, raw)
    await worker.committer.stop()
    await worker.redis.aclose()
    await raw.aclose()


# ----- reading: every `m`, in order, as a message of its own ---------------------------------


async def test_the_raw_replies_keep_every_m_of_an_entry_in_order(stack: Stack) -> None:
    packed = await stack.add((b"m", b"a"), (b"x", b"ignored"), (b"m", b"b"), (b"m", b"c"))
    single = await stack.add((b"m", b"alone"), (b"x", b"y"))
    garbage = await stack.add((b"foo", b"bar"))
    parts = await stack.read()
    assert [p.name for p in parts] == [f"{packed}#0", f"{packed}#1", f"{packed}#2", single, garbage]
    assert [p.payload for p in parts] == [b"a", b"b", b"c", b"alone", None]
    assert [p.index for p in parts] == [0, 1, 2, 0, 0]
    # A packed part keeps only its own `m`; an entry of its own keeps all its fields (its dead letter's).
    assert parts[1].fields == {b"m": b"b"} and parts[3].fields == {b"m": b"alone", b"x": b"y"}
    assert parts[4].fields == {b"foo": b"bar"}
    assert parts[0].entry is parts[2].entry is not None and parts[3].entry is None
    assert [p.key for p in parts[:2]] == [(stack.stream, packed, 0), (stack.stream, packed, 1)]

    # Taken over (XCLAIM of a dead worker, XAUTOCLAIM of an idle one): the same parts.
    client = stack.worker.redis.client
    claimed = await client.execute_command("XCLAIM", stack.stream, "workers", "other", 0, packed, single)
    assert [(p.name, p.payload) for p in split_all(stack.stream, parse_entries(claimed))] == [
        (f"{packed}#0", b"a"), (f"{packed}#1", b"b"), (f"{packed}#2", b"c"), (single, b"alone")
    ]
    autoclaimed = await client.execute_command("XAUTOCLAIM", stack.stream, "workers", "third", 0, "0-0", "COUNT", 10)
    entries = parse_autoclaim_reply(autoclaimed)
    assert [len(split(stack.stream, entry)) for entry in entries] == [3, 1, 1]


# ----- the acknowledgement: one XACK, after the last part -------------------------------------


async def test_the_entry_is_acknowledged_after_its_last_part_only(stack: Stack) -> None:
    await stack.pack(b"a", b"b", b"c")
    parts = await stack.read()
    client = stack.worker.redis.client
    for index in (2, 2, 0):  # finishing one twice does not count twice
        await parts[index].finish(client)
        assert await stack.pending() == 1
    await parts[1].finish(client)
    assert await stack.pending() == 0
    assert parts[0].entry is not None and parts[0].entry.acknowledged


class FailingXack:
    """A client whose first XACK fails as a lost connection would."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = 0

    async def xack(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise RedisConnectionError("connection lost")
        return await self.client.xack(*args)


async def test_a_failed_acknowledgement_is_sent_again_when_retried(stack: Stack) -> None:
    await stack.pack(b"a", b"b")
    first, last = await stack.read()
    client = FailingXack(stack.worker.redis.client)
    await first.finish(client)
    assert client.calls == 0, "not the last: no XACK"
    with pytest.raises(RedisConnectionError):
        await last.finish(client)
    assert await stack.pending() == 1
    await last.finish(client)  # the handler's retry
    assert await stack.pending() == 0 and client.calls == 2
    await first.finish(client)  # a late duplicate: acknowledged already
    assert client.calls == 2


async def test_a_committed_part_leaves_its_entry_pending_until_the_others_are_done(stack: Stack) -> None:
    entry_id = await stack.pack(receive(1, "one"), b"garbage", receive(3, "three"))
    parts = await stack.read()
    await handle(stack.worker, parts[0], redelivered=False)
    assert (await stack.replies())[1] == [fine("one")]
    assert await stack.pending() == 1, "the commit of a packed part does not acknowledge the entry"
    await handle(stack.worker, parts[1], redelivered=False)
    assert await stack.pending() == 1, "nor does its neighbour's dead letter"
    [letter] = await stack.letters()
    assert letter[b"id"].decode() == entry_id and letter[b"part"] == b"1"
    await handle(stack.worker, parts[2], redelivered=False)
    assert await stack.pending() == 0
    assert (await stack.replies())[3] == [fine("three")]


# ----- redelivered: the suspect, by message name ----------------------------------------------


async def run_recording(stack: Stack, parts: list[Part]) -> list[tuple[str, str | None, bool]]:
    """Runs ``redelivery.run``; returns each message handled, in order: its name, the
    suspect recorded when it started, and whether the delivery limit applied."""
    order: list[tuple[str, str | None, bool]] = []
    key = stack.worker.keys.suspect(stack.stream)

    async def one(part: Part, limit: bool) -> None:
        suspect = await stack.raw.get(key)
        order.append((part.name, suspect.decode() if suspect else None, limit))
        await handle(stack.worker, part, True, limit)

    await asyncio.wait_for(run_redelivered(stack.worker, stack.stream, parts, one), 30)
    return order


async def test_the_neighbours_of_a_packed_suspect_go_one_at_a_time_and_are_not_given_up(stack: Stack) -> None:
    other = await stack.pack(receive(10, "other"))
    entry_id = await stack.pack(receive(11, "first"), receive(12, "poison"), receive(13, "third"))
    parts = await stack.read()
    await stack.hand_out_again(entry_id, LIMIT + 1)  # its handlers kept dying: 5 deliveries
    suspect = f"{entry_id}#1"
    await stack.raw.set(stack.worker.keys.suspect(stack.stream), suspect)

    order = await run_recording(stack, parts)
    assert order[0] == (other, suspect, True), "another entry's message first, concurrently as before"
    assert order[1:] == [
        (f"{entry_id}#0", f"{entry_id}#0", False),  # each neighbour named suspect before it runs,
        (f"{entry_id}#2", f"{entry_id}#2", False),  # the limit not applied
        (suspect, suspect, True),  # the suspect last, alone, given up
    ]
    replies = await stack.replies()
    assert replies[10] == [fine("other")] and replies[11] == [fine("first")] and replies[13] == [fine("third")]
    assert replies[12] == [CLOSED]
    [letter] = await stack.letters()
    assert letter[b"id"].decode() == entry_id and letter[b"part"] == b"1"
    assert letter[b"deliveries"] == str(LIMIT + 2).encode() and b"--max-deliveries 3" in letter[b"error"]
    assert {k for k in letter if k.startswith(b"field:")} == {b"field:m"} and letter[b"field:m"] == receive(12, "poison")
    assert await stack.pending() == 0


async def test_past_the_limit_without_a_suspect_every_part_is_given_up(stack: Stack) -> None:
    entry_id = await stack.pack(receive(21, "a"), receive(22, "b"))
    parts = await stack.read()
    await handle(stack.worker, parts[0], redelivered=False)  # committed, then its worker died
    assert await stack.pending() == 1
    await stack.hand_out_again(entry_id, LIMIT)

    order = await run_recording(stack, parts)
    # Delivered 3 times or more: one at a time, each named suspect, the limit applied.
    assert order == [(f"{entry_id}#0", f"{entry_id}#0", True), (f"{entry_id}#1", f"{entry_id}#1", True)]
    letters = await stack.letters()
    assert sorted(letter[b"part"] for letter in letters) == [b"0", b"1"], "both dead-lettered"
    assert all(letter[b"deliveries"] == str(LIMIT + 1).encode() for letter in letters)
    replies = await stack.replies()
    assert replies[21] == [fine("a"), fine("a")], "committed before: finished as repeated, no 1011"
    assert replies[22] == [CLOSED]
    assert await stack.pending() == 0


# ----- real worker processes ------------------------------------------------------------------


class WorkerProcess:
    """``python -m switchyard runworker test_packed:APPS``, its log kept in a file."""

    def __init__(self, redis_url: str, log: Path, name: str) -> None:
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(HERE), "SWITCHYARD_LOG_LEVEL": "INFO"}
        args = ["runworker", "test_packed:APPS", "--redis-url", redis_url, "--name", name]
        args += ["--channel-shards", "1", "--max-deliveries", str(LIMIT)]
        with open(log, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "switchyard", *args], env=env, stdout=out, stderr=out)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(why())
        await asyncio.sleep(0.1)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


async def xadd_packed(raw: aioredis.Redis, *payloads: bytes) -> str:
    stream = Keys("switchyard").channel_stream(CHANNEL, 0)
    flat = [item for payload in payloads for item in (b"m", payload)]
    return str((await raw.execute_command("XADD", stream, "*", *flat)).decode())


async def pending(raw: aioredis.Redis) -> int:
    stream = Keys("switchyard").channel_stream(CHANNEL, 0)
    try:
        return int((await raw.xpending(stream, "workers"))["pending"])
    except Exception:  # no group yet
        return -1


async def test_a_worker_answers_a_packed_entry_and_dead_letters_its_garbage_alone(
    raw: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    keys = Keys("switchyard")
    entry_id = await xadd_packed(raw, receive(1, "hello"), b"garbage", receive(2, "world"))
    worker = WorkerProcess(redis_url, tmp_path / "worker.log", "py-packed-e2e")
    try:
        log = lambda: worker.log.read_text(errors="replace")  # noqa: E731

        async def settled() -> bool:
            replies = await replies_by_conn(raw, keys)
            return len(replies) == 2 and await raw.xlen(keys.dead_letter()) == 1 and await pending(raw) == 0

        await eventually(settled, 20, lambda: f"the packed entry was not handled within 20 s:\n{log()}")
        replies = await replies_by_conn(raw, keys)
        assert replies == {1: [fine("hello")], 2: [fine("world")]}
        [(_, letter)] = await raw.xrange(keys.dead_letter())
        assert letter[b"id"].decode() == entry_id and letter[b"part"] == b"1"
        assert letter[b"stream"].decode() == keys.channel_stream(CHANNEL, 0)
        assert letter[b"consumer"] == b"py-packed-e2e" and b"msgpack" in letter[b"error"]
        assert {k for k in letter if k.startswith(b"field:")} == {b"field:m"} and letter[b"field:m"] == b"garbage"
        assert f"{entry_id}#1" in log(), "the log names the message"
    finally:
        worker.stop()
    assert worker.process.returncode == 0


async def test_a_message_that_aborts_the_worker_is_given_up_and_its_neighbours_committed(
    raw: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # Restarted under the same --name, as a supervisor does, the worker reads its pending
    # list again: twice all at once (fewer than 3 deliveries), then one at a time naming each
    # suspect (the poison dies named), then the neighbours one at a time past the limit, and
    # the poison given up on its fourth delivery.
    keys = Keys("switchyard")
    entry_id = await xadd_packed(raw, receive(1, "before"), receive(2, "abort"), receive(3, "after"))
    log = tmp_path / "workers.log"
    deaths = 0
    started = time.monotonic()
    try:
        while True:
            assert time.monotonic() - started < 90, f"not settled within 90 s:\n{log.read_text(errors='replace')}"
            worker = WorkerProcess(redis_url, log, "py-packed-poison")
            while worker.process.poll() is None and await raw.xlen(keys.dead_letter()) == 0:
                await asyncio.sleep(0.1)
            if worker.process.poll() is not None:
                deaths += 1
                assert deaths <= LIMIT + 1, f"the poison killed {deaths} workers:\n{log.read_text(errors='replace')}"
                continue
            break
        await eventually(lambda: _acknowledged(raw), 20, lambda: log.read_text(errors="replace"))
    finally:
        worker.stop()
    assert deaths == LIMIT, f"{deaths} deaths:\n{log.read_text(errors='replace')}"
    replies = await replies_by_conn(raw, keys)
    # Answered (maybe more than once: a run that died after the reply step; the interface drops repeats).
    assert replies[1] and all(r == fine("before") for r in replies[1])
    assert replies[3] and all(r == fine("after") for r in replies[3])
    assert replies[2] == [CLOSED]
    [(_, letter)] = await raw.xrange(keys.dead_letter())
    assert letter[b"id"].decode() == entry_id and letter[b"part"] == b"1"
    assert letter[b"deliveries"] == str(LIMIT + 1).encode()
    assert await raw.get(keys.suspect(keys.channel_stream(CHANNEL, 0))) == f"{entry_id}#1".encode()


async def _acknowledged(raw: aioredis.Redis) -> bool:
    return await pending(raw) == 0
