//! The per-connection limits of established WebSockets, from their flags.
//!
//! Each limit guards the interface against one kind of client: pings keep
//! idle sockets alive through proxies, the idle timeout finds peers that are
//! gone without a FIN (they stop answering pings), the send queue and send
//! timeout stop a client that does not read from growing our memory, and the
//! message rate stops a client from flooding the workers. `docs/limits.md`
//! lists the outcomes. The flags live in `config.rs`, which builds these
//! limits once at start (`Config::conn_limits`); every connection shares them.

use std::time::Duration;

/// The limits as the connection task uses them; `None`: off.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    pub ping_interval: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Events waiting for one client; 0: unbounded.
    pub max_send_queue: usize,
    pub send_timeout: Option<Duration>,
    /// Messages per second and burst.
    pub message_rate: Option<(f64, f64)>,
}
