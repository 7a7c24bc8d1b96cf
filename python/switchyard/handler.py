"""Handling one message (a part of a stream entry): decode, run the consumer, commit.

The Python side of ``worker/src/handler.rs``. Garbage (no ``m`` field, not
msgpack, another protocol version, a malformed reply address, an event of the
wrong kind for the channel) goes to the dead-letter stream with a log line
naming the message; the worker carries on. A Redis error while handling or
committing is retried with backoff — the consumer runs again from scratch,
which is safe because every commit step is guarded. A consumer exception is
absorbed as the Rust worker absorbs a panic or an error
(``worker/src/runtime/absorb.rs``): logged with its traceback, channel,
connection and message name, counted (``worker_consumer_failures{channel,
kind="error"}``), and answered through the normal commit — WebSocket: close
1011, HTTP: 500 — so the connection's next message goes on.

A message of a packed entry is handled as any other; only its end differs:
its commit does not acknowledge the entry, so once it is finished (committed,
found committed before, dead-lettered, given up) it is marked so, and the last
one acknowledges the entry (``parts.py``).

The delivery limit (``--max-deliveries``, default 5, as ``dispatch.rs``): a
message handed out before has its entry's delivery count read first. Past the
limit every earlier handling died or stalled without a commit (a consumer that
kills the process, which no ``except`` absorbs), so it is not run again: it is
dead-lettered with its count (field ``deliveries``) and its connection gets
the same 1011 / 500 through the normal commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from redis.exceptions import RedisError

from .commit import BodyOp, Commit, CommitError, Outcome, SessionWrite, dead_letter_record
from .consumer import INTERNAL_ERROR, AsyncWebsocketConsumer
from .parts import Part
from .protocol import WORKER_GROUP, ChannelMessage, DecodeError, decode_channel_message, encode_reply, parse_reply_address
from .scripts import GROUP_HISTORY, Script
from .session import Session, session_id

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("switchyard.worker")

_GROUP_HISTORY = Script(GROUP_HISTORY)
"""Reads where a group stands, for plain joins."""

RETRYABLE = (RedisError, CommitError, OSError)
"""Errors that say Redis could not be reached or refused a step: the message is handled again."""


class Backoff:
    """50 ms doubling up to 2 s, as the Rust worker waits between retries."""

    def __init__(self) -> None:
        self.next = 0.05

    async def wait(self) -> None:
        await asyncio.sleep(self.next)
        self.next = min(self.next * 2, 2.0)

    def reset(self) -> None:
        self.next = 0.05


def client_address(client: str) -> tuple[str, int] | None:
    """``ip:port`` (``[v6]:port`` too) → an ASGI ``client`` pair."""
    host, colon, port = client.rpartition(":")
    if not colon or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def base_scope(kind: str, channel: str, message: ChannelMessage) -> dict[str, Any]:
    """What both kinds of consumer see of a connection, in ASGI's spelling."""
    return {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "ws" if kind == "websocket" else "http",
        "path": unquote(message.path),
        "raw_path": message.path.encode("utf-8"),
        "query_string": message.query.encode("utf-8"),
        "root_path": "",
        "headers": [(name.encode("utf-8"), value.encode("utf-8")) for name, value in message.headers],
        "client": client_address(message.client),
        "server": None,
        "channel": channel,
        "reply": message.reply,
    }


async def handle(worker: Worker, part: Part, redelivered: bool, after_death: bool | None = None) -> None:
    """Handles one message. ``redelivered``: it was handed out before, so part of it may be committed.
    ``after_death`` (default: ``redelivered``): a handler may have died on it, so ``--max-deliveries``
    applies; not for a running worker's re-read after a lost read (Redis raises the count on
    every re-read, no handler died), nor for the neighbours of a packed suspect (``redelivery.py``)."""
    if after_death is None:
        after_death = redelivered
    stream = part.stream
    served = worker.channel_of(stream)
    if served is None:
        log.error("message %s from a stream this worker does not serve: %s", part.name, stream)
        return
    channel, target = served
    raw = part.payload
    if raw is None:
        return await reject(worker, part, "entry has no `m` payload field")
    try:
        message = decode_channel_message(raw)
    except DecodeError as error:
        return await reject(worker, part, str(error))
    if parse_reply_address(message.reply) is None:
        return await reject(worker, part, "malformed reply address")
    if message.is_http != target.is_http:
        mistake = f"channel `{channel}` serves {target.kind} consumers; got {message.type}"
        return await reject(worker, part, mistake)
    started = time.monotonic()
    worker.metrics.in_flight += 1
    try:
        deliveries = await delivery_count(worker, stream, part.entry_id) if after_death else None
        if deliveries is not None and deliveries > worker.config.max_deliveries:
            outcome = await give_up(worker, part, target, message, deliveries)
        else:
            outcome = await run(worker, part, channel, target, message, redelivered)
        if part.packed and outcome != Outcome.NOT_OWNED.value:
            await finish(worker, part)
    finally:
        worker.metrics.in_flight -= 1
    worker.metrics.record(channel, message.type, outcome, time.monotonic() - started)


