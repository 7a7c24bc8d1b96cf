"""What Redis itself charges for one message's route, with no Switchyard process in the way.

Why: issue 15 asks for at most 7 µs of Redis CPU per chat message. Whether that is within
reach depends on what the commands a message needs cost Redis, however lean the client that
sends them. This driver plays the interface and the worker with pre-built RESP over plain
sockets (one write per batch, as the real processes pipeline), runs one message's route in
batches of B messages, and reads Redis's own CPU counters (``INFO cpu``, getrusage inside
Redis) before and after: Redis CPU µs per message, for routes that add one need at a time.

  streams   the broker hop and nothing else: the interface's XADD to the channel shard,
            the worker's XREADGROUP, one reply entry per batch (XADD, an ``m`` per reply)
            with its PEXPIRE, the XACK, the interface's XREAD of its reply stream.
  +read     the session read as well: an HGETALL per message (the chat counter's state).
  +write    the session written as well, without a guard: an HSET per message.
  switchyard  what the Rust worker sends on a single Redis: streams + HGETALL, and the
            commit as one EVALSHA of commit_session.lua + commit_fused.lua (the guarded
            session write, the reply entry, the PEXPIRE and the XACK in one call).
  watch     the same guarantee without Lua: WATCH on the sessions sent with their
            HGETALLs, then MULTI, the HSETs, the reply XADD, PEXPIRE, XACK, EXEC (no
            extra round trip over switchyard's).
  packed    the watch route with the batch's client messages packed into one stream entry
            (an ``m`` per message) instead of an entry each: one XADD, one entry read and
            one id acknowledged per batch. Not what Switchyard does today: it measures what
            a protocol with several client messages per entry would save Redis.
  packed-blob  packed, and each session one string (the whole session encoded) instead
            of a hash: one MGET reads the batch's sessions, a SET … KEEPTTL per message
            writes them. Not today's protocol either: what one read for all sessions would
            save on top of packing.
  lua-args, lua-1call, lua-2calls   where switchyard's script time goes: scripts given the
            very same keys and arguments that do nothing (lua-args), only the HSET per
            message with the reply XADD, PEXPIRE and XACK (lua-1call), and the HMGET guard
            read too, with no other logic (lua-2calls).

The entries, sessions and replies have the sizes the chat counter's have (an inbound entry
of ~110 bytes, an outcome of ~90, a reply of ~75); 1,000 connections take turns, each with
its own session keyed by its reply address, as in ``scripts/bench``. Scenarios alternate
in rounds so that every one sees the same machine.

usage: python3 bench/redis_floor.py PORT BATCHES ROUNDS B [B ...]  → one JSON object on stdout
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from switchyard.keys import Keys  # noqa: E402  (the repository's own key names)
from switchyard.scripts import read  # noqa: E402  (the repository's own Lua files)

CONNECTIONS = 1000
GROUP = "workers"
INTERFACE = "if-0123456789ab"
SESSION_TTL_MS = 86_400_000
CLOSING_TTL_MS = 3_600_000
REPLY_TTL_MS = 600_000
INBOUND = b"\x87" + b"i" * 109  # an inbound entry's `m` (msgpack of a websocket.receive)
OUTCOME = b"\x83" + b"o" * 89  # a message's outcome (reply and group sends)
REPLY = b"\x84" + b"r" * 74  # a reply (`websocket.send` with its `done`)
SESSION_BLOB = b"\x85" + b"s" * 159  # a whole chat-counter session as one string
SCENARIOS = ("streams", "+read", "+write", "switchyard", "watch", "packed", "packed-blob", "lua-args", "lua-1call", "lua-2calls")

# The probes of where switchyard's script time goes: same KEYS and ARGV as commit_fused.
_PROBE_TAIL = """
local base = 2 * count
local entry, ack = {KEYS[base + 1], '*'}, {KEYS[base + 2], ARGV[i + 1]}
i = i + 4
for m = 1, count do
  entry[#entry + 1] = 'm'; entry[#entry + 1] = ARGV[i + 1]; ack[#ack + 1] = ARGV[i + 3]; i = i + 4
end
redis.call('XADD', unpack(entry)); redis.call('PEXPIRE', KEYS[base + 1], ARGV[i - 4 * count - 4])
redis.call('XACK', unpack(ack))
return 1"""
PROBES = {
    "lua-args": "return 1",
    "lua-1call": """
local count, i = tonumber(ARGV[#ARGV]), 4
for m = 1, count do
  local reply = ARGV[i + 1]
  redis.call('HSET', KEYS[2*m - 1], '~s:' .. reply, ARGV[i], '~o:' .. reply, ARGV[i + 2], ARGV[i + 5], ARGV[i + 6])
  i = i + 8
end""" + _PROBE_TAIL,
    "lua-2calls": """
local count, i = tonumber(ARGV[#ARGV]), 4
for m = 1, count do
  local reply = ARGV[i + 1]
  redis.call('HMGET', KEYS[2*m - 1], '~s:' .. reply, '~x', '~c')
  redis.call('HSET', KEYS[2*m - 1], '~s:' .. reply, ARGV[i], '~o:' .. reply, ARGV[i + 2], ARGV[i + 5], ARGV[i + 6])
  i = i + 8
end""" + _PROBE_TAIL,
}


def fused_script() -> str:
    """commit_session.lua with its last line replaced by commit_fused.lua, as the Rust
    worker composes it (protocol/src/scripts.rs)."""
    session = read("commit_session.lua").rstrip("\n").split("\n")
    if not session[-1].startswith("return (commit_sessions"):
        raise SystemExit("commit_session.lua no longer ends with its call line")
    return "\n".join(session[:-1]) + "\n" + read("commit_fused.lua")


def resp(*args: object) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Conn:
    """One Redis connection: send a batch of commands in one write, read every reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.pos = 0

    def call(self, commands: list[bytes]) -> list[object]:
        self.sock.sendall(b"".join(commands))
        return [self.value() for _ in commands]

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = self.buf[self.pos : end]
                self.pos = end + 2
                return line
            self._more()

    def _more(self) -> None:
        self.buf = self.buf[self.pos :] + self.sock.recv(1 << 20)
        self.pos = 0

    def value(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise SystemExit(f"Redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buf) - self.pos < size + 2:
                self._more()
            data = self.buf[self.pos : self.pos + size]
            self.pos += size + 2
            return data
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.value() for _ in range(size)]
        raise SystemExit(f"unexpected RESP type {kind!r}")


class Route:
    """One message's route, run a batch at a time."""

    def __init__(self, port: int, keys: Keys, scenario: str, batch: int, sha: str) -> None:
        # `sha`: the script the commit calls (switchyard's, or a probe's).
        self.interface = Conn(port)
        self.worker = Conn(port)
        self.keys, self.scenario, self.batch, self.sha = keys, scenario, batch, sha
        self.shard = keys.channel_stream("chat", 0)
        self.reply_stream = keys.reply_stream(INTERFACE)
        self.worker.call([resp("XGROUP", "CREATE", self.shard, GROUP, "$", "MKSTREAM")])
        self.last_reply = "0"
        self.next_conn = 0
        self.seqs = [0] * CONNECTIONS

    def run_batch(self) -> None:
        b = self.batch
        # The interface appends its clients' messages (pipelined: one write).
        if self.scenario.startswith("packed"):
            self.interface.call([resp("XADD", self.shard, "*", *["m", INBOUND] * b)])
        else:
            self.interface.call([resp("XADD", self.shard, "*", "m", INBOUND) for _ in range(b)])
        # The worker reads them.
        [[_, entries]] = self.worker.call(
            [resp("XREADGROUP", "GROUP", GROUP, "w1", "COUNT", b, "STREAMS", self.shard, ">")]
        )[0]
        ids = [entry[0] for entry in entries]
        messages = []
        for _ in range(sum(len(entry[1]) // 2 for entry in entries)):
            conn = self.next_conn
            self.next_conn = (conn + 1) % CONNECTIONS
            self.seqs[conn] += 1
            address = f"{INTERFACE}!{conn}"
            messages.append((address, self.keys.session(address), self.seqs[conn]))
        reads = [resp("HGETALL", session) for _, session, _ in messages]
        if self.scenario == "packed-blob":
            reads = [resp("MGET", *[session for _, session, _ in messages])]
        if self.scenario in ("watch", "packed", "packed-blob"):
            reads.insert(0, resp("WATCH", *[session for _, session, _ in messages]))
        if self.scenario != "streams":
            self.worker.call(reads)
        self.worker.call(self.commit(messages, ids))
        # The interface reads its reply stream.
        reply = self.interface.call([resp("XREAD", "COUNT", 10_000, "STREAMS", self.reply_stream, self.last_reply)])[0]
        if reply:
            self.last_reply = reply[0][1][-1][0].decode()

    def commit(self, messages: list[tuple[str, str, int]], ids: list[bytes]) -> list[bytes]:
        if self.scenario == "switchyard" or self.scenario.startswith("lua-"):
            return [self.fused(messages, ids)]
        reply_fields: list[object] = []
        for _ in messages:
            reply_fields += ["m", REPLY]
        tail = [
            resp("XADD", self.reply_stream, "*", *reply_fields),
            resp("PEXPIRE", self.reply_stream, REPLY_TTL_MS),
            resp("XACK", self.shard, GROUP, *ids),
        ]
        if self.scenario in ("streams", "+read"):
            return tail
        writes = [
            resp("HSET", session, f"~s:{address}", seq, f"~o:{address}", OUTCOME, "count", seq)
            for address, session, seq in messages
        ]
        if self.scenario == "+write":
            return writes + tail
        if self.scenario == "packed-blob":
            writes = [resp("SET", session, SESSION_BLOB, "KEEPTTL") for _, session, _ in messages]
        return [resp("MULTI"), *writes, *tail, resp("EXEC")]  # watch, packed, packed-blob

    def fused(self, messages: list[tuple[str, str, int]], ids: list[bytes]) -> bytes:
        keys: list[object] = []
        argv: list[object] = [SESSION_TTL_MS, CLOSING_TTL_MS, int(time.time() * 1000)]
        for address, session, seq in messages:
            keys += [session, self.keys.outbox(address, address)]
            argv += [seq, address, OUTCOME, "o", 1, "count", seq, 0]
        keys += [self.reply_stream, self.shard]
        argv += [REPLY_TTL_MS, GROUP, 1, 1]
        for entry_id in ids:
            argv += [1, REPLY, 1, entry_id]
        argv.append(len(messages))
        return resp("EVALSHA", self.sha, len(keys), *keys, *argv)


def redis_cpu(conn: Conn) -> float:
    info = conn.call([resp("INFO", "cpu")])[0].decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def commands(conn: Conn) -> tuple[int, int]:
    """Commands run since the last CONFIG RESETSTAT, and the µs spent inside them."""
    info = conn.call([resp("INFO", "commandstats")])[0].decode()
    calls = usec = 0
    for line in info.splitlines():
        if line.startswith("cmdstat_") and not line.startswith(("cmdstat_info", "cmdstat_config")):
            fields = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].split(","))
            calls += int(fields["calls"])
            usec += int(fields["usec"])
    return calls, usec


def measure(port: int, keys: Keys, shas: dict[str, str], scenario: str, batch: int, batches: int) -> dict[str, float]:
    admin = Conn(port)
    admin.call([resp("FLUSHALL")])
    route = Route(port, keys, scenario, batch, shas.get(scenario, shas["switchyard"]))
    for _ in range(max(1, batches // 10)):  # warm-up: every session exists
        route.run_batch()
    admin.call([resp("CONFIG", "RESETSTAT")])
    before, started = redis_cpu(admin), time.monotonic()
    for _ in range(batches):
        route.run_batch()
    cpu, elapsed = redis_cpu(admin) - before, time.monotonic() - started
    calls, usec = commands(admin)
    messages = batches * batch
    return {
        "redis_us_per_msg": cpu * 1e6 / messages,
        "in_commands_us_per_msg": usec / messages,
        "commands_per_msg": calls / messages,
        "msgs_per_s": messages / elapsed,
    }


def main() -> None:
    port, batches, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sizes = [int(b) for b in sys.argv[4:]] or [20]
    keys = Keys("switchyard")
    admin = Conn(port)
    scripts = {"switchyard": fused_script(), **PROBES}
    shas = {name: admin.call([resp("SCRIPT", "LOAD", text)])[0].decode() for name, text in scripts.items()}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for _ in range(rounds):
        for batch in sizes:
            for scenario in SCENARIOS:
                row = measure(port, keys, shas, scenario, batch, max(1, batches * 20 // batch))
                runs.setdefault(str(batch), {}).setdefault(scenario, []).append(row)
    summary = {
        batch: {
            scenario: {
                "redis_us_per_msg": [round(r["redis_us_per_msg"], 2) for r in rows],
                # Many short runs, alternating: the median shrugs off the bursts of other
                # work on a shared machine.
                "median_us": round(statistics.median(r["redis_us_per_msg"] for r in rows), 2),
                "in_commands_us": round(statistics.median(r["in_commands_us_per_msg"] for r in rows), 2),
                "commands_per_msg": round(statistics.median(r["commands_per_msg"] for r in rows), 2),
                "msgs_per_s": round(statistics.median(r["msgs_per_s"] for r in rows)),
            }
            for scenario, rows in by_scenario.items()
        }
        for batch, by_scenario in runs.items()
    }
    print(json.dumps({"batches_of_20": batches, "rounds": rounds, "runs": summary}))


if __name__ == "__main__":
    main()
