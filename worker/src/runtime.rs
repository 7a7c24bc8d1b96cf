//! The worker process: wiring, start-up and graceful stop.
//!
//! Start: join the consumer group of every served channel, publish a liveness
//! key, then read. SIGTERM: stop reading, finish every message in hand
//! (commit, ack), leave the group, delete the liveness key, exit 0 — the
//! interfaces and their sockets never notice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use switchyard_protocol::redis_conn::{Redis, RedisClient};
use switchyard_protocol::{shards, stream, Keys, WORKER_GROUP};
use tokio::sync::{watch, Semaphore};

use crate::app::{Apps, Consumer, Periodic};
use crate::commit::{self, Committer};
use crate::config::WorkerConfig;
use crate::metrics::{self, Metrics};

/// State shared by the worker's tasks.
pub struct Worker {
    pub(crate) config: WorkerConfig,
    pub(crate) consumer: String,
    pub(crate) keys: Keys,
    pub(crate) client: RedisClient,
    pub(crate) redis: Redis,
    /// Served channel → its consumer.
    pub(crate) consumers: HashMap<String, Consumer>,
    /// Shards read per served channel at least (`--channel-shards`, or one per
    /// primary of the cluster).
    base_shards: u16,
    /// Every shard stream read, sorted; grows when interfaces announce more shards.
    streams: watch::Sender<Vec<String>>,
    pub(crate) periodic: Vec<Periodic>,
    pub(crate) committer: Committer,
    pub(crate) metrics: Arc<Metrics>,
    /// Permits for messages in hand; a graceful stop waits for all of them.
    pub(crate) permits: Arc<Semaphore>,
    stopping: AtomicBool,
    /// Set once the first read succeeded: the worker is live, not just started.
    reading: AtomicBool,
}

impl Worker {
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
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

    /// The served channel of a shard stream, with its consumer.
    pub(crate) fn channel_of(&self, stream: &str) -> Option<(&str, &Consumer)> {
        let (channel, _) = self.keys.channel_of_stream(stream)?;
        self.consumers
            .get_key_value(channel)
            .map(|(c, consumer)| (c.as_str(), consumer))
    }

    /// The served channels' names.
    pub(crate) fn channel_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.consumers.keys().map(String::as_str).collect();
        names.sort();
        names
    }

    /// Reads the shard counts interfaces announced and adds the streams of any
    /// new shard (creating its consumer group first).
    pub(crate) async fn refresh_shards(&self) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        let announced = shards::announced(&mut con, &self.keys).await?;
        let mut streams = Vec::new();
        for channel in self.consumers.keys() {
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

/// A channel with the consumer that serves it.
pub type ServedChannel = (String, Consumer);

/// Which channels and periodic tasks this process serves, after the globs.
pub fn select(config: &WorkerConfig, apps: &Apps) -> anyhow::Result<(Vec<ServedChannel>, Vec<Periodic>)> {
    let mut channels = Vec::new();
    for (channel, consumer) in &apps.consumers {
        if config.serves(channel)? {
            channels.push((channel.clone(), consumer.clone()));
        }
    }
    let served: Vec<&String> = channels.iter().map(|(c, _)| c).collect();
    let periodic = apps
        .periodic
        .iter()
        .filter(|p| served.contains(&&p.channel))
        .cloned()
        .collect();
    Ok((channels, periodic))
}

/// Runs the worker until SIGTERM/SIGINT, then stops gracefully.
pub async fn run(config: WorkerConfig, apps: Apps) -> anyhow::Result<()> {
    let (channels, periodic) = select(&config, &apps)?;
    if channels.is_empty() {
        anyhow::bail!(
            "--only-channels/--exclude-channels leave no channel to serve (available: {})",
            apps.channels().join(", ")
        );
    }
    let keys = Keys::new(config.prefix.clone());
    let client = config.redis.open_at_start().await?;
    let redis = client.shared().context("--redis-url")?;
    let consumer = config.consumer_name();
    let metrics_listener = match config.metrics_bind {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let base_shards = base_shards(&config, &redis).await;
    let committer = Committer::start(commit::Settings {
        redis: client.shared().context("--redis-url")?,
        keys: keys.clone(),
        consumer: consumer.clone(),
        reply_ttl: Duration::from_secs(config.reply_ttl),
        session_ttl: Duration::from_secs(config.session_ttl),
        wait_replicas: config.redis.wait_replicas,
    });
    let consumers: HashMap<String, Consumer> = channels.into_iter().collect();
    let mut streams: Vec<String> = consumers
        .keys()
        .flat_map(|channel| keys.channel_streams(channel, base_shards))
        .collect();
    streams.sort();
    let worker = Arc::new(Worker {
        permits: Arc::new(Semaphore::new(config.concurrency)),
        consumers,
        base_shards,
        streams: watch::Sender::new(streams),
        config,
        consumer,
        keys,
        client,
        redis,
        periodic,
        committer,
        metrics: Arc::new(Metrics::new()),
        stopping: AtomicBool::new(false),
        reading: AtomicBool::new(false),
    });

    tracing::info!(
        consumer = %worker.consumer,
        channels = ?worker.channel_names(),
        shards = worker.base_shards,
        metrics = ?worker.config.metrics_bind,
        "worker starting"
    );
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve(listener, worker.metrics.clone()));
    }
    crate::maintenance::announce(&worker).await;
    if let Err(error) = worker.refresh_shards().await {
        tracing::debug!(%error, "cannot read the announced channel shards yet");
    }
    let reader = tokio::spawn(crate::reader::run(worker.clone()));
    let maintenance = tokio::spawn(crate::maintenance::run(worker.clone()));
    for task in worker.periodic.clone() {
        tokio::spawn(crate::periodic::run(worker.clone(), task));
    }

    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let signal = signals.next().await;
    tracing::info!(?signal, "stopping: finishing messages in hand");
    worker.stopping.store(true, Ordering::Relaxed);
    let _ = reader.await;
    let all = worker.config.concurrency as u32;
    let finished = tokio::time::timeout(worker.config.drain_timeout(), worker.permits.acquire_many(all)).await;
    if finished.is_err() {
        tracing::warn!("drain timeout: leaving unfinished messages to other workers");
    }
    maintenance.abort();
    crate::maintenance::leave(&worker).await;
    tracing::info!("worker stopped");
    Ok(())
}

/// `--channel-shards`, or one shard per primary; 1 while Redis cannot be asked
/// (the shard counts interfaces announce are read again every second).
async fn base_shards(config: &WorkerConfig, redis: &Redis) -> u16 {
    let mut con = redis.clone();
    match tokio::time::timeout(Duration::from_secs(5), shards::resolve(config.channel_shards, &mut con)).await {
        Ok(Ok(count)) => count,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot count the cluster's primaries; reading one shard per channel until interfaces announce theirs");
            1
        }
        Err(_) => 1,
    }
}

/// Test hook and CLI helper: how long the reader blocks per call.
pub(crate) const READ_BLOCK: Duration = Duration::from_millis(1000);
