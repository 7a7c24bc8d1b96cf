//! What a periodic task sees: once per tick for the whole worker pool (see
//! `runtime/ticks.rs` for how ticks are run), a task gets this context.

use switchyard_protocol::groups::{self, GroupFrame, History};
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::Keys;

/// What a periodic task can do.
pub struct PeriodicContext {
    pub redis: Redis,
    pub keys: Keys,
    /// `--group-history`: what a group send keeps.
    pub history: History,
    /// The tick number being run.
    pub tick: u64,
}

impl PeriodicContext {
    /// Sends a text frame to every member of a group.
    pub async fn group_send_text(&mut self, group: &str, text: impl Into<String>) -> redis::RedisResult<u64> {
        groups::group_send(
            &mut self.redis,
            &self.keys,
            self.history,
            group,
            &GroupFrame::Text(text.into()),
        )
        .await
    }
}
