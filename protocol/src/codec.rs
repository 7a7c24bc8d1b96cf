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
    // Room for a typical message up front: grown from empty, the buffer was copied five
    // times on its way to a chat message's size (memcpy and realloc under encode in a
    // worker's profile).
    let mut buf = Vec::with_capacity(256);
    // Serializing our own plain data types into a Vec cannot fail.
    rmp_serde::encode::write_named(&mut buf, message).expect("message types always serialize");
    buf
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