async def finish(worker: Worker, part: Part) -> None:
    """Marks a message finished outside its commit (``Part.finish``), retrying until Redis answers."""
    backoff = Backoff()
    while True:
        try:
            await part.finish(worker.redis.client)
            return
        except RETRYABLE as error:
            worker.metrics.redis_errors += 1
            log.warning("cannot acknowledge the entry of %s on %s; retrying: %s", part.name, part.stream, error)
            await backoff.wait()


async def run(
    worker: Worker, part: Part, channel: str, target: Any, message: ChannelMessage, redelivered: bool
) -> str:
    """Runs the consumer and commits, retrying Redis errors; names the outcome."""
    from .asgi import attempt_http  # the HTTP side imports this module

    backoff = Backoff()
    again = redelivered
    context = f"channel={channel} conn={message.reply} seq={message.seq} event={message.type}"
    while True:
        try:
            if target.is_http:
                outcome = await attempt_http(worker, part, channel, target.app, message)
            else:
                outcome = await attempt_websocket(worker, part, channel, target.app, message, again)
        except RETRYABLE as error:
            worker.metrics.redis_errors += 1
            log.warning("Redis error while handling %s (%s); retrying: %s", part.name, context, error)
            again = True
            await backoff.wait()
            continue
        if outcome is Outcome.REPEATED:
            log.info("message %s (%s) committed before; finished with its stored outcome", part.name, context)
        elif outcome is Outcome.NOT_OWNED:
            log.info(
                "message %s (%s) no longer pending to this worker (claimed by another); streamed response stopped",
                part.name,
                context,
            )
        return outcome.value


async def attempt_websocket(
    worker: Worker,
    part: Part,
    channel: str,
    consumer_class: type[AsyncWebsocketConsumer],
    message: ChannelMessage,
    again: bool,
) -> Outcome:
    scope = base_scope("websocket", channel, message)
    scope["subprotocols"] = list(message.subprotocols)
    sid = session_id(message.query, message.reply)
    session: Session | None = None
    if consumer_class.use_session:
        values = await worker.load_session(sid)
        session = Session(sid, values)
        scope["session"] = session
    consumer = consumer_class(scope)
    try:
        if message.type == "websocket.connect":
            await consumer.connect()
        elif message.type == "websocket.receive":
            if message.text is None and message.bytes is None:
                await consumer.receive(text_data="")
            else:
                await consumer.receive(text_data=message.text, bytes_data=message.bytes)
        elif message.type == "websocket.disconnect":
            await consumer.disconnect(message.code)
        elif message.type == "websocket.drain":
            await consumer.drain()
    except RedisError:
        raise
    except Exception:
        worker.metrics.consumer_failed(channel, "error")
        log.exception(
            "consumer failed; closing the connection with 1011 (channel=%s conn=%s entry=%s seq=%s event=%s)",
            channel,
            message.reply,
            part.name,
            message.seq,
            message.type,
        )
        consumer.reset()
        session = None
        await consumer.close(INTERNAL_ERROR)
    disconnect = message.type == "websocket.disconnect"
    write: SessionWrite | None = None
    if session is not None and session.used:
        sets, deletes = session.changes()
        write = SessionWrite(sid, sets, deletes)
    elif again or disconnect:
        # A message handled again checks the outbox even if this run did not use
        # the session; a disconnect shortens the outbox's life.
        write = SessionWrite(sid)
    if not disconnect:
        await place_plain_joins(worker, consumer.actions)
    commit = websocket_commit(part, message, consumer.actions, write)
    commit.group_sends = consumer.group_sends
    return await worker.committer.commit(commit)


async def place_plain_joins(worker: Worker, actions: list[Any]) -> None:
    """Gives each plain ``group.add`` the group's position now, before the commit: the
    interface then delivers every broadcast sent after it, including those published
    before it has subscribed to the group (docs/protocol.md, "Group history and
    recovery"; as the Rust worker's ``place_plain_joins``)."""
    for action in actions:
        if action.get("type") != "group.add" or "since" in action:
            continue
        group = action["group"]
        keys = [worker.keys.group_seq(group), worker.keys.group_epoch(group), worker.keys.group_history(group)]
        answer = await _GROUP_HISTORY(worker.redis.client, keys, ["", 0, "0"])
        epoch = answer[1]
        action["since"] = int(answer[2])
        action["epoch"] = epoch.decode("utf-8") if isinstance(epoch, bytes) else str(epoch)
        action["plain"] = True


