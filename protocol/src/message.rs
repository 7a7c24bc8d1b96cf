//! The messages that travel between interfaces and workers.
//!
//! Three kinds of payload exist, each a msgpack map with a version field `v`:
//!
//! - [`ChannelMessage`]: a client event, appended by an interface to a channel
//!   stream (`websocket.connect`, `websocket.receive`, `websocket.disconnect`,
//!   `websocket.drain`, `http.request`, `http.disconnect`). Each carries the
//!   connection's reply address and a per-connection sequence number; an HTTP
//!   request is a connection of its own.
//! - [`Reply`]: a worker's answer on the interface's reply stream: the actions
//!   to apply to one connection, plus the `done` marker for the sequence number
//!   it completes.
//! - [`GroupMessage`]: a broadcast published once on a group's pub/sub channel
//!   and fanned out by every interface to its local members.
//!
//! Field names follow ASGI where ASGI has one.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec::{Versioned, PROTOCOL_VERSION};

/// A WebSocket message body: text or binary, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<ByteBuf>,
}

impl Payload {
    pub fn text(text: impl Into<String>) -> Self {
        Payload {
            text: Some(text.into()),
            bytes: None,
        }
    }

    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Payload {
            text: None,
            bytes: Some(ByteBuf::from(bytes.into())),
        }
    }

    pub fn len(&self) -> usize {
        self.text.as_ref().map_or(0, String::len) + self.bytes.as_ref().map_or(0, |b| b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client event on a channel stream.
///
/// Serialized through [`ChannelMessageRef`], which an interface can also build from borrowed
/// parts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChannelMessage {
    pub v: u16,
    /// Reply address, `<interface>!<connection>`.
    pub reply: String,
    /// Per-connection sequence number, starting at 1 with the connect.
    pub seq: u64,
    /// Request path of the connection (every message carries it, so any worker
    /// can rebuild the connection's scope without a lookup).
    pub path: String,
    /// Raw query string, without `?`.
    #[serde(default)]
    pub query: String,
    #[serde(flatten)]
    pub event: Event,
}

impl Versioned for ChannelMessage {
    fn version(&self) -> u16 {
        self.v
    }
}

impl ChannelMessage {
    pub fn new(reply: String, seq: u64, path: String, query: String, event: Event) -> Self {
        ChannelMessage {
            v: PROTOCOL_VERSION,
            reply,
            seq,
            path,
            query,
            event,
        }
    }

    /// The same message, borrowed: what is serialized.
    pub fn as_ref(&self) -> ChannelMessageRef<'_> {
        ChannelMessageRef {
            v: self.v,
            ..ChannelMessageRef::new(&self.reply, self.seq, &self.path, &self.query, &self.event)
        }
    }
}

impl Serialize for ChannelMessage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_ref().serialize(serializer)
    }
}

/// A [`ChannelMessage`] made of borrowed parts, so that an interface encodes each client
/// message without copying its connection's reply address, path and query first.
///
/// Why its `Serialize` is written out for `websocket.receive`: the derived form of a struct
/// with a flattened field does not know its map's length, and rmp-serde then encodes the map
/// into a buffer of its own and copies it: two growing buffers per message. A client message
/// is written as a map of known length instead, the same bytes (tested below); the other
/// events are rare and keep the derived form.
#[derive(Debug, Clone, Copy)]
pub struct ChannelMessageRef<'a> {
    pub v: u16,
    pub reply: &'a str,
    pub seq: u64,
    pub path: &'a str,
    pub query: &'a str,
    pub event: &'a Event,
}

impl<'a> ChannelMessageRef<'a> {
    pub fn new(reply: &'a str, seq: u64, path: &'a str, query: &'a str, event: &'a Event) -> Self {
        ChannelMessageRef {
            v: PROTOCOL_VERSION,
            reply,
            seq,
            path,
            query,
            event,
        }
    }
}

/// The derived form: the event's fields flattened into the message's map.
#[derive(Serialize)]
struct Flattened<'a> {
    v: u16,
    reply: &'a str,
    seq: u64,
    path: &'a str,
    query: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

