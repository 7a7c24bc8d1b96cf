"""Prometheus metrics of a Python worker, served on ``--metrics-bind``.

The same series as the Rust worker (``worker/src/metrics.rs``), so one
dashboard and one set of alerts cover both kinds of worker: messages handled
per channel, event type and outcome; handling time per channel; consumer
failures absorbed; messages in flight; claims from dead workers; dead letters;
Redis errors. Rendered in the
OpenMetrics text format by hand (a few dozen lines, no extra dependency).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

log = logging.getLogger("switchyard.metrics")

BUCKETS = [0.0001 * 2**i for i in range(18)]
"""Handling-time buckets, seconds: 100 µs doubling 18 times (as the Rust worker)."""


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    inner = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class Metrics:
    def __init__(self) -> None:
        self.handled: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.handling: dict[str, list[float]] = {}
        self.handling_sum: dict[str, float] = defaultdict(float)
        self.failures: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.in_flight = 0
        self.claimed = 0
        self.dead_letters = 0
        self.redis_errors = 0

    def record(self, channel: str, event: str, outcome: str, seconds: float) -> None:
        self.handled[(("channel", channel), ("type", event), ("outcome", outcome))] += 1
        counts = self.handling.setdefault(channel, [0.0] * (len(BUCKETS) + 1))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        counts[-1] += 1
        self.handling_sum[channel] += seconds

    def consumer_failed(self, channel: str, kind: str) -> None:
        """One absorbed consumer failure (``kind``: ``error`` — a Python exception — as the
        Rust worker counts a returned error; ``panic`` does not occur here)."""
        self.failures[(("channel", channel), ("kind", kind))] += 1

    def render(self) -> str:
        lines = [
            "# HELP switchyard_worker_messages_handled Messages handled, by channel, event type and commit outcome.",
            "# TYPE switchyard_worker_messages_handled counter",
        ]
        for labels, value in sorted(self.handled.items()):
            lines.append(f"switchyard_worker_messages_handled_total{_labels(labels)} {value}")
        lines += [
            "# HELP switchyard_worker_message_handling_seconds Time from reading a message to its commit, by channel.",
            "# TYPE switchyard_worker_message_handling_seconds histogram",
        ]
        for channel, counts in sorted(self.handling.items()):
            base = (("channel", channel),)
            lines.append(f"switchyard_worker_message_handling_seconds_sum{_labels(base)} {self.handling_sum[channel]}")
            lines.append(f"switchyard_worker_message_handling_seconds_count{_labels(base)} {int(counts[-1])}")
            for bound, count in zip(BUCKETS, counts):
                lines.append(f"switchyard_worker_message_handling_seconds_bucket{_labels(base + (('le', repr(bound)),))} {int(count)}")
            lines.append(f"switchyard_worker_message_handling_seconds_bucket{_labels(base + (('le', '+Inf'),))} {int(counts[-1])}")
        lines += [
            "# HELP switchyard_worker_consumer_failures Consumer panics and errors absorbed (answered 1011 / 500 and committed), by channel and kind (panic, error).",
            "# TYPE switchyard_worker_consumer_failures counter",
        ]
        for labels, value in sorted(self.failures.items()):
            lines.append(f"switchyard_worker_consumer_failures_total{_labels(labels)} {value}")
        for name, kind, help_text, value in [
            ("switchyard_worker_messages_in_flight", "gauge", "Messages being handled now.", self.in_flight),
            ("switchyard_worker_claimed_messages", "counter", "Messages taken over from dead or stuck workers.", self.claimed),
            (
                "switchyard_worker_dead_letters",
                "counter",
                "Entries moved to the dead-letter stream (undecodable, or delivered more than --max-deliveries times).",
                self.dead_letters,
            ),
            ("switchyard_worker_redis_errors", "counter", "Redis errors while handling (each one retried).", self.redis_errors),
        ]:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{'_total' if kind == 'counter' else ''} {value}")
        lines.append("# EOF")
        return "\n".join(lines) + "\n"


async def serve(host: str, port: int, metrics: Metrics) -> asyncio.AbstractServer:
    """Serves ``/metrics`` and ``/healthz``; fails at start-up if it cannot bind."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = request.split(b" ", 2)
            path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
            if path == "/metrics":
                status, kind, body = "200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.render()
            elif path == "/healthz":
                status, kind, body = "200 OK", "application/json", '{"status":"ok"}'
            else:
                status, kind, body = "404 Not Found", "text/plain; charset=utf-8", "not found\n"
            data = body.encode("utf-8")
            head = f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {len(data)}\r\nconnection: close\r\n\r\n"
            writer.write(head.encode("latin-1") + data)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as error:
            log.debug("metrics request failed: %s", error)
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)
