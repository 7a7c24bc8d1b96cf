"""HTTP channels: any ASGI application, one request at a time.

The Python side of ``worker/src/http_handler.rs``. A request's body arrives
in chunks of up to 64 KiB that different workers may handle, so the body
received so far lives in Redis (``P:httpbody:{IFACE}:CONN``): each chunk with
``more_body`` is appended in its own commit, guarded so a chunk handled twice
is appended once. The worker that takes the last chunk reads the stored body
back, calls the application with the whole body (one ``http.request`` event),
and streams its response back in pieces of up to 64 KiB: all but the last as
early replies, each sent only if the entry is still pending to this worker
(``stream_owner.lua``), the last one in the commit with ``done``.

Errors: an application that raises (or returns without a response) before
any piece left answers 500; once pieces have left, the final reply lacks the
end of the body and the interface cuts the client's connection — a response
under way cannot be taken back (docs/protocol.md, "HTTP requests").
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, MutableMapping

from .commit import BodyOp, Commit, Outcome
from .handler import RETRYABLE, base_scope
from .parts import Part
from .protocol import PIECE, Action, ChannelMessage, encode_reply, parse_reply_address

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("switchyard.worker")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class NotOwned(Exception):
    """Raised into the application when another worker took the request over."""


class _Response:
    """Collects an ASGI response, sending full 64 KiB pieces as early replies."""

    def __init__(self, worker: Worker, part: Part, interface: str, conn: int) -> None:
        self.worker = worker
        self.part = part
        self.interface = interface
        self.conn = conn
        self.actions: list[Action] = []
        self.pending = bytearray()
        self.started = False
        self.streamed = False
        self.complete = False
        self.not_owned = False
        self.finished = asyncio.Event()

    async def send(self, event: Message) -> None:
        if self.not_owned:
            raise NotOwned("this request was taken over by another worker")
        kind = event.get("type")
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            headers = [
                (_header_text(name).lower(), _header_text(value)) for name, value in event.get("headers", [])
            ]
            self.actions.append({"type": "http.response.start", "status": int(event["status"]), "headers": headers})
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.complete:
                return
            self.pending += event.get("body", b"")
            while len(self.pending) > PIECE:
                piece = bytes(self.pending[:PIECE])
                del self.pending[:PIECE]
                self.actions.append({"type": "http.response.body", "body": piece, "more_body": True})
                early = encode_reply(self.conn, None, self.actions)
                self.actions = []
                owned = await self.worker.committer.stream_reply(
                    self.part.stream, self.part.entry_id, self.interface, early
                )
                if not owned:
                    self.not_owned = True
                    self.finished.set()
                    raise NotOwned("this request was taken over by another worker")
                self.streamed = True
            if not event.get("more_body", False):
                self.complete = True
                self.finished.set()
        # Other events (http.response.trailers, extensions) are not part of the protocol: ignored.

    def final_actions(self) -> list[Action]:
        if self.complete or not self.streamed:
            self.actions.append({"type": "http.response.body", "body": bytes(self.pending), "more_body": False})
        return self.actions

    def fail(self) -> None:
        """The application failed: 500 if nothing left yet, else an incomplete end."""
        if not self.streamed:
            self.actions = [
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [("content-type", "text/plain; charset=utf-8")],
                }
            ]
            self.pending = bytearray(b"internal server error\n")
            self.complete = True
        else:
            self.complete = False


def _header_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


async def attempt_http(worker: Worker, part: Part, channel: str, app: ASGIApp, message: ChannelMessage) -> Outcome:
    """Handles one HTTP event; anything but the last chunk is a commit of its own."""
    interface, conn = parse_reply_address(message.reply) or ("", 0)

    def commit(reply: bytes | None, forget: bool, body: BodyOp, chunk: bytes = b"") -> Commit:
        return Commit(part, interface, conn, message.seq, reply, forget, body, chunk)

    if message.type == "http.disconnect":
        return await worker.committer.commit(commit(None, True, BodyOp.DELETE))
    if message.more_body:
        done = encode_reply(conn, message.seq, [])
        return await worker.committer.commit(commit(done, False, BodyOp.APPEND, message.body))
    body = message.body
    if message.seq > 1:
        earlier = await worker.redis.client.get(worker.keys.http_body(interface, conn))
        body = (earlier or b"") + body
    response = _Response(worker, part, interface, conn)
    scope = base_scope("http", channel, message)
    scope["method"] = message.method.upper()
    lifespan = worker.lifespans.get(id(app))
    scope["state"] = dict(lifespan.state) if lifespan is not None else {}
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The whole body came at once; what is left to tell is that the response is over.
        await response.finished.wait()
        return {"type": "http.disconnect"}

    try:
        await app(scope, receive, response.send)
        if not response.started:
            raise RuntimeError("the application returned without sending a response")
    except NotOwned:
        return Outcome.NOT_OWNED
    except RETRYABLE:
        if response.streamed:
            # Pieces already left: answering again would mix two responses. Let the
            # commit below end this one incomplete instead of retrying the request.
            log.exception("Redis error in the application after its response started streaming")
            response.fail()
        else:
            raise
    except Exception:
        worker.metrics.consumer_failed(channel, "error")
        log.exception(
            "HTTP application failed; answering 500 unless the response already started streaming "
            "(channel=%s conn=%s entry=%s path=%s)",
            scope["channel"],
            message.reply,
            part.name,
            message.path,
        )
        response.fail()
    finally:
        response.finished.set()
    if response.not_owned:
        return Outcome.NOT_OWNED
    last = encode_reply(conn, message.seq, response.final_actions())
    body_op = BodyOp.DELETE if message.seq > 1 else BodyOp.KEEP
    return await worker.committer.commit(commit(last, True, body_op))


class Lifespan:
    """The ASGI lifespan protocol for one application: startup before the worker reads,
    shutdown after it drained. An application that does not take lifespan events
    (Django raises on them) is simply run without."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = False
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Runs the startup; raises RuntimeError if the application reports it failed."""
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        self._events.put_nowait({"type": "lifespan.startup"})
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        started = asyncio.ensure_future(self._started.wait())
        await asyncio.wait([started, self._task], return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._failure is not None:
            raise RuntimeError(f"the ASGI application's startup failed: {self._failure}")

    async def _run(self, scope: Scope) -> None:
        async def receive() -> Message:
            return await self._events.get()

        async def send(message: Message) -> None:
            kind = message.get("type")
            if kind == "lifespan.startup.complete":
                self.supported = True
                self._started.set()
            elif kind == "lifespan.startup.failed":
                self._failure = str(message.get("message", ""))
                self._started.set()
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                if kind == "lifespan.shutdown.failed":
                    log.error("ASGI application shutdown failed: %s", message.get("message", ""))
                self._stopped.set()

        try:
            await self.app(scope, receive, send)
        except Exception:
            if self._started.is_set():
                log.exception("ASGI application failed in its lifespan")
            else:
                log.info("the ASGI application takes no lifespan events; running it without")
        finally:
            self._started.set()
            self._stopped.set()

    async def shutdown(self, timeout: float = 10.0) -> None:
        if self._task is None:
            return
        if self.supported and not self._task.done():
            self._events.put_nowait({"type": "lifespan.shutdown"})
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("the ASGI application's shutdown took longer than %s s", timeout)
        if not self._task.done():
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
