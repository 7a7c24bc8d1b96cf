//! msgpack encoding with a version check.
//!
//! Messages are encoded as maps (field names included) so that a worker in any
//! language can read them, and a message from a newer protocol version is
//! refused with a clear error instead of being half-understood.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version of the wire format; carried as `v` in every message.
pub const PROTOCOL_VERSION: u16 = 1;

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
    // Serializing our own plain data types into a Vec cannot fail. Grown from empty: room
    // reserved up front stays with the message wherever it is kept (a connection keeps its
    // message in flight for a redelivery; 256 bytes reserved cost every idle WebSocket
    // 0.2 KiB in `scripts/bench-hold`).
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
