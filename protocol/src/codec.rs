//! msgpack encoding with a version check.
//!
//! Messages are encoded as maps (field names included) so that a worker in any
//! language can read them, and a message from a newer protocol version is
//! refused with a clear error instead of being half-understood.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

/// Why bytes could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid msgpack message: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    #[error("unsupported protocol version {found} (this build speaks {PROTOCOL_VERSION})")]
    Version { found: u16 },
}

/// Encodes a message as a msgpack map.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing our own plain data types into a Vec cannot fail.
    rmp_serde::to_vec_named(message).expect("message types always serialize")
}

/// A message that carries the protocol version it was written with.
pub trait Versioned {
    fn version(&self) -> u16;
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u16,
}

/// Decodes a message, refusing versions this build does not speak.
pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match rmp_serde::from_slice::<T>(bytes) {
        Ok(message) if message.version() == PROTOCOL_VERSION => Ok(message),
        Ok(message) => Err(DecodeError::Version {
            found: message.version(),
        }),
        Err(error) => match rmp_serde::from_slice::<VersionOnly>(bytes) {
            Ok(VersionOnly { v }) if v != PROTOCOL_VERSION => Err(DecodeError::Version { found: v }),
            _ => Err(DecodeError::Malformed(error)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;

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

    #[test]
    fn replies_round_trip() {
        let reply = Reply::new(
            9,
            Some(4),
            vec![
                Action::Accept { subprotocol: None },
                Action::Send(Payload::text("{\"count\": 1}")),
                Action::Send(Payload::bytes(vec![1, 2, 3])),
                Action::GroupAdd { group: "chat".into() },
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
