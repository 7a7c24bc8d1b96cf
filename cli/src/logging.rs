//! Structured logging set-up shared by every Switchyard binary.
//!
//! Production wants one JSON object per line; a developer at a terminal wants
//! readable lines. Both come from the same `tracing` events, so every field
//! (connection id, channel, consumer) is there in either format.

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,redis=error";

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Installs the global subscriber, writing to stderr. The level comes from
/// `RUST_LOG` (default `info,redis=error`: the Redis client's own reconnect
/// chatter — hundreds of lines per failover on a cluster — stays out; our own
/// lines say when Redis goes away and comes back).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}
