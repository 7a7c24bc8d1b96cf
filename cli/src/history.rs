//! `--group-history` and `--group-history-ttl`: how much of each group's
//! broadcasts a sender keeps, for members and interfaces that reconnect.
//!
//! Every binary that sends to groups (the worker, `switchyard send-group`)
//! takes the same two flags, so they are written once here and flattened into
//! each command line. The history itself is `switchyard_protocol::groups`.

use std::time::Duration;

use clap::Args;
use switchyard_protocol::groups::History;

use crate::seconds::{self, THIRTY_DAYS};

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Broadcasts kept per group, in the group's own hash slot, so that an
    /// interface that lost its subscription and a client that joins "since"
    /// a broadcast get what they missed (docs/protocol.md, "Group history and
    /// recovery"). 0: none — broadcasts are pub/sub only and recovery reports
    /// `recover_failed`.
    #[arg(
        long = "group-history",
        env = "SWITCHYARD_GROUP_HISTORY",
        default_value_t = 100,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(0..=1_000_000)
    )]
    pub length: u64,

    /// Seconds a broadcast stays in its group's history: older ones are dropped
    /// at the next send, and the history expires this long after the group's
    /// last send (0: no age limit).
    #[arg(
        long = "group-history-ttl",
        env = "SWITCHYARD_GROUP_HISTORY_TTL",
        default_value = "300",
        value_name = "SECONDS",
        value_parser = seconds::between(0.0, THIRTY_DAYS)
    )]
    pub ttl: Duration,
}

impl HistoryArgs {
    pub fn history(&self) -> History {
        History {
            length: self.length,
            ttl: self.ttl,
        }
    }
}
