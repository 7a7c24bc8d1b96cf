"""Opening Redis the way every Switchyard binary does.

``--redis-url`` takes the same forms as the Rust side (``protocol/src/redis_conn.rs``):
``redis://[user:password@]host:port/db``, ``rediss://…`` for TLS, ``unix://…``,
and a Redis Cluster named by some of its nodes,
``redis+cluster://[user:password@]host:port,host:port`` (``rediss+cluster://`` for
TLS). ``--redis-ca-file``, ``--redis-client-cert`` and ``--redis-client-key``
need a TLS URL; a bad combination is refused before start, naming the flag,
and no error message ever shows the password.

On a cluster a script may touch one hash slot only, so work is grouped by
:meth:`Redis.slot_group` (one group on a single server). ``WAIT`` counts the
writes of the connection it runs on, so a step that must wait for replicas
runs its script and its ``WAIT`` on one pinned connection to the key's master
(:meth:`Redis.pinned`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from .keys import slot

COMMAND_TIMEOUT = 5.0
"""Seconds an ordinary command may take."""
CONNECT_TIMEOUT = 2.0
"""Seconds one connection attempt may take."""
READ_BLOCK_MS = 1000
"""How long a blocking read waits on the server (the socket allows this plus COMMAND_TIMEOUT)."""


class ConfigError(ValueError):
    """A Redis setting that cannot work; the message starts with the flag to fix."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass
class TlsFiles:
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


def redacted(url: str) -> str:
    """The URL with its password hidden, for logs and ``--check``."""
    return re.sub(r"^([a-z+]+://[^:/@]*:)[^@]*@", r"\1***@", url)


def _check_tls(tls: TlsFiles, is_tls: bool, shown: str) -> dict[str, Any]:
    files = [
        ("--redis-ca-file", tls.ca_file),
        ("--redis-client-cert", tls.client_cert),
        ("--redis-client-key", tls.client_key),
    ]
    if not is_tls:
        for flag, path in files:
            if path:
                raise ConfigError(flag, f"needs a rediss:// (TLS) --redis-url, not `{shown}`")
        return {}
    if tls.client_cert and not tls.client_key:
        raise ConfigError("--redis-client-cert", "needs --redis-client-key as well")
    if tls.client_key and not tls.client_cert:
        raise ConfigError("--redis-client-key", "needs --redis-client-cert as well")
    for flag, path in files:
        if path:
            try:
                with open(path, "rb") as file:
                    pem = file.read()
            except OSError as error:
                raise ConfigError(flag, f"cannot read {path}: {error.strerror}") from None
            if b"-----BEGIN" not in pem:
                raise ConfigError(flag, f"{path} holds no PEM data")
    options: dict[str, Any] = {}
    if tls.ca_file:
        options["ssl_ca_certs"] = tls.ca_file
    if tls.client_cert:
        options["ssl_certfile"] = tls.client_cert
        options["ssl_keyfile"] = tls.client_key
    return options


def _common_options() -> dict[str, Any]:
    return {
        "socket_timeout": COMMAND_TIMEOUT + READ_BLOCK_MS / 1000,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "decode_responses": False,
    }


