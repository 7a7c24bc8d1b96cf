"""The Python side of tests/tests/python_protocol.rs: what the package would send to Redis.

Reads a JSON request on stdin — names to spell keys for, and msgpack blobs the
Rust side encoded (hex) — and prints what the Python package makes of them:
the script texts it runs, its key names and slots, its decoding of Rust's
channel messages and outbox, and its own encoding of a reply and an outbox
for Rust to decode. The Rust test compares everything with its own crates.
"""

import dataclasses
import json
import sys

from switchyard import scripts
from switchyard.keys import Keys, slot
from switchyard.protocol import GroupSend, decode_channel_message, decode_outbox, encode_outbox, encode_reply

request = json.load(sys.stdin)
keys = Keys("sy")
spelled = {}
for name in request["names"]:
    for key in [
        keys.session(name),
        keys.outbox(name, "if-2!7"),
        keys.group_channel(name),
        keys.group_seq(name),
        keys.group_sent(name, "if!1"),
        keys.group_members(name),
    ]:
        spelled.setdefault(name, []).append([key, slot(key)])
fixed = [
    keys.channel_stream("chat", 2),
    keys.channel_shards(),
    keys.reply_stream("if-1a2b"),
    keys.connection_seqs("if-1a2b"),
    keys.http_body("if-1a2b", 7),
    keys.dead_letter(),
    keys.worker_alive("w-1"),
    keys.workers_index(),
]


def plain(message):
    value = dataclasses.asdict(message)
    for field in ("bytes", "body"):
        if isinstance(value[field], bytes):
            value[field] = value[field].hex()
    return value


reply, groups = decode_outbox(b"5 " + bytes.fromhex(request["outbox"]))
actions = [
    {"type": "websocket.accept", "subprotocol": "chat.v1"},
    {"type": "websocket.send", "text": "hi"},
    {"type": "websocket.send", "bytes": b"\x00\xff"},
    {"type": "websocket.close", "code": 4000, "reason": "bye"},
    {"type": "group.add", "group": "lobby"},
    {"type": "group.add", "group": "room:2", "since": 3, "epoch": "17", "plain": True},
    {"type": "group.discard", "group": "lobby"},
    {"type": "http.response.start", "status": 201, "headers": [("content-type", "text/plain")]},
    {"type": "http.response.body", "body": b"ok", "more_body": False},
]
own_reply = encode_reply(9, 4, actions)
own_outbox = encode_outbox(
    own_reply, [GroupSend.of("lobby", "t"), GroupSend.of("room:1", b"\x01"), GroupSend.of("g", '{"a":1}', json_object=True)]
)
json.dump(
    {
        "scripts": scripts.ALL,
        "keys": spelled,
        "fixed": fixed,
        "messages": [plain(decode_channel_message(bytes.fromhex(blob))) for blob in request["messages"]],
        "outbox": {"reply": reply.hex() if reply else None, "groups": [[g.group, g.kind, g.data.hex()] for g in groups]},
        "reply": own_reply.hex(),
        "own_outbox": own_outbox.hex(),
    },
    sys.stdout,
)
