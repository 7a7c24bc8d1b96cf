//! What every Switchyard binary's command line shares, written once.
//!
//! The interface, the worker and `switchyard` take the same Redis flags, log the
//! same way, read durations the same way and stop on the same signals. Those
//! live here rather than in `switchyard-protocol`, which is the wire contract
//! and must not pull in a flag parser or a log subscriber.
//!
//! - [`redis`]: `--redis-url` and its TLS and replica flags,
//! - [`history`]: `--group-history` and `--group-history-ttl` for group senders,
//! - [`logging`]: `--log-format` and the subscriber,
//! - [`seconds`]: duration flags in seconds, with their ranges,
//! - [`signals`]: SIGTERM/SIGINT as a future for `run(…, shutdown)`.

pub mod history;
pub mod logging;
pub mod redis;
pub mod seconds;
pub mod signals;

pub use history::HistoryArgs;
pub use redis::{RedisArgs, TlsArgs};
