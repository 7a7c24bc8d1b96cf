//! Bounded backlogs: a channel whose workers are stopped or slow stops taking
//! new work at the interface, before Redis runs out of memory.
//!
//! One connection has at most one message in flight, but handshakes are not
//! bounded that way: screens that retry their connection every few seconds
//! while a channel has no worker add a `websocket.connect` (and later a
//! disconnect) per attempt, and HTTP clients add a request each. Those entries
//! wait in the channel's streams until a worker comes back. So every second
//! this loop measures each routed channel's backlog — entries not yet handled
//! (`XINFO GROUPS`: pending + lag; `XLEN` when Redis cannot tell), summed over
//! the channel's shards — and marks the channel full when it passes
//! `--max-backlog` (or its `--max-backlog-for`). While full, a new WebSocket
//! message closes its connection with 1013, a handshake or an HTTP request is
//! answered 503 with `Retry-After`, and nothing is appended. Nothing already
//! accepted is dropped: the stream keeps what it has for the workers.
//!
//! The bound is approximate by design: at most what the interfaces append in
//! one second beyond the limit (each interface measures on its own).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::xinfo::{self, GroupInfo};
use switchyard_protocol::WORKER_GROUP;

use crate::metrics::{Metrics, RefusalLabel};

/// How often the backlogs are measured.
const EVERY: Duration = Duration::from_secs(1);
/// Seconds a refused client is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// One channel's limit and what was last measured.
struct Channel {
    limit: Option<u64>,
    streams: Vec<Arc<str>>,
    size: AtomicU64,
    full: AtomicBool,
}

/// Every routed channel's backlog, as last measured.
pub struct Backlogs {
    channels: HashMap<Arc<str>, Channel>,
}

impl Backlogs {
    /// `channels`: each routed channel with its shard streams and limit.
    pub fn new(channels: impl IntoIterator<Item = (Arc<str>, Vec<Arc<str>>, Option<u64>)>) -> Backlogs {
        let channels = channels
            .into_iter()
            .map(|(name, streams, limit)| {
                let channel = Channel {
                    limit,
                    streams,
                    size: AtomicU64::new(0),
                    full: AtomicBool::new(false),
                };
                (name, channel)
            })
            .collect();
        Backlogs { channels }
    }

    /// Whether `channel` is past its limit: refuse new work for it.
    pub fn is_full(&self, channel: &str) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|c| c.full.load(Ordering::Relaxed))
    }

    /// Whether messages bound for `stream` may share entries of up to `most` (packed
    /// entries, `outbound`): the backlog counts entries, so a channel packs only while its
    /// backlog would stay under its limit even if every entry held `most` messages. Past
    /// that, one message per entry again, so the limit bounds messages within a factor of
    /// two.
    pub fn packs(&self, stream: &str, most: u64) -> bool {
        let Some(channel) = self
            .channels
            .values()
            .find(|c| c.streams.iter().any(|s| &**s == stream))
        else {
            return true;
        };
        let size = channel.size.load(Ordering::Relaxed);
        channel.limit.is_none_or(|limit| size.saturating_mul(most) < limit)
    }

    /// Channel → (backlog, limit), for `/status`.
    pub fn sizes(&self) -> HashMap<String, (u64, Option<u64>)> {
        self.channels
            .iter()
            .map(|(name, c)| (name.to_string(), (c.size.load(Ordering::Relaxed), c.limit)))
            .collect()
    }

    /// Records a measurement; returns whether the channel's state changed.
    fn record(&self, channel: &Channel, size: u64) -> bool {
        channel.size.store(size, Ordering::Relaxed);
        let full = channel.limit.is_some_and(|limit| size >= limit);
        channel.full.swap(full, Ordering::Relaxed) != full
    }
}

/// Measures every limited channel's backlog each second, until the interface stops.
pub async fn run(redis: Redis, backlogs: Arc<Backlogs>, metrics: Arc<Metrics>) {
    // Every series at 0 from the start: rates and alerts see a series before the first refusal.
    for name in backlogs.channels.keys() {
        for kind in ["handshake", "http", "message"] {
            let _ = metrics.backlog_refusals.get_or_create(&RefusalLabel {
                channel: name.to_string(),
                kind,
            });
        }
    }
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (name, channel) in &backlogs.channels {
            let Some(size) = measure(&redis, &channel.streams).await else {
                continue;
            };
            metrics.channel_backlog(name, size);
            if backlogs.record(channel, size) {
                let full = channel.full.load(Ordering::Relaxed);
                if full {
                    tracing::warn!(channel = %name, backlog = size, limit = channel.limit, "channel backlog full: refusing new messages, handshakes and requests for it");
                } else {
                    tracing::info!(channel = %name, backlog = size, "channel backlog below its limit again");
                }
            }
        }
    }
}

/// Entries of the channel not yet handled, summed over its shards; `None`
/// when Redis did not answer (the last measurement stands).
async fn measure(redis: &Redis, streams: &[Arc<str>]) -> Option<u64> {
    let mut total = 0;
    for stream in streams {
        let mut con = redis.clone();
        let size = match xinfo::group(&mut con, stream, WORKER_GROUP).await {
            Ok(Some(GroupInfo {
                pending,
                lag: Some(lag),
                ..
            })) => pending + lag,
            // No group yet (no worker ever read it), an unknown lag, or no stream at all.
            _ => redis::cmd("XLEN")
                .arg(&**stream)
                .query_async::<u64>(&mut con)
                .await
                .ok()?,
        };
        total += size;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlogs(limit: Option<u64>) -> Backlogs {
        Backlogs::new([(Arc::from("chat"), vec![Arc::from("s")], limit)])
    }

    #[test]
    fn a_channel_packs_while_full_entries_would_stay_under_its_limit() {
        let backlogs = Backlogs::new([(Arc::from("chat"), vec![Arc::from("s")], Some(1000))]);
        let chat = &backlogs.channels["chat"];
        assert!(backlogs.packs("s", 100));
        backlogs.record(chat, 9);
        assert!(backlogs.packs("s", 100), "9 entries of 100 stay under 1,000");
        backlogs.record(chat, 10);
        assert!(!backlogs.packs("s", 100), "one message per entry from here");
        assert!(backlogs.packs("unknown", 100));
        let unlimited = Backlogs::new([(Arc::from("echo"), vec![Arc::from("e")], None)]);
        unlimited.record(&unlimited.channels["echo"], 1 << 40);
        assert!(unlimited.packs("e", 128));
    }

    #[test]
    fn full_at_the_limit_and_free_again_below_it() {
        let backlogs = backlogs(Some(10));
        let chat = &backlogs.channels["chat"];
        assert!(!backlogs.record(chat, 9));
        assert!(!backlogs.is_full("chat"));
        assert!(backlogs.record(chat, 10), "state changed");
        assert!(backlogs.is_full("chat"));
        assert!(!backlogs.record(chat, 50), "still full: no change");
        assert!(backlogs.record(chat, 3));
        assert!(!backlogs.is_full("chat"));
        assert_eq!(backlogs.sizes()["chat"], (3, Some(10)));
    }

    #[test]
    fn no_limit_is_never_full_and_unknown_channels_are_not_full() {
        let backlogs = backlogs(None);
        let chat = &backlogs.channels["chat"];
        backlogs.record(chat, u64::MAX);
        assert!(!backlogs.is_full("chat"));
        assert!(!backlogs.is_full("other"));
    }
}
