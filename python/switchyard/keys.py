"""Redis key names, as ``protocol/src/keys.rs`` spells them.

Every key starts with the deployment's prefix and carries a hash tag (``{…}``)
wherever one atomic step touches more than one key: on a Redis Cluster a
script may only touch keys of one hash slot. A group or session name that
cannot serve as a tag as it is (empty, starting with ``~``, holding a brace)
is written ``{~HASH}NAME`` (HASH: 16 hex digits of the name's 64-bit FNV-1a),
so every key of the name still lands in one slot. A Python worker that spelled
one key differently would not see the Rust workers' sessions or markers, so
``tests/tests/python_protocol.rs`` compares both sides on awkward names.
"""

from __future__ import annotations

from redis.crc import key_slot

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x00000100000001B3


def fnv1a(data: bytes) -> int:
    value = FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return value


def is_plain(name: str) -> bool:
    """Whether a name can sit between braces as a hash tag as it is."""
    return bool(name) and not name.startswith("~") and "{" not in name and "}" not in name


def tag(name: str) -> str:
    """The text inside a key's braces (followed by the name for odd names)."""
    if is_plain(name):
        return name
    return f"~{fnv1a(name.encode('utf-8')):016x}}}{name}"


def slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of a key (CRC16 of its hash tag, mod 16384)."""
    return int(key_slot(key.encode("utf-8") if isinstance(key, str) else key))


class Keys:
    """Builds every Redis key and pub/sub channel name a worker uses."""

    def __init__(self, prefix: str = "switchyard") -> None:
        self.prefix = prefix

    def channel_stream(self, channel: str, shard: int) -> str:
        return f"{self.prefix}:chan:{{{channel}:{shard}}}"

    def channel_streams(self, channel: str, shards: int) -> list[str]:
        return [self.channel_stream(channel, s) for s in range(max(shards, 1))]

    def suspect(self, stream: str) -> str:
        """The message of a shard stream handled alone after a crash (its name), in the stream's slot:
        ``P:suspect:{CHANNEL:N}`` (``redelivery.py``)."""
        head = f"{self.prefix}:chan:"
        tagged = stream[len(head):] if stream.startswith(head) else stream
        return f"{self.prefix}:suspect:{tagged}"

    def channel_of_stream(self, stream: str) -> tuple[str, int] | None:
        head = f"{self.prefix}:chan:{{"
        if not stream.startswith(head) or not stream.endswith("}"):
            return None
        channel, colon, shard = stream[len(head) : -1].rpartition(":")
        if not colon or not shard.isdigit():
            return None
        return channel, int(shard)

    def channel_shards(self) -> str:
        return f"{self.prefix}:channelshards"

    def reply_stream(self, interface: str) -> str:
        return f"{self.prefix}:reply:{{{interface}}}"

    def connection_seqs(self, interface: str) -> str:
        return f"{self.prefix}:connseq:{{{interface}}}"

    def http_body(self, interface: str, conn: int) -> str:
        return f"{self.prefix}:httpbody:{{{interface}}}:{conn}"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:session:{{{tag(session_id)}}}"

    def outbox(self, session_id: str, reply: str) -> str:
        return f"{self.prefix}:outbox:{{{tag(session_id)}}}:{reply}"

    def group_channel(self, group: str) -> str:
        return f"{self.prefix}:group:{{{tag(group)}}}"

    def group_members(self, group: str) -> str:
        return f"{self.prefix}:groupmembers:{{{tag(group)}}}"

    def group_seq(self, group: str) -> str:
        return f"{self.prefix}:groupseq:{{{tag(group)}}}"

    def group_epoch(self, group: str) -> str:
        return f"{self.prefix}:groupepoch:{{{tag(group)}}}"

    def group_history(self, group: str) -> str:
        return f"{self.prefix}:grouphistory:{{{tag(group)}}}"

    def group_send_keys(self, group: str) -> list[str]:
        """KEYS of a group send, in the order ``group_send.lua`` takes them."""
        return [self.group_seq(group), self.group_channel(group), self.group_epoch(group), self.group_history(group)]

    def group_sent(self, group: str, reply: str) -> str:
        return f"{self.prefix}:groupsent:{{{tag(group)}}}:{reply}"

    def dead_letter(self) -> str:
        return f"{self.prefix}:deadletter"

    def worker_alive(self, consumer: str) -> str:
        return f"{self.prefix}:worker:{consumer}"

    def workers_index(self) -> str:
        return f"{self.prefix}:workers"
