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
    // Written into this thread's scratch buffer, then copied out at its exact size: one
    // allocation per message. Grown from empty, the Vec was reallocated four or five times
    // for a chat message, and room reserved up front instead stays with the message wherever
    // it is kept (a connection keeps its message in flight for a redelivery; 256 bytes
    // reserved cost every idle WebSocket 0.2 KiB in `scripts/bench-hold`).
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            write(&mut buffer, message);
            let encoded = buffer.to_vec();
            if buffer.capacity() > SCRATCH_KEPT {
                *buffer = Vec::new();
            }
            encoded
        }
        // Only if a message's serialization encoded another message.
        Err(_) => {
            let mut buffer = Vec::new();
            write(&mut buffer, message);
            buffer
        }
    })
}

/// Largest scratch buffer kept for the next message: a large HTTP body does not pin its
/// size to the thread.
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn write<T: Serialize>(buffer: &mut Vec<u8>, message: &T) {
    // Serializing our own plain data types into a Vec cannot fail.
    rmp_serde::encode::write_named(buffer, message).expect("message types always serialize")
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