def websocket_commit(part: Part, message: ChannelMessage, actions: list[Any], session: SessionWrite | None) -> Commit:
    """What the commit of a WebSocket event carries (a disconnect has no reply: the
    connection is gone, and its outbox is forgotten)."""
    interface, conn = parse_reply_address(message.reply) or ("", 0)
    disconnect = message.type == "websocket.disconnect"
    return Commit(
        part=part,
        interface=interface,
        conn=conn,
        seq=message.seq,
        reply=None if disconnect else encode_reply(conn, message.seq, actions),
        forget=disconnect,
        session=session,
    )


async def delivery_count(worker: Worker, stream: str, entry_id: str) -> int | None:
    """How often the entry was handed out (``XPENDING``; shared by the messages of a packed
    entry), asking until Redis answers; ``None`` when it is no longer pending (another worker
    finished it meanwhile)."""
    backoff = Backoff()
    while True:
        try:
            rows = await worker.redis.client.xpending_range(stream, WORKER_GROUP, entry_id, entry_id, 1)
        except RETRYABLE as error:
            worker.metrics.redis_errors += 1
            log.warning("cannot read the delivery count of %s; retrying: %s", entry_id, error)
            await backoff.wait()
            continue
        return int(rows[0]["times_delivered"]) if rows else None


async def give_up(worker: Worker, part: Part, target: Any, message: ChannelMessage, deliveries: int) -> str:
    """Gives up a message delivered too often: dead-letters it with its count, then commits
    1011 (HTTP: 500) for its connection without running the consumer. Two steps in
    different slots: a worker that dies between them leaves the entry pending, and the
    next one dead-letters it again."""
    limit = worker.config.max_deliveries
    error = (
        f"delivered {deliveries} times, more than --max-deliveries {limit}: every handling ended "
        "without a commit (the worker died or stalled)"
    )
    worker.metrics.dead_letters += 1
    log.error(
        "poison message %s on %s (delivered %d times): moved to the dead-letter stream; closing its connection",
        part.name,
        part.stream,
        deliveries,
    )
    if target.is_http:
        interface, conn = parse_reply_address(message.reply) or ("", 0)
        answer = None
        if message.type == "http.request":
            answer = encode_reply(conn, message.seq, INTERNAL_ERROR_RESPONSE)
        commit = Commit(part, interface, conn, message.seq, answer, True, BodyOp.DELETE)
    else:
        close: list[Any] = [{"type": "websocket.close", "code": INTERNAL_ERROR, "reason": ""}]
        # Handled before: the outbox decides if an earlier run was committed after all.
        outbox_check = SessionWrite(session_id(message.query, message.reply))
        commit = websocket_commit(part, message, close, outbox_check)
    backoff = Backoff()
    recorded = False
    while True:
        try:
            if not recorded:
                extra = {"deliveries": str(deliveries)}
                await dead_letter_record(worker.redis, worker.keys, part, worker.consumer, error, extra)
                recorded = True
            await worker.committer.commit(commit)
            return "dead_lettered"
        except RETRYABLE as redis_error:
            worker.metrics.redis_errors += 1
            log.warning("Redis error while giving up %s; retrying: %s", part.name, redis_error)
            await backoff.wait()


INTERNAL_ERROR_RESPONSE = [
    {"type": "http.response.start", "status": 500, "headers": [("content-type", "text/plain; charset=utf-8")]},
    {"type": "http.response.body", "body": b"internal server error\n", "more_body": False},
]
"""What a request given up after too many deliveries is answered (as ``asgi.py`` answers a failed app)."""


async def reject(worker: Worker, part: Part, error: str) -> None:
    """Dead-letters a message, then finishes it (``Part.finish``: an entry with a single
    message is acknowledged), retrying until Redis takes both. Two steps in different
    slots: a worker that dies between them leaves the entry pending, and the next one
    dead-letters the message again — twice at worst, never lost."""
    worker.metrics.dead_letters += 1
    log.error("undecodable message %s on %s moved to the dead-letter stream: %s", part.name, part.stream, error)
    backoff = Backoff()
    recorded = False
    while True:
        try:
            if not recorded:
                await dead_letter_record(worker.redis, worker.keys, part, worker.consumer, error)
                recorded = True
            await part.finish(worker.redis.client)
            return
        except RETRYABLE as redis_error:
            log.warning("dead-lettering %s failed; retrying: %s", part.name, redis_error)
            await backoff.wait()
