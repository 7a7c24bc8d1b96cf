//! What the worker's tasks share: the served channels and their shard
//! streams, the Redis connections, the committer, the permits for messages in
//! hand, and whether the worker is stopping.
//!
//! One struct, built once by [`crate::runtime::run`] and handed to every task
//! as an `Arc`; the tasks themselves live in their own modules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use switchyard_protocol::redis_conn::{Redis, RedisClient};
use switchyard_protocol::{shards, stream, Keys, WORKER_GROUP};
use tokio::sync::{watch, Semaphore};

use crate::api::app::{ChannelApp, Periodic};
use crate::config::WorkerConfig;
use crate::metrics::Metrics;
use crate::runtime::commit::Committer;

/// State shared by the worker's tasks.
pub struct Worker {
    pub(crate) config: WorkerConfig,
    /// This worker's name in the channel streams' consumer group (Redis calls
    /// it a consumer; here "consumer" is the application's code).
    pub(crate) member: String,
    pub(crate) keys: Keys,
    pub(crate) client: RedisClient,
    pub(crate) redis: Redis,
    /// Served channel → the app that serves it.
    pub(crate) apps: HashMap<String, ChannelApp>,
    /// Shards read per served channel at least (`--channel-shards`, or one per
    /// primary of the cluster).
    pub(crate) base_shards: u16,
    /// Every shard stream read, sorted; grows when interfaces announce more shards.
    pub(crate) streams: watch::Sender<Vec<String>>,
    pub(crate) periodic: Vec<Periodic>,
    pub(crate) committer: Committer,
    pub(crate) metrics: Arc<Metrics>,
    /// Permits for messages in hand; a graceful stop waits for all of them.
    pub(crate) permits: Arc<Semaphore>,
    /// `true` once the worker is stopping: read nothing more, finish what is in hand.
    pub(crate) stop: watch::Sender<bool>,
    /// Set once the first read succeeded: the worker is live, not just started.
    pub(crate) reading: AtomicBool,
}

impl Worker {
    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the worker is stopping.
    pub(crate) async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = stop.wait_for(|stopping| *stopping).await;
    }

    pub(crate) fn reading(&self) -> bool {
        self.reading.load(Ordering::Relaxed)
    }

    /// Marks the worker as reading; true the first time.
    pub(crate) fn mark_reading(&self) -> bool {
        !self.reading.swap(true, Ordering::Relaxed)
    }

    /// Every shard stream this worker reads, sorted.
    pub(crate) fn streams(&self) -> Vec<String> {
        self.streams.borrow().clone()
    }

    /// Follows the stream list as it grows.
    pub(crate) fn watch_streams(&self) -> watch::Receiver<Vec<String>> {
        self.streams.subscribe()
    }

    /// The served channel of a shard stream, with the app that serves it.
    pub(crate) fn channel_of(&self, stream: &str) -> Option<(&str, &ChannelApp)> {
        let (channel, _) = self.keys.channel_of_stream(stream)?;
        self.apps.get_key_value(channel).map(|(c, app)| (c.as_str(), app))
    }

    /// The served channels' names.
    pub(crate) fn channel_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.apps.keys().map(String::as_str).collect();
        names.sort();
        names
    }

    /// Reads the shard counts interfaces announced and adds the streams of any
    /// new shard (creating its consumer group first).
    pub(crate) async fn refresh_shards(&self) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        let announced = shards::announced(&mut con, &self.keys).await?;
        let mut streams = Vec::new();
        for channel in self.apps.keys() {
            let count = announced.get(channel).copied().unwrap_or(1).max(self.base_shards);
            streams.extend(self.keys.channel_streams(channel, count));
        }
        streams.sort();
        let current = self.streams();
        let added: Vec<&String> = streams.iter().filter(|s| !current.contains(s)).collect();
        if added.is_empty() {
            return Ok(());
        }
        for stream in &added {
            stream::ensure_group(&mut con, stream, WORKER_GROUP).await?;
        }
        tracing::info!(added = ?added, "reading new channel shards");
        self.streams.send_replace(streams);
        Ok(())
    }

    /// Creates the consumer group on every stream read.
    pub(crate) async fn ensure_groups(&self, streams: &[String]) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        for stream in streams {
            stream::ensure_group(&mut con, stream, WORKER_GROUP).await?;
        }
        Ok(())
    }
}