impl Serialize for ChannelMessageRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Event::Receive(payload) = self.event else {
            let flattened = Flattened {
                v: self.v,
                reply: self.reply,
                seq: self.seq,
                path: self.path,
                query: self.query,
                event: self.event,
            };
            return flattened.serialize(serializer);
        };
        let fields = 6 + usize::from(payload.text.is_some()) + usize::from(payload.bytes.is_some());
        let mut map = serializer.serialize_map(Some(fields))?;
        map.serialize_entry("v", &self.v)?;
        map.serialize_entry("reply", self.reply)?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("path", self.path)?;
        map.serialize_entry("query", self.query)?;
        map.serialize_entry("type", self.event.type_name())?;
        if let Some(text) = &payload.text {
            map.serialize_entry("text", text)?;
        }
        if let Some(bytes) = &payload.bytes {
            map.serialize_entry("bytes", bytes)?;
        }
        map.end()
    }
}

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// The client asks to open a WebSocket; the handshake waits for the answer.
    #[serde(rename = "websocket.connect")]
    Connect(ConnectScope),
    /// A complete (reassembled) client message.
    #[serde(rename = "websocket.receive")]
    Receive(Payload),
    /// The socket is gone; `code` is the close code (1006 when it just dropped).
    #[serde(rename = "websocket.disconnect")]
    Disconnect { code: u16 },
    /// The interface is shutting down: a last chance to say goodbye.
    #[serde(rename = "websocket.drain")]
    Drain,
    /// One chunk of an HTTP request; the worker answers the last one
    /// (`more_body == false`) with the response.
    #[serde(rename = "http.request")]
    HttpRequest(HttpRequest),
    /// The HTTP client went away (or the interface gave up) before the
    /// response was complete. Needs no reply.
    #[serde(rename = "http.disconnect")]
    HttpDisconnect,
}

impl Event {
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Connect(_) => "websocket.connect",
            Event::Receive(_) => "websocket.receive",
            Event::Disconnect { .. } => "websocket.disconnect",
            Event::Drain => "websocket.drain",
            Event::HttpRequest(_) => "http.request",
            Event::HttpDisconnect => "http.disconnect",
        }
    }
}

/// One chunk of an HTTP request. Every chunk carries the method and headers,
/// so whichever worker takes the last one can rebuild the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    /// Request headers, names lower-cased, values as sent (lossy UTF-8).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Client address `ip:port`.
    #[serde(default)]
    pub client: String,
    /// This chunk of the body (at most 64 KiB).
    #[serde(default)]
    pub body: ByteBuf,
    /// Whether more chunks follow.
    #[serde(default)]
    pub more_body: bool,
}

/// What the worker learns about a new connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectScope {
    /// Request headers, names lower-cased, values as sent (lossy UTF-8).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Client address `ip:port`.
    #[serde(default)]
    pub client: String,
    /// Subprotocols the client offered.
    #[serde(default)]
    pub subprotocols: Vec<String>,
}

/// A worker's answer for one connection, on the interface's reply stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub v: u16,
    /// Connection id inside the interface.
    pub conn: u64,
    /// The sequence number this reply completes; `None` for unsolicited sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    #[serde(default)]
    pub actions: Vec<Action>,
}

impl Versioned for Reply {
    fn version(&self) -> u16 {
        self.v
    }
}

impl Reply {
    pub fn new(conn: u64, done: Option<u64>, actions: Vec<Action>) -> Self {
        Reply {
            v: PROTOCOL_VERSION,
            conn,
            done,
            actions,
        }
    }
}

