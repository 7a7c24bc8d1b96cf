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
use redis::aio::ConnectionManager;
use signal_hook::consts::{SIGINT, SIGTERM};
use switchyard_protocol::{redis_conn, stream, Keys, WORKER_GROUP};
use tokio::sync::Semaphore;

use crate::app::{Apps, Consumer, Periodic};
use crate::commit::Committer;
use crate::config::WorkerConfig;
use crate::metrics::{self, Metrics};

/// State shared by the worker's tasks.
pub struct Worker {
    pub(crate) config: WorkerConfig,
    pub(crate) consumer: String,
    pub(crate) keys: Keys,
    pub(crate) client: redis::Client,
    pub(crate) redis: ConnectionManager,
    /// Served channel stream key → (channel, consumer).
    pub(crate) channels: HashMap<String, (String, Consumer)>,
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

    pub(crate) fn streams(&self) -> Vec<String> {
        let mut streams: Vec<String> = self.channels.keys().cloned().collect();
        streams.sort();
        streams
    }

    /// Creates the consumer group on every served stream.
    pub(crate) async fn ensure_groups(&self) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        for stream in self.channels.keys() {
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
    let redis = redis_conn::shared(&client).context("--redis-url")?;
    let consumer = config.consumer_name();
    let metrics_listener = match config.metrics_bind {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let committer = Committer::start(
        redis.clone(),
        keys.clone(),
        consumer.clone(),
        config.reply_ttl * 1000,
        config.session_ttl * 1000,
    );
    let worker = Arc::new(Worker {
        permits: Arc::new(Semaphore::new(config.concurrency)),
        channels: channels
            .into_iter()
            .map(|(channel, c)| (keys.channel_stream(&channel), (channel, c)))
            .collect(),
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

    let served: Vec<&str> = worker.channels.values().map(|(c, _)| c.as_str()).collect();
    tracing::info!(consumer = %worker.consumer, channels = ?served, metrics = ?worker.config.metrics_bind, "worker starting");
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve(listener, worker.metrics.clone()));
    }
    crate::maintenance::announce(&worker).await;
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

/// Test hook and CLI helper: how long the reader blocks per call.
pub(crate) const READ_BLOCK: Duration = Duration::from_millis(1000);
