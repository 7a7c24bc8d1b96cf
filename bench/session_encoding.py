#!/usr/bin/env python3
"""What a session's read and write cost Redis as a hash table and as a listpack.

Why it exists: a session hash holds a chat connection's outcome inline (about 90 bytes),
over Redis's default `hash-max-listpack-value` of 64, so Redis keeps it as a hash table.
Raising the setting to 1024 keeps it a listpack. This measures whether that is cheaper for
Switchyard's pattern, away from the noise of the whole stack: 1,000 session-like hashes
(`count`, `~x`, `~o:<address>` of 90 bytes, `~s:<address>`), each round one pipelined
write of 64 `HGETALL`s and 64 `HSET`s (the seq, the outcome, the count: what a commit
writes), Redis's own CPU (`INFO cpu`, user + sys) divided by the messages. The two
settings alternate on a fresh private redis-server each. Result and reading:
docs/benchmarks.md ("Tried and dropped: sessions kept as listpacks").

Usage: .venv/bin/python bench/session_encoding.py [ROUNDS]   (default 3; redis-server on PATH;
the venv of scripts/test, for the `switchyard` package the floor's reader comes with)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from redis_floor import Conn, resp  # the floor's RESP writer and reader (same folder)

SESSIONS = 1_000
BATCH = 64
BATCHES = 1_500
OUTCOME = b"\x83" + b"o" * 89


def cpu_seconds(con: Conn) -> float:
    """Redis's own CPU so far (`INFO cpu`: user + sys)."""
    info = con.call([resp("INFO", "cpu")])[0]
    assert isinstance(info, bytes)
    fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(listpack_value: int) -> tuple[str, float]:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--hash-max-listpack-value", str(listpack_value)],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                con = Conn(port)
                break
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit("redis-server did not start")
        for n in range(SESSIONS):
            address = f"if-1!{n}"
            con.call([resp("HSET", f"s:{{{address}}}", "count", 1, "~x", "1796767187378",
                           f"~o:{address}", OUTCOME, f"~s:{address}", 1)])
        before = cpu_seconds(con)
        for batch in range(BATCHES):
            addresses = [f"if-1!{(batch * BATCH + i) % SESSIONS}" for i in range(BATCH)]
            reads = [resp("HGETALL", f"s:{{{a}}}") for a in addresses]
            writes = [resp("HSET", f"s:{{{a}}}", f"~s:{a}", batch, f"~o:{a}", OUTCOME, "count", batch)
                      for a in addresses]
            con.call(reads + writes)
        used = cpu_seconds(con) - before
        encoding = con.call([resp("OBJECT", "ENCODING", "s:{if-1!1}")])[0]
        assert isinstance(encoding, bytes)
        return encoding.decode(), used / (BATCHES * BATCH) * 1e6
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print("hash-max-listpack-value  encoding   Redis CPU µs per message (HGETALL + HSET)")
    for _ in range(rounds):
        for value in (64, 1024):
            encoding, micros = run(value)
            print(f"{value:>23}  {encoding:<9}  {micros:.2f}")


if __name__ == "__main__":
    main()
