"""Redis CPU per group send, history off against on, measured by Redis itself.

Why: a group send with history does more in its one script (GET epoch, XADD with MAXLEN,
XTRIM MINID, PEXPIRE) than one without; this measures how much more, on one redis-server,
alternating the two modes in rounds so that both see the same machine. It runs the exact
script the workers run (``switchyard.scripts.GROUP_SEND``, ``protocol/lua/group_send.lua``)
through EVALSHA and reads ``INFO commandstats`` (``usec_per_call`` of evalsha) after each block.

usage: python bench/history_cost.py PORT SENDS ROUNDS  → one JSON object on stdout
"""

from __future__ import annotations

import json
import statistics
import sys

import redis

from switchyard.keys import Keys
from switchyard.scripts import GROUP_SEND

GROUPS = 100
BATCH = 200


def block(r: redis.Redis, sha: str, keys: Keys, sends: int, history: int, tag: str) -> dict[str, float]:
    r.config_resetstat()
    before = r.info("memory")["used_memory"]
    pipe = r.pipeline(transaction=False)
    for i in range(sends):
        group = f"{tag}-{i % GROUPS}"
        text = json.dumps({"room": group, "text": "x" * 64})
        pipe.evalsha(sha, 4, *keys.group_send_keys(group), "PUBLISH", group, "j", text, history, 300_000)
        if len(pipe) >= BATCH:
            pipe.execute()
    pipe.execute()
    stats = r.info("commandstats")["cmdstat_evalsha"]
    after = r.info("memory")["used_memory"]
    return {"usec_per_send": stats["usec_per_call"], "calls": stats["calls"], "memory_bytes": after - before}


def main() -> None:
    port, sends, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    r = redis.Redis(port=port)
    sha = r.script_load(GROUP_SEND)
    keys = Keys("bench")
    # Three subscribers, as three interfaces would be, on every group channel: the publish
    # costs what it costs in a deployment.
    subscribers = []
    for _ in range(3):
        p = r.pubsub()
        p.subscribe(*[keys.group_channel(f"{mode}-{i}") for mode in ("off", "on") for i in range(GROUPS)])
        subscribers.append(p)
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    block(r, sha, keys, sends // 10, 100, "warm")
    for _ in range(rounds):
        for mode, history in (("off", 0), ("on", 100)):
            results[mode].append(block(r, sha, keys, sends, history, mode))
            for p in subscribers:
                while p.get_message(timeout=0):
                    pass
    summary = {
        mode: {
            "usec_per_send": statistics.median(b["usec_per_send"] for b in blocks),
            "rounds": [b["usec_per_send"] for b in blocks],
        }
        for mode, blocks in results.items()
    }
    summary["history_bytes_per_group"] = round(
        r.memory_usage(keys.group_history("on-0")) or 0
    )
    summary["groups"] = GROUPS
    summary["sends_per_block"] = sends
    summary["ratio"] = round(summary["on"]["usec_per_send"] / summary["off"]["usec_per_send"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