/// One thing for the interface to do to a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Action {
    /// Complete the handshake (only meaningful in answer to a connect).
    #[serde(rename = "websocket.accept")]
    Accept {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subprotocol: Option<String>,
    },
    /// Send a message to the client.
    #[serde(rename = "websocket.send")]
    Send(Payload),
    /// Close the socket (before accept: refuse the handshake with 403).
    #[serde(rename = "websocket.close")]
    Close {
        code: u16,
        #[serde(default)]
        reason: String,
    },
    /// Make the connection a member of a group. With `since`, the interface
    /// first delivers the group's broadcasts after `since` of `epoch` from the
    /// group's history, then the live ones (or, when the history cannot serve
    /// that position, a `recover_failed` frame; docs/protocol.md).
    #[serde(rename = "group.add")]
    GroupAdd {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// A plain join: the consumer asked for no position, and the worker
        /// set `since`/`epoch` to where the group stood when it handled the
        /// join, so that nothing broadcast after the join is missed. When the
        /// history cannot serve it the connection joins live without a notice.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        plain: bool,
    },
    /// Remove the connection from a group.
    #[serde(rename = "group.discard")]
    GroupDiscard { group: String },
    /// Status and headers of an HTTP response; comes before its body.
    #[serde(rename = "http.response.start")]
    HttpResponseStart {
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    /// A piece of the HTTP response body; `more_body == false` ends it.
    #[serde(rename = "http.response.body")]
    HttpResponseBody {
        #[serde(default)]
        body: ByteBuf,
        #[serde(default)]
        more_body: bool,
    },
}

/// A broadcast to every member of a group, published once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessage {
    pub v: u16,
    pub group: String,
    /// Per-group sequence number (a gap tells a client it missed something).
    #[serde(default)]
    pub seq: u64,
    /// The group's epoch: changes whenever its numbering starts again (its
    /// history was lost or reset). Empty from senders older than history.
    #[serde(default)]
    pub epoch: String,
    #[serde(flatten)]
    pub payload: Payload,
}

impl Versioned for GroupMessage {
    fn version(&self) -> u16 {
        self.v
    }
}

impl GroupMessage {
    pub fn new(group: String, seq: u64, payload: Payload) -> Self {
        GroupMessage {
            v: PROTOCOL_VERSION,
            group,
            seq,
            epoch: String::new(),
            payload,
        }
    }
}

/// What a worker keeps with a session write (`P:outbox:{ID}:IFACE!CONN`, after
/// the message's sequence number and a space): the message's reply and group
/// sends, so whichever worker handles the message again finishes it with
/// these instead of what it computes from the already-written session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    pub v: u16,
    /// The encoded [`Reply`]; empty for none.
    #[serde(default)]
    pub reply: ByteBuf,
    #[serde(default)]
    pub groups: Vec<OutboxSend>,
}

/// One group send of an [`Outbox`], as the group-send script takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxSend {
    pub group: String,
    /// `t` text, `b` bytes, `j` a JSON object (sent as text with `seq` added).
    pub kind: String,
    pub data: ByteBuf,
}

impl Versioned for Outbox {
    fn version(&self) -> u16 {
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode, DecodeError};

    #[test]
    fn channel_messages_round_trip() {
        let messages = [
            Event::Connect(ConnectScope {
                headers: vec![("host".into(), "x".into())],
                client: "127.0.0.1:5000".into(),
                subprotocols: vec!["chat.v1".into()],
            }),
            Event::Receive(Payload::text("hello")),
            Event::Receive(Payload::bytes(vec![0u8, 159, 255])),
            Event::Disconnect { code: 1001 },
            Event::Drain,
            Event::HttpRequest(HttpRequest {
                method: "POST".into(),
                headers: vec![("content-type".into(), "text/plain".into())],
                client: "127.0.0.1:5000".into(),
                body: serde_bytes::ByteBuf::from(vec![0u8, 1, 255]),
                more_body: true,
            }),
            Event::HttpDisconnect,
        ];
        for event in messages {
            let message = ChannelMessage::new("if1!7".into(), 3, "/ws/chat/".into(), "a=b".into(), event);
            let decoded: ChannelMessage = decode(&encode(&message)).unwrap();
            assert_eq!(decoded, message);
        }
    }

