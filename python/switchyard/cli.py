"""``python -m switchyard runworker``: the Python worker's command line.

The flags are ``switchyard-worker``'s (``worker/src/config.rs``), with the same
environment variables, so one deployment's settings serve both kinds of
worker. Bad values are refused before start with exit code 2 and a message
that starts with the flag to fix; ``--check`` prints the effective
configuration (the Redis password hidden) and the channels served, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

from . import __version__, client
from .apps import AppsError, check_globs, load, select
from .protocol import GroupHistory
from .redis_conn import ConfigError, Redis, TlsFiles, redacted
from .worker import Worker, WorkerConfig


def _env(name: str, default: Any = None) -> Any:
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _int_in(flag: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: `{text}` is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{flag}: {value} is out of range {low}..={high}")
        return value

    return parse


def _bind(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"--metrics-bind: `{text}` must be HOST:PORT, e.g. 127.0.0.1:9100")
    return host.strip("[]"), int(port)


def _globs(values: list[str] | None, env: str) -> list[str]:
    raw = values if values else ([_env(env)] if _env(env) else [])
    return [p.strip() for value in raw for p in value.split(",") if p.strip()]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m switchyard", description="Switchyard's Python worker.")
    top.add_argument("--version", action="version", version=f"switchyard {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "runworker",
        help="serve channels with Python consumers and ASGI apps",
        description=(
            "Runs the consumers and ASGI apps of APPS (module:ATTRIBUTE, a dict channel → "
            "AsyncWebsocketConsumer subclass or ASGI app), reading their channels from Redis streams. "
            "Stop it with SIGTERM: it finishes what it holds and exits 0, and no client socket notices. "
            "Every flag also reads the environment variable named in its help."
        ),
    )
    add = run.add_argument
    add("apps", nargs="?", default=_env("SWITCHYARD_APPS"), metavar="module:APPS", help="what to serve (SWITCHYARD_APPS)")
    add("--redis-url", default=_env("REDIS_URL", "redis://127.0.0.1:6379/"),
        help="redis://[user:password@]host:port/db, rediss://…, redis+cluster://host:port,host:port (REDIS_URL)")
    add("--redis-ca-file", default=_env("REDIS_CA_FILE"), metavar="PATH", help="CA of the Redis server's certificate (REDIS_CA_FILE)")
    add("--redis-client-cert", default=_env("REDIS_CLIENT_CERT"), metavar="PATH", help="client certificate for mutual TLS (REDIS_CLIENT_CERT)")
    add("--redis-client-key", default=_env("REDIS_CLIENT_KEY"), metavar="PATH", help="its private key (REDIS_CLIENT_KEY)")
    add("--redis-wait-replicas", type=_int_in("--redis-wait-replicas", 0, 100), metavar="N",
        default=_env("SWITCHYARD_REDIS_WAIT_REPLICAS", "0"),
        help="replicas each commit step waits for (WAIT); 0: don't (SWITCHYARD_REDIS_WAIT_REPLICAS)")
    add("--prefix", default=_env("SWITCHYARD_PREFIX", "switchyard"), help="prefix of every Redis key (SWITCHYARD_PREFIX)")
    add("--only-channels", action="append", metavar="GLOB", help="serve only matching channels; repeatable (SWITCHYARD_ONLY_CHANNELS)")
    add("--exclude-channels", action="append", metavar="GLOB", help="do not serve matching channels (SWITCHYARD_EXCLUDE_CHANNELS)")
    add("--concurrency", type=_int_in("--concurrency", 1, 100_000), default=_env("SWITCHYARD_CONCURRENCY", "512"),
        help="messages handled at once (SWITCHYARD_CONCURRENCY)")
    add("--channel-shards", type=_int_in("--channel-shards", 0, 1024), default=_env("SWITCHYARD_CHANNEL_SHARDS", "0"),
        help="shards read per channel at least; 0: one per cluster primary (SWITCHYARD_CHANNEL_SHARDS)")
    add("--claim-idle", type=_int_in("--claim-idle", 1, 10**9), default=_env("SWITCHYARD_CLAIM_IDLE", "60"),
        help="seconds before a live owner's message is taken over (SWITCHYARD_CLAIM_IDLE)")
    add("--max-deliveries", type=_int_in("--max-deliveries", 1, 1000), default=_env("SWITCHYARD_MAX_DELIVERIES", "5"),
        help="deliveries an entry may have before it is dead-lettered and its connection closed with 1011 "
        "(HTTP: 500): each one's handler died or stalled without a commit; exceptions do not count "
        "(SWITCHYARD_MAX_DELIVERIES)")
    add("--session-ttl", type=_int_in("--session-ttl", 1, 10**9), default=_env("SWITCHYARD_SESSION_TTL", "86400"),
        help="seconds a session lives after its last use (SWITCHYARD_SESSION_TTL)")
    add("--reply-ttl", type=_int_in("--reply-ttl", 5, 10**9), default=_env("SWITCHYARD_REPLY_TTL", "60"),
        help="seconds a reply stream outlives its interface (SWITCHYARD_REPLY_TTL)")
    add("--drain-timeout", type=_int_in("--drain-timeout", 0, 10**6), default=_env("SWITCHYARD_DRAIN_TIMEOUT", "20"),
        help="seconds a graceful stop waits for messages in hand (SWITCHYARD_DRAIN_TIMEOUT)")
    add("--group-history", type=_int_in("--group-history", 0, 1_000_000), metavar="N",
        default=_env("SWITCHYARD_GROUP_HISTORY", "100"),
        help="broadcasts kept per group for members and interfaces that reconnect; 0: none (SWITCHYARD_GROUP_HISTORY)")
    add("--group-history-ttl", type=_int_in("--group-history-ttl", 0, 30 * 86_400), metavar="SECONDS",
        default=_env("SWITCHYARD_GROUP_HISTORY_TTL", "300"),
        help="seconds a broadcast stays in its group's history; 0: no age limit (SWITCHYARD_GROUP_HISTORY_TTL)")
    add("--name", default=_env("SWITCHYARD_WORKER_NAME"), help="consumer name in the group (SWITCHYARD_WORKER_NAME)")
    add("--metrics-bind", type=_bind, default=_env("SWITCHYARD_METRICS_BIND"), metavar="HOST:PORT",
        help="serve Prometheus /metrics here (SWITCHYARD_METRICS_BIND)")
    add("--log-format", choices=["pretty", "json"], default=_env("SWITCHYARD_LOG_FORMAT", "pretty"),
        help="log format (SWITCHYARD_LOG_FORMAT)")
    add("--check", action="store_true", help="print the effective configuration and the channels served, then exit")
    return top


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    level = os.environ.get("SWITCHYARD_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, handlers=[handler], force=True)


def fail(message: str) -> int:
    print(f"switchyard: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if not args.apps:
        return fail("APPS: name what to serve, `module:ATTRIBUTE` (or set SWITCHYARD_APPS)")
    only = _globs(args.only_channels, "SWITCHYARD_ONLY_CHANNELS")
    exclude = _globs(args.exclude_channels, "SWITCHYARD_EXCLUDE_CHANNELS")
    if not args.prefix or any(c.isspace() for c in args.prefix):
        return fail("--prefix: must be non-empty without spaces")
    if args.name is not None and (not args.name or any(c.isspace() for c in args.name)):
        return fail(f"--name: `{args.name}` may not be empty or contain spaces")
    config = WorkerConfig(
        redis_url=args.redis_url,
        tls=TlsFiles(args.redis_ca_file, args.redis_client_cert, args.redis_client_key),
        wait_replicas=args.redis_wait_replicas,
        prefix=args.prefix,
        only_channels=only,
        exclude_channels=exclude,
        concurrency=args.concurrency,
        channel_shards=args.channel_shards,
        claim_idle=args.claim_idle,
        max_deliveries=args.max_deliveries,
        session_ttl=args.session_ttl,
        reply_ttl=args.reply_ttl,
        drain_timeout=args.drain_timeout,
        history=GroupHistory(length=args.group_history, ttl_ms=args.group_history_ttl * 1000),
        name=args.name,
        metrics_bind=args.metrics_bind,
    )
    try:
        check_globs("--only-channels", only)
        check_globs("--exclude-channels", exclude)
        Redis(config.redis_url, config.tls)  # checks the URL and TLS files; connects lazily
        client.worker_settings = (config.redis_url, config.prefix, config.tls)
        client.worker_history = config.history
        apps = load(args.apps)
    except (ConfigError, AppsError) as error:
        return fail(str(error))
    served = select(apps, only, exclude)
    if args.check:
        shown = asdict(config)
        shown["redis_url"] = redacted(config.redis_url)
        shown["apps"] = args.apps
        print(json.dumps(shown, indent=2, default=str))
        print(f"channels served: {sorted(served)}")
        return 0
    if not served:
        return fail(
            f"--only-channels/--exclude-channels leave no channel to serve (available: {', '.join(sorted(apps))})"
        )
    setup_logging(args.log_format)
    try:
        import uvloop  # optional: `pip install switchyard[fast]`

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(Worker(config, served).run())
    except ConfigError as error:
        return fail(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
