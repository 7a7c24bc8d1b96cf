"""Decoding refuses what a Rust worker refuses; encoding writes what Rust reads."""

import msgpack
import pytest

from switchyard.keys import Keys, slot, tag
from switchyard.protocol import (
    DecodeError,
    GroupSend,
    decode_channel_message,
    decode_outbox,
    decode_reply,
    encode,
    encode_outbox,
    encode_reply,
    parse_reply_address,
)
from switchyard.session import Session, session_id


def message(**fields: object) -> bytes:
    base = {"v": 1, "type": "websocket.receive", "reply": "if-1!7", "seq": 2, "path": "/ws/chat/", "text": "hi"}
    base.update(fields)
    return encode({k: v for k, v in base.items() if v is not None})


def test_decodes_every_event() -> None:
    assert decode_channel_message(message()).text == "hi"
    binary = decode_channel_message(message(text=None, bytes=b"\x00\xff"))
    assert binary.bytes == b"\x00\xff" and binary.text is None
    # Redis' cmsgpack writes binary data as a str holding arbitrary bytes.
    as_str = msgpack.packb({"v": 1, "type": "websocket.receive", "reply": "i!1", "seq": 1, "path": "/", "bytes": "\xff"})
    assert decode_channel_message(as_str).bytes == "\xff".encode()
    connect = decode_channel_message(
        message(type="websocket.connect", text=None, headers=[["host", "x"]], client="1.2.3.4:5", subprotocols=["a"])
    )
    assert connect.headers == [("host", "x")] and connect.client == "1.2.3.4:5" and connect.subprotocols == ["a"]
    assert decode_channel_message(message(type="websocket.disconnect", code=1006)).code == 1006
    request = decode_channel_message(message(type="http.request", method="POST", body=b"abc", more_body=True))
    assert request.is_http and request.body == b"abc" and request.more_body
    assert decode_channel_message(message(type="http.disconnect")).is_http


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"garbage", "not a valid msgpack message"),
        (bytes([0x81, 0xA1, ord("v"), 99]), "unsupported protocol version 99"),
        (bytes([0x83, 0xA1, ord("v"), 1, 0xA4, ord("t"), ord("y")]), "not a valid msgpack message"),
        (encode([1, 2]), "expected a map"),
        (message(type="websocket.shout"), "unknown event type"),
        (message(seq=-1), "`seq`"),
        (message(seq="2"), "`seq`"),
        (message(reply=None), "missing field `reply`"),
        (message(type="websocket.disconnect"), "missing field `code`"),
        (message(type="http.request"), "missing field `method`"),
        (message(type="websocket.connect", headers=[["only-a-name"]]), "`headers`"),
        (message(type="http.request", method="GET", more_body="yes"), "`more_body`"),
    ],
)
def test_refuses_garbage_with_the_reason(raw: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why.replace("`", ".")):
        decode_channel_message(raw)


def test_reply_addresses() -> None:
    assert parse_reply_address("if-1a2b!42") == ("if-1a2b", 42)
    assert parse_reply_address("a!b!3") == ("a!b", 3)
    for bad in ["no-bang", "!5", "x!notanumber", "x!-1", "x!", f"x!{2**64}"]:
        assert parse_reply_address(bad) is None, bad


def test_replies_and_outboxes_round_trip() -> None:
    actions = [{"type": "websocket.send", "bytes": b"\x01"}, {"type": "websocket.close", "code": 1000, "reason": ""}]
    reply = encode_reply(9, 4, actions)
    assert decode_reply(reply) == {"v": 1, "conn": 9, "done": 4, "actions": actions}
    assert "done" not in decode_reply(encode_reply(9, None, []))
    sends = [GroupSend.of("g", "text"), GroupSend.of("h", b"\x00"), GroupSend.of("j", '{"a":1}', json_object=True)]
    assert [s.kind for s in sends] == ["t", "b", "j"]
    assert decode_outbox(b"12 " + encode_outbox(reply, sends)) == (reply, sends)
    assert decode_outbox(b"3 " + encode_outbox(None, [])) == (None, [])
    with pytest.raises(DecodeError):
        decode_outbox(b"no-space")
    with pytest.raises(TypeError):
        GroupSend.of("g", b"\x00", json_object=True)


def test_keys_match_the_rust_spelling() -> None:
    keys = Keys("sy")
    assert keys.channel_stream("chat", 2) == "sy:chan:{chat:2}"
    assert keys.channel_of_stream("sy:chan:{http.example:0}") == ("http.example", 0)
    assert keys.channel_of_stream("other:chan:{chat:0}") is None
    assert keys.channel_of_stream("sy:chan:{chat}") is None
    assert keys.session("abc") == "sy:session:{abc}"
    assert keys.group_channel("lobby") == "sy:group:{lobby}"
    # Odd names get a hashed tag, and every key of a name shares one slot.
    for name in ["", "a{b", "}x", "{y}", "~sneaky"]:
        assert tag(name).startswith("~") and tag(name).endswith("}" + name)
        slots = {slot(k) for k in (keys.group_channel(name), keys.group_seq(name), keys.group_sent(name, "i!1"))}
        assert len(slots) == 1, name
    assert keys.group_channel("a{b") != keys.group_channel("a{c")
    # Values from CLUSTER KEYSLOT on a real Redis (as protocol/src/keys.rs checks).
    assert slot("foo") == 12182
    assert slot("sw:group:{g1}") == 13519
    assert slot("somekey") == 11058


def test_session_ids_and_changes() -> None:
    assert session_id("session_uuid=abc-123", "if!1") == "abc-123"
    assert session_id("x=1&session_uuid=abc", "if!1") == "abc"
    assert session_id("session_uuid=../etc", "if!1") == "if!1"
    assert session_id("", "if!1") == "if!1"
    session = Session("s", {"a": "1", "b": "2"})
    assert not session.used
    assert session.get("missing") is None and session.used
    session["count"] = "5"
    del session["a"]
    assert session.changes() == ([("count", "5")], ["a"])
    with pytest.raises(TypeError, match="strings"):
        session["count"] = 6  # type: ignore[assignment]


def test_switchyards_own_session_fields_cannot_be_written() -> None:
    session = Session("s", {"count": "1"})
    with pytest.raises(KeyError, match="Switchyard's"):
        session["~o:if!1"] = "x"
    with pytest.raises(KeyError, match="Switchyard's"):
        del session["~x"]
    assert session.changes() == ([], [])
