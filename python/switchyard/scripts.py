"""The Lua steps of the protocol, the same files the Rust worker runs.

The scripts live once, in ``protocol/lua/`` of the Switchyard repository; the
package build copies them into ``switchyard/lua/`` (``python/setup.py``). Run
from a source checkout without a build, they are read from the repository
itself. The texts sent to Redis are composed exactly as
``protocol/src/scripts.rs`` composes them, so both kinds of worker run the same
script (the same SHA1): ``tests/tests/python_protocol.rs`` checks that.

Each script touches one hash slot, so it runs on a Redis Cluster as on one
Redis. :class:`Script` runs one by its SHA1 and sends the text only when the
node has not seen it yet (``NOSCRIPT``), on whatever node the keys live.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from redis.exceptions import NoScriptError

NAMES = (
    "announce_shards.lua",
    "commit_fused.lua",
    "commit_groups.lua",
    "commit_reply.lua",
    "commit_session.lua",
    "forget_interface.lua",
    "group_history.lua",
    "group_send.lua",
    "replace_groups.lua",
    "stream_owner.lua",
    "sweep_members.lua",
)
"""Every file of ``protocol/lua/``. The three presence scripts (``sweep_members``,
``forget_interface``, ``replace_groups``) are run by the Rust interfaces and
workers (``protocol/src/sweep.rs``); the Python worker ships them but needs none.
Nor does it run ``commit_fused`` (the Rust worker's one-call commit on a single
Redis): it commits in the slot-local steps, which give the same result."""


def lua_dir() -> Path:
    """Where the Lua files are read from: the package, else the repository checkout."""
    packaged = Path(str(resources.files("switchyard"))) / "lua"
    if (packaged / "commit_session.lua").is_file():
        return packaged
    checkout = Path(__file__).resolve().parent.parent.parent / "protocol" / "lua"
    if (checkout / "commit_session.lua").is_file():
        return checkout
    raise RuntimeError(
        "switchyard: the protocol's Lua scripts are missing from the package; "
        "install it from the repository with `pip install ./python`"
    )


def read(name: str) -> str:
    return (lua_dir() / name).read_text(encoding="utf-8")


GROUP_SEND_FUNCTION = read("group_send.lua")

GROUP_SEND = (
    f"{GROUP_SEND_FUNCTION}\nreturn group_send(KEYS[1], KEYS[2], KEYS[3], KEYS[4], "
    "ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])"
)
"""A standalone group send. KEYS: group counter, channel, epoch, history.
ARGV: publish command, group, kind, data, history length, history TTL ms."""

COMMIT_SESSION = read("commit_session.lua")
"""Commit step 1: a message's session writes, once, with its outbox."""

COMMIT_GROUPS = f"{GROUP_SEND_FUNCTION}\n{read('commit_groups.lua')}"
"""Commit step 2: a message's group sends, once."""

COMMIT_REPLY = read("commit_reply.lua")
"""Commit step 3: replies, and the HTTP request body kept between chunks."""

STREAM_OWNER = read("stream_owner.lua")
"""Before each early piece of a streamed response: is the entry still ours?"""

ANNOUNCE_SHARDS = read("announce_shards.lua")
"""Records a channel's shard count (the largest announced wins)."""

GROUP_HISTORY = read("group_history.lua")
"""Where a group's numbering stands (and its broadcasts after a position)."""

ALL = {
    "group_send": GROUP_SEND,
    "commit_session": COMMIT_SESSION,
    "commit_groups": COMMIT_GROUPS,
    "commit_reply": COMMIT_REPLY,
    "stream_owner": STREAM_OWNER,
    "announce_shards": ANNOUNCE_SHARDS,
    "group_history": GROUP_HISTORY,
}
"""Every script text a worker sends, by name (compared with Rust's in the tests)."""


class Script:
    """A Lua script run by SHA1, loaded on the node that lacks it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()

    async def __call__(self, redis: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL runs it and caches it on that node for the next EVALSHA.
            return await redis.eval(self.text, len(keys), *keys, *args)