class Redis:
    """The deployment's Redis: one server or a cluster, as ``--redis-url`` names it."""

    def __init__(self, url: str, tls: TlsFiles | None = None, max_connections: int = 1024) -> None:
        tls = tls or TlsFiles()
        shown = redacted(url)
        self.url = url
        self.shown = shown
        self._node_clients: dict[str, aioredis.Redis] = {}
        for scheme in ("redis+cluster://", "rediss+cluster://"):
            if url.startswith(scheme):
                self.is_cluster = True
                self._cluster_setup(url[len(scheme) :], scheme.startswith("rediss"), tls, shown, max_connections)
                return
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                "--redis-url",
                f"`{shown}` must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://",
            )
        self.is_cluster = False
        options = _common_options()
        options.update(_check_tls(tls, url.startswith("rediss://"), shown))
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=COMMAND_TIMEOUT, **options
            )
        except ValueError as error:
            raise ConfigError("--redis-url", f"`{shown}` is not a valid Redis URL: {error}") from None
        self.client: Any = aioredis.Redis(connection_pool=pool)
        self._node_options: dict[str, Any] = {}

    def _cluster_setup(self, rest: str, is_tls: bool, tls: TlsFiles, shown: str, max_connections: int) -> None:
        credentials, at, hosts = rest.rpartition("@")
        if not at:
            credentials, hosts = "", rest
        hosts, _, db = hosts.partition("/")
        if db not in ("", "0"):
            raise ConfigError("--redis-url", f"`{shown}`: a Redis Cluster has only database 0")
        nodes = []
        for host in filter(None, (h.strip() for h in hosts.split(","))):
            parts = urlsplit(f"//{host}")
            try:
                port = parts.port or 6379
            except ValueError:
                raise ConfigError("--redis-url", f"`{shown}` is not a valid Redis URL: bad port") from None
            if not parts.hostname:
                raise ConfigError("--redis-url", f"`{shown}` is not a valid Redis URL: no host")
            nodes.append(ClusterNode(parts.hostname, port))
        if not nodes:
            raise ConfigError("--redis-url", f"`{shown}` names no cluster node (redis+cluster://host:port,host:port)")
        options = _common_options()
        options.update(_check_tls(tls, is_tls, shown))
        if is_tls:
            options["ssl"] = True
        if credentials:
            user, colon, password = credentials.partition(":")
            if user:
                options["username"] = unquote(user)
            if colon:
                options["password"] = unquote(password)
        self._node_options = options
        self.client = RedisCluster(startup_nodes=nodes, max_connections=max_connections, **options)

    def slot_group(self, key: str) -> int:
        """What work on ``key`` may be grouped by: its slot on a cluster, one group on one server."""
        return slot(key) if self.is_cluster else 0

    @contextlib.asynccontextmanager
    async def pinned(self, key: str) -> AsyncIterator[Any]:
        """One connection to the master of ``key``, for a write and its ``WAIT``."""
        if not self.is_cluster:
            single = self.client.client()
            try:
                yield single
            finally:
                await single.aclose()
            return
        await self.client.initialize()
        node = self.client.get_node_from_key(key)
        client = self._node_clients.get(node.name)
        if client is None:
            client = aioredis.Redis(host=node.host, port=node.port, **self._node_options)
            self._node_clients[node.name] = client
        single = client.client()
        try:
            yield single
        finally:
            await single.aclose()

    async def primaries(self) -> int:
        """How many masters serve data (1 on a single server)."""
        if not self.is_cluster:
            return 1
        await self.client.initialize()
        return len(self.client.get_primaries())

    async def check_at_start(self) -> str | None:
        """Tries Redis: ``None`` when it answers, the reason when it is merely away (the
        worker retries in the background); refused credentials or certificates raise
        :class:`ConfigError` — retrying cannot fix them. Three quick tries: with TLS 1.3 a
        server refuses a missing client certificate after the handshake, so the first
        failure may only say that the connection closed."""
        reason = "no answer to PING"
        for _ in range(3):
            try:
                await asyncio.wait_for(self.client.ping(), CONNECT_TIMEOUT * 2)
                return None
            except asyncio.TimeoutError:
                return reason
            except (AuthenticationError, NoPermissionError) as error:
                raise ConfigError("--redis-url (REDIS_URL)", f"Redis refused the user or password: {error}") from None
            except (RedisError, OSError) as error:
                if _is_tls_failure(error):
                    raise ConfigError(
                        "--redis-url / --redis-ca-file / --redis-client-cert", f"TLS with Redis failed: {error}"
                    ) from None
                reason = str(error) or type(error).__name__
            await asyncio.sleep(0.1)
        return reason

    async def aclose(self) -> None:
        for client in self._node_clients.values():
            await client.aclose()
        await self.client.aclose()


def _is_tls_failure(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError) or "SSL" in str(cause) or "certificate" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def env_tls() -> TlsFiles:
    return TlsFiles(
        ca_file=os.environ.get("REDIS_CA_FILE") or None,
        client_cert=os.environ.get("REDIS_CLIENT_CERT") or None,
        client_key=os.environ.get("REDIS_CLIENT_KEY") or None,
    )
