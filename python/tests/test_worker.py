"""The worker's handling of real entries on a real Redis: consumers, sessions, the
commit's guards, ASGI apps with streamed responses, dead letters, group sends,
poison messages (absorbed exceptions, the delivery limit, the suspect handled alone).

Each test puts entries on a channel stream the way an interface does, lets a
real :class:`switchyard.worker.Worker` handle them, and reads what it wrote:
the interface's reply stream, the session hash, the group's pub/sub channel.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from switchyard import AsyncWebsocketConsumer, Client, cli
from switchyard.apps import targets
from switchyard.handler import handle
from switchyard.parts import Part, split
from switchyard.protocol import decode_reply, encode
from switchyard.redelivery import run as run_redelivered
from switchyard.streams import ensure_group, parse_read_reply
from switchyard.worker import Worker, WorkerConfig

IFACE = "if-test"


class Counter(AsyncWebsocketConsumer):
    groups = ["counters"]

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "boom":
            self.scope["session"]["count"] = "999"
            raise RuntimeError("boom")
        count = int(self.scope["session"].get("count", "0")) + 1
        self.scope["session"]["count"] = str(count)
        await self.send(text_data=json.dumps({"count": count}))
        if text_data == "big":
            await self.send(text_data="x" * 4000)
        if text_data == "shout":
            await self.group_send("counters", text_data=json.dumps({"shout": count}), json_seq=True)


async def hello(request: Request) -> Response:
    return JSONResponse({"path": request.url.path, "query": request.url.query, "client": request.client.host if request.client else None})


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def big(request: Request) -> Response:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(20):
            yield bytes([65 + i]) * 10_000

    return StreamingResponse(pieces())


async def fail(request: Request) -> Response:
    raise RuntimeError("the app fails")


APP = Starlette(
    routes=[Route("/hello", hello), Route("/echo", echo, methods=["POST"]), Route("/big", big), Route("/fail", fail)]
)


class Stack:
    """A Worker plus a raw Redis client, and helpers to play the interface."""

    def __init__(self, worker: Worker, raw: aioredis.Redis) -> None:
        self.worker = worker
        self.raw = raw

    async def deliver(self, channel: str, fields: dict[str, Any] | None = None, raw: dict[bytes, bytes] | None = None) -> str:
        """Appends a message as an interface would, reads it as the worker does, handles it."""
        stream = self.worker.keys.channel_stream(channel, 0)
        await self.raw.xadd(stream, raw if raw is not None else {b"m": encode(fields)})
        part = await self.read(stream, ">")
        await handle(self.worker, part, redelivered=False)
        return part.entry_id

    async def read(self, stream: str, position: str) -> Part:
        """Reads one entry of a single message, as the worker does."""
        reply = await self.worker.redis.client.xreadgroup(
            "workers", self.worker.consumer, {stream: position}, count=1
        )
        [(_, [entry])] = parse_read_reply(reply)
        [part] = split(stream, entry)
        return part

    async def replies(self) -> list[dict[str, Any]]:
        entries = await self.raw.xrange(self.worker.keys.reply_stream(IFACE))
        return [decode_reply(fields[b"m"]) for _, fields in entries]


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    raw = aioredis.Redis.from_url(redis_url)
    await raw.flushall()
    config = WorkerConfig(redis_url=redis_url, name="py-test")
    worker = Worker(config, targets({"counter": Counter, "http.app": APP}))
    for channel in ("counter", "http.app"):
        await ensure_group(worker.redis.client, worker.keys.channel_stream(channel, 0))
    worker.committer.start()
    yield Stack(worker, raw)
    await worker.committer.stop()
    await worker.redis.aclose()
    await raw.aclose()


def again(stream: str, entry_id: str, message: dict[str, Any]) -> Part:
    """An entry of one message, as it is handed out again."""
    return Part(stream, entry_id, 0, {b"m": encode(message)})


def ws(kind: str, seq: int, conn: int = 1, query: str = "", **fields: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, "reply": f"{IFACE}!{conn}", "seq": seq, "path": "/ws/c/", "query": query, **fields}


async def test_a_consumer_counts_in_its_session_and_joins_its_groups(stack: Stack) -> None:
    # Two broadcasts before the join: the plain join is committed with that position, so
    # the interface delivers everything sent after it (as the Rust worker does).
    client = Client(stack.worker.config.redis_url)
    await client.agroup_send("counters", "one")
    await client.agroup_send("counters", "two")
    await client.aclose()
    epoch = (await stack.raw.get(stack.worker.keys.group_epoch("counters"))).decode()
    await stack.deliver("counter", ws("websocket.connect", 1, headers=[["host", "x"]], client="10.0.0.1:5"))
    for seq in (2, 3):
        await stack.deliver("counter", ws("websocket.receive", seq, text="hi"))
    replies = await stack.replies()
    assert replies[0]["done"] == 1
    assert replies[0]["actions"] == [
        {"type": "websocket.accept"},
        {"type": "group.add", "group": "counters", "since": 2, "epoch": epoch, "plain": True},
    ]
    assert [r["actions"] for r in replies[1:]] == [
        [{"type": "websocket.send", "text": '{"count": 1}'}],
        [{"type": "websocket.send", "text": '{"count": 2}'}],
    ]
    stored = await stack.raw.hgetall(stack.worker.keys.session(f"{IFACE}!1"))
    # Switchyard's own fields beside the consumer's: the connection's last committed seq
    # and its outcome, and when the key expires; the consumer sees none of them.
    assert {k: v for k, v in stored.items() if not k.startswith(b"~")} == {b"count": b"2"}
    assert stored[f"~s:{IFACE}!1".encode()] == b"3"
    assert stored[f"~o:{IFACE}!1".encode()].startswith(b"\x83")  # msgpack {v, reply, groups}
    assert int(stored[b"~x"]) > 0
    assert await stack.worker.load_session(f"{IFACE}!1") == {"count": "2"}
    assert await stack.raw.xpending("switchyard:chan:{counter:0}", "workers") == {
        "pending": 0, "min": None, "max": None, "consumers": []
    }


async def test_a_message_handled_twice_is_committed_once_with_its_first_outcome(stack: Stack) -> None:
    stream = stack.worker.keys.channel_stream("counter", 0)
    message = ws("websocket.receive", 2, conn=5, query="session_uuid=twice", text="shout")
    channel = stack.worker.keys.group_channel("counters")
    pubsub = stack.raw.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)
    entry_id = await stack.deliver("counter", message)
    # A worker that died before acknowledging: the entry is handed out again.
    await stack.raw.xadd(stream, {b"m": encode(ws("websocket.receive", 3, conn=5, query="session_uuid=other"))})
    await handle(stack.worker, again(stream, entry_id, message), redelivered=True)
    replies = await stack.replies()
    assert len(replies) == 2 and replies[0] == replies[1], "the second run finishes the stored outcome"
    assert await stack.raw.hget(stack.worker.keys.session("twice"), "count") == b"1", "the session was written once"
    published = []
    while (got := await pubsub.get_message(timeout=0.5)) is not None:
        if got["type"] == "message":
            published.append(got["data"])
    assert len(published) == 1, f"one broadcast, not {published}"
    import msgpack

    broadcast = msgpack.unpackb(published[0])
    epoch = broadcast["epoch"]
    assert broadcast["group"] == "counters" and json.loads(broadcast["text"]) == {
        "shout": 1,
        "seq": 1,
        "epoch": epoch,
        "group": "counters",
    }
    await pubsub.aclose()
    handled = stack.worker.metrics.handled
    assert handled[(("channel", "counter"), ("type", "websocket.receive"), ("outcome", "repeated"))] == 1


async def test_an_outcome_over_1_kib_is_kept_in_its_own_key_and_finished_once(stack: Stack) -> None:
    stream = stack.worker.keys.channel_stream("counter", 0)
    message = ws("websocket.receive", 2, conn=6, query="session_uuid=bigone", text="big")
    entry_id = await stack.deliver("counter", message)
    session = stack.worker.keys.session("bigone")
    assert await stack.raw.hget(session, f"~s:{IFACE}!6") == b"2"
    assert await stack.raw.hget(session, f"~o:{IFACE}!6") == b"", "the outcome is not inline"
    stored = await stack.raw.get(stack.worker.keys.outbox("bigone", f"{IFACE}!6"))
    assert stored is not None and stored.startswith(b"2 ")
    assert await stack.raw.pttl(stack.worker.keys.outbox("bigone", f"{IFACE}!6")) > 0
    # Handed out again (a worker died before acknowledging): the stored outcome is finished.
    await handle(stack.worker, again(stream, entry_id, message), redelivered=True)
    replies = await stack.replies()
    assert len(replies) == 2 and replies[0] == replies[1]
    assert replies[0]["actions"][1] == {"type": "websocket.send", "text": "x" * 4000}
    assert await stack.raw.hget(session, "count") == b"1", "the session was written once"


async def test_a_consumer_exception_closes_with_1011_and_writes_nothing(stack: Stack) -> None:
    await stack.deliver("counter", ws("websocket.receive", 2, conn=7, text="boom"))
    [reply] = await stack.replies()
    assert reply["actions"] == [{"type": "websocket.close", "code": 1011, "reason": ""}]
    assert await stack.raw.hgetall(stack.worker.keys.session(f"{IFACE}!7")) == {}


async def test_garbage_is_dead_lettered_and_acknowledged(stack: Stack) -> None:
    entry_id = await stack.deliver("counter", raw={b"m": b"garbage", b"x": b"y"})
    wrong = await stack.deliver("counter", ws("http.disconnect", 1))
    letters = await stack.raw.xrange("switchyard:deadletter")
    by_id = {fields[b"id"].decode(): fields for _, fields in letters}
    assert by_id[entry_id][b"field:m"] == b"garbage" and by_id[entry_id][b"field:x"] == b"y"
    assert b"not a valid msgpack message" in by_id[entry_id][b"error"]
    assert b"serves websocket consumers; got http.disconnect" in by_id[wrong][b"error"]
    assert (await stack.raw.xpending("switchyard:chan:{counter:0}", "workers"))["pending"] == 0
    assert stack.worker.metrics.dead_letters == 2


def http(seq: int, method: str = "GET", path: str = "/hello", body: bytes = b"", more: bool = False, conn: int = 3) -> dict[str, Any]:
    return {
        "v": 1, "type": "http.request", "reply": f"{IFACE}!{conn}", "seq": seq, "path": path, "query": "a=1",
        "method": method, "headers": [["host", "h"]], "client": "10.1.2.3:4000", "body": body, "more_body": more,
    }


async def test_an_asgi_app_answers_with_the_scope_rebuilt(stack: Stack) -> None:
    await stack.deliver("http.app", http(1))
    [reply] = await stack.replies()
    start, body = reply["actions"]
    assert reply["done"] == 1
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert body == {"type": "http.response.body", "body": b'{"path":"/hello","query":"a=1","client":"10.1.2.3"}', "more_body": False}


async def test_a_body_in_chunks_is_assembled_once_even_if_a_chunk_is_handled_twice(stack: Stack) -> None:
    stream = stack.worker.keys.channel_stream("http.app", 0)
    first = http(1, "POST", "/echo", b"a" * 70_000, more=True, conn=4)
    entry_id = await stack.deliver("http.app", first)
    await handle(stack.worker, again(stream, entry_id, first), redelivered=True)  # handled again
    await stack.deliver("http.app", http(2, "POST", "/echo", b"b" * 10, more=True, conn=4))
    await stack.deliver("http.app", http(3, "POST", "/echo", b"c", conn=4))
    replies = await stack.replies()
    # Chunks are answered with `done` alone; the 70 KiB echo comes as an early piece and the final reply.
    assert [r.get("done") for r in replies] == [1, 1, 2, None, 3]
    body = b"".join(a["body"] for r in replies[3:] for a in r["actions"] if a["type"] == "http.response.body")
    assert body == b"a" * 70_000 + b"b" * 10 + b"c"
    assert not await stack.raw.exists(stack.worker.keys.http_body(IFACE, 4)), "the stored body is dropped"


async def test_a_large_response_streams_in_64_kib_pieces(stack: Stack) -> None:
    await stack.deliver("http.app", http(1, path="/big", conn=8))
    replies = await stack.replies()
    assert all("done" not in r for r in replies[:-1]) and replies[-1]["done"] == 1
    actions = [a for r in replies for a in r["actions"]]
    assert actions[0]["type"] == "http.response.start"
    bodies = [a["body"] for a in actions[1:]]
    assert all(len(b) == 65_536 for b in bodies[:-1]) and len(bodies) == 4
    assert b"".join(bodies) == b"".join(bytes([65 + i]) * 10_000 for i in range(20))
    assert [a["more_body"] for a in actions[1:]] == [True, True, True, False]


async def test_a_failing_app_answers_500(stack: Stack) -> None:
    await stack.deliver("http.app", http(1, path="/fail", conn=9))
    [reply] = await stack.replies()
    assert reply["actions"][0]["status"] == 500
    assert reply["actions"][1]["body"] == b"internal server error\n"


async def test_client_group_send_sync_and_async(redis_url: str) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    pubsub = raw.pubsub()
    await pubsub.subscribe("switchyard:group:{news}")
    await pubsub.get_message(timeout=1)
    client = Client(redis_url)
    first = await asyncio.to_thread(client.group_send, "news", b"\x00bin")
    second = await client.agroup_send("news", "text")
    assert second == first + 1
    got = []
    while len(got) < 2 and (message := await pubsub.get_message(timeout=2)) is not None:
        if message["type"] == "message":
            got.append(message["data"])
    import msgpack

    decoded = [msgpack.unpackb(m) for m in got]
    epoch = decoded[0]["epoch"]
    assert epoch and decoded == [
        {"v": 1, "group": "news", "seq": first, "epoch": epoch, "bytes": "\x00bin"},  # cmsgpack writes bytes as str
        {"v": 1, "group": "news", "seq": second, "epoch": epoch, "text": "text"},
    ]
    # Both are kept in the group's history, in order.
    history = await raw.xrange("switchyard:grouphistory:{news}")
    assert [int(fields[b"s"]) for _, fields in history] == [first, second]
    await client.aclose()
    client.close()
    await pubsub.aclose()
    await raw.aclose()


async def test_lifespan_state_reaches_requests_and_django_takes_none(stack: Stack) -> None:
    from contextlib import asynccontextmanager

    from switchyard.asgi import Lifespan

    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"greeting": "from the lifespan"}
        events.append("shutdown")

    async def greet(request: Request) -> Response:
        return JSONResponse({"greeting": request.state.greeting})

    app = Starlette(routes=[Route("/greet", greet)], lifespan=lifespan)
    stack.worker.targets["http.app"] = targets({"http.app": app})["http.app"]
    span = Lifespan(app)
    await span.startup()
    stack.worker.lifespans[id(app)] = span
    await stack.deliver("http.app", http(1, path="/greet", conn=11))
    [reply] = await stack.replies()
    assert reply["actions"][1]["body"] == b'{"greeting":"from the lifespan"}'
    await span.shutdown()
    assert events == ["startup", "shutdown"]

    from django.conf import settings
    from django.core.asgi import get_asgi_application

    if not settings.configured:
        settings.configure()

    django_span = Lifespan(get_asgi_application())
    await django_span.startup()  # Django refuses lifespan events: run without, no error
    assert not django_span.supported
    await django_span.shutdown()

# ----- poison messages (issue 14, items 1 and 2), as in the Rust worker -------------------
# A consumer or ASGI app that raises is answered (1011 / 500), committed and counted in
# ``worker_consumer_failures``; an entry handed out more than ``--max-deliveries`` times (its
# handlers kept dying) is not run again: dead-lettered with its ``deliveries`` and why, its
# connection closed with 1011 (HTTP: 500); entries handed out again beside the one their last
# handler died with are handled first, the suspect alone after them (``redelivery.py``). The
# end-to-end version, with a consumer that really aborts the process, is
# ``tests/tests/python_errors.rs``.


def test_max_deliveries_defaults_to_5_and_refuses_0() -> None:
    assert cli.parser().parse_args(["runworker", "x:APPS"]).max_deliveries == 5
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["runworker", "x:APPS", "--max-deliveries", "0"])


async def test_exceptions_are_counted(stack: Stack) -> None:
    await stack.deliver("counter", ws("websocket.receive", 2, conn=7, text="boom"))
    await stack.deliver("http.app", http(1, path="/fail", conn=9))
    failures = stack.worker.metrics.failures
    assert failures[(("channel", "counter"), ("kind", "error"))] == 1
    assert failures[(("channel", "http.app"), ("kind", "error"))] == 1
    assert 'worker_consumer_failures_total{channel="counter",kind="error"} 1' in stack.worker.metrics.render()
    for stream in ("switchyard:chan:{counter:0}", "switchyard:chan:{http.app:0}"):
        assert (await stack.raw.xpending(stream, "workers"))["pending"] == 0


async def handed_out(stack: Stack, channel: str, message: dict, times: int) -> tuple[str, str]:
    """Appends a message and hands it out `times` times without handling it (each handler died)."""
    stream = stack.worker.keys.channel_stream(channel, 0)
    await stack.raw.xadd(stream, {b"m": encode(message)})
    entry_id = (await stack.read(stream, ">")).entry_id
    for _ in range(times - 1):
        await stack.raw.xclaim(stream, "workers", stack.worker.consumer, 0, [entry_id])
    return stream, entry_id


async def test_an_entry_delivered_too_often_is_dead_lettered_and_its_connection_closed(stack: Stack) -> None:
    message = ws("websocket.receive", 2, conn=11, text="hello")
    stream, entry_id = await handed_out(stack, "counter", message, 6)
    await handle(stack.worker, again(stream, entry_id, message), redelivered=True)
    [reply] = await stack.replies()
    assert reply["done"] == 2
    assert reply["actions"] == [{"type": "websocket.close", "code": 1011, "reason": ""}]
    [(_, letter)] = await stack.raw.xrange("switchyard:deadletter")
    assert letter[b"id"].decode() == entry_id and letter[b"stream"].decode() == stream
    assert letter[b"deliveries"] == b"6"
    assert b"--max-deliveries 5" in letter[b"error"]
    assert letter[b"field:m"] == encode(message)
    assert await stack.raw.hgetall(stack.worker.keys.session(f"{IFACE}!11")) == {}, "the consumer did not run"
    assert (await stack.raw.xpending(stream, "workers"))["pending"] == 0
    assert stack.worker.metrics.dead_letters == 1


async def test_at_the_limit_it_still_runs(stack: Stack) -> None:
    message = ws("websocket.receive", 2, conn=12, text="hello")
    stream, entry_id = await handed_out(stack, "counter", message, 5)
    await handle(stack.worker, again(stream, entry_id, message), redelivered=True)
    [reply] = await stack.replies()
    assert reply["actions"] == [{"type": "websocket.send", "text": '{"count": 1}'}]
    assert await stack.raw.xlen("switchyard:deadletter") == 0


async def test_a_request_delivered_too_often_answers_500(stack: Stack) -> None:
    message = http(1, path="/hello", conn=13)
    stream, entry_id = await handed_out(stack, "http.app", message, 6)
    await handle(stack.worker, again(stream, entry_id, message), redelivered=True)
    [reply] = await stack.replies()
    start, body = reply["actions"]
    assert start["status"] == 500 and body["body"] == b"internal server error\n"
    [(_, letter)] = await stack.raw.xrange("switchyard:deadletter")
    assert letter[b"deliveries"] == b"6"


async def test_the_suspect_is_handled_after_the_others_alone(stack: Stack) -> None:
    stream = stack.worker.keys.channel_stream("counter", 0)
    messages = [ws("websocket.receive", 2, conn=20 + i, text="hello") for i in range(3)]
    ids = []
    for message in messages:
        await stack.raw.xadd(stream, {b"m": encode(message)})
        ids.append((await stack.read(stream, ">")).entry_id)
    # The last worker died handling the first one.
    await stack.raw.set(stack.worker.keys.suspect(stream), ids[0])
    finished: list[str] = []

    async def one(part: Part, limit: bool) -> None:
        await handle(stack.worker, part, True, limit)
        finished.append(part.name)

    parts = [again(stream, entry_id, m) for entry_id, m in zip(ids, messages)]
    await asyncio.wait_for(run_redelivered(stack.worker, stream, parts, one), 30)
    assert sorted(finished[:2]) == sorted(ids[1:]) and finished[2] == ids[0], finished
    replies = await stack.replies()
    assert [r["actions"][0]["type"] for r in replies] == ["websocket.send"] * 3
    assert (await stack.raw.xpending(stream, "workers"))["pending"] == 0