    /// A client message's hand-written map is byte for byte the derived, flattened one.
    #[test]
    fn a_client_message_encodes_as_the_derived_form_does() {
        let long = "x".repeat(70_000);
        let payloads = [
            Payload::text("hello"),
            Payload::text(""),
            Payload::text(long.clone()),
            Payload::bytes(vec![0u8, 159, 255]),
            Payload::bytes(long.clone().into_bytes()),
            Payload {
                text: Some("both".into()),
                bytes: Some(serde_bytes::ByteBuf::from(vec![1u8])),
            },
            Payload {
                text: None,
                bytes: None,
            },
        ];
        for (payload, seq) in payloads.into_iter().zip([0, 1, 127, 128, 65_536, u64::MAX, 3]) {
            let event = Event::Receive(payload);
            let (reply, path, query) = ("if1!7", "/ws/chat/é", long.as_str());
            let derived = rmp_serde::to_vec_named(&Flattened {
                v: PROTOCOL_VERSION,
                reply,
                seq,
                path,
                query,
                event: &event,
            })
            .unwrap();
            assert_eq!(
                encode(&ChannelMessageRef::new(reply, seq, path, query, &event)),
                derived
            );
            let owned = ChannelMessage::new(reply.into(), seq, path.into(), query.into(), event);
            assert_eq!(encode(&owned), derived);
            assert_eq!(decode::<ChannelMessage>(&derived).unwrap(), owned);
        }
    }

    #[test]
    fn replies_round_trip() {
        let reply = Reply::new(
            9,
            Some(4),
            vec![
                Action::Accept { subprotocol: None },
                Action::Send(Payload::text("{\"count\": 1}")),
                Action::Send(Payload::bytes(vec![1, 2, 3])),
                Action::GroupAdd {
                    group: "chat".into(),
                    since: None,
                    epoch: None,
                    plain: false,
                },
                Action::GroupAdd {
                    group: "chat".into(),
                    since: Some(3),
                    epoch: Some("1718000000123456".into()),
                    plain: true,
                },
                Action::GroupAdd {
                    group: "room:lobby".into(),
                    since: Some(7),
                    epoch: Some("1718000000123456".into()),
                    plain: false,
                },
                Action::GroupDiscard { group: "chat".into() },
                Action::Close {
                    code: 4400,
                    reason: String::new(),
                },
                Action::HttpResponseStart {
                    status: 200,
                    headers: vec![("content-type".into(), "application/json".into())],
                },
                Action::HttpResponseBody {
                    body: serde_bytes::ByteBuf::from(b"{}".to_vec()),
                    more_body: false,
                },
            ],
        );
        let decoded: Reply = decode(&encode(&reply)).unwrap();
        assert_eq!(decoded, reply);
    }

    #[test]
    fn group_messages_round_trip() {
        let message = GroupMessage::new("school:5".into(), 17, Payload::text("hi"));
        let decoded: GroupMessage = decode(&encode(&message)).unwrap();
        assert_eq!(decoded, message);
    }

    #[test]
    fn encodes_as_a_self_describing_map() {
        let message = ChannelMessage::new(
            "i!1".into(),
            2,
            "/p".into(),
            String::new(),
            Event::Receive(Payload::text("x")),
        );
        let value: rmpv_like::Map = rmp_serde::from_slice(&encode(&message)).unwrap();
        assert_eq!(value.get("type").map(String::as_str), Some("websocket.receive"));
        assert_eq!(value.get("text").map(String::as_str), Some("x"));
    }

    #[test]
    fn refuses_garbage_and_other_versions() {
        assert!(matches!(
            decode::<ChannelMessage>(b"garbage"),
            Err(DecodeError::Malformed(_))
        ));
        let truncated = &encode(&Reply::new(1, Some(1), vec![]))[..5];
        assert!(matches!(decode::<Reply>(truncated), Err(DecodeError::Malformed(_))));
        let mut future = Reply::new(1, Some(1), vec![]);
        future.v = 99;
        assert!(matches!(
            decode::<Reply>(&encode(&future)),
            Err(DecodeError::Version { found: 99 })
        ));
    }

    /// Reads a msgpack map keeping only its string values.
    mod rmpv_like {
        use std::collections::HashMap;

        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Other(serde::de::IgnoredAny),
        }

        pub struct Map(HashMap<String, String>);

        impl Map {
            pub fn get(&self, key: &str) -> Option<&String> {
                self.0.get(key)
            }
        }

        impl<'de> serde::Deserialize<'de> for Map {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw: HashMap<String, Scalar> = HashMap::deserialize(d)?;
                Ok(Map(raw
                    .into_iter()
                    .filter_map(|(k, v)| match v {
                        Scalar::Text(t) => Some((k, t)),
                        Scalar::Other(_) => None,
                    })
                    .collect()))
            }
        }
    }
}
