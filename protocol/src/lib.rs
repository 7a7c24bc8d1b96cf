//! The contract between Switchyard's interface servers and its workers.
//!
//! Interfaces and workers never talk to each other directly: every client event
//! travels as a message on a Redis stream, and every answer comes back on the
//! interface's own reply stream. This crate holds everything both sides must
//! agree on, so that it exists exactly once:
//!
//! - [`message`]: the message types and their msgpack encoding ([`codec`]),
//! - [`keys`]: how Redis keys and channel names are spelled,
//! - [`address`]: reply addresses (`<interface>!<connection>`),
//! - [`redis_conn`]: how to open Redis connections (one server or a cluster)
//!   with sane timeouts, and how work is split by hash slot,
//! - [`scripts`]: the Lua steps every worker runs, in `protocol/lua/`,
//! - [`groups`]: group sends,
//! - [`stream`]: the channel layer — appending, reading and trimming streams;
//!   [`xinfo`]: what Redis says about their groups and consumers,
//! - [`liveness`]: the records that say which workers and interfaces are alive;
//!   [`sweep`]: the group members of an interface that died, removed,
//! - [`close`]: WebSocket close codes by name, [`time`]: wall-clock milliseconds.
//!
//! `docs/protocol.md` describes the same contract for workers in other languages.

pub mod address;
pub mod close;
pub mod cluster;
pub mod codec;
pub mod groups;
pub mod keys;
pub mod liveness;
pub mod message;
pub mod pubsub;
pub mod redis_conn;
pub mod scripts;
pub mod shards;
pub mod stream;
pub mod sweep;
pub mod time;
pub mod topology;
pub mod value;
pub mod xinfo;

/// The prefix of every metric name the interface and the workers (Rust and
/// Python, `python/switchyard/metrics.py`) serve: `switchyard_…`, so one
/// dashboard and one set of alerts cover them and nothing clashes with other
/// exporters on the same Prometheus.
pub const METRIC_PREFIX: &str = "switchyard";

pub use address::ReplyAddress;
pub use codec::{decode, encode, DecodeError, Versioned, PROTOCOL_VERSION};
pub use keys::{Keys, SESSION_RESERVED, WORKER_GROUP};
pub use message::*;
pub use stream::PAYLOAD_FIELD;
