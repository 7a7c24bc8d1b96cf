//! The worker runtime: how a message is read, handled and committed once,
//! and the process's life around it.
//!
//! One message's route, in file order: [`intake`] reads it off a channel
//! shard (`XREADGROUP`; [`packed`] splits an entry holding several) → [`dispatch`] decodes it and runs the WebSocket
//! consumer (or [`http_request`] the HTTP app) → [`commit`] makes its effects
//! happen once, in four slot-local steps, and acknowledges it. Beside that,
//! [`maintenance`] keeps the pool healthy (liveness, taking over a dead
//! worker's messages, trimming, new shards) and [`ticks`] runs the pool-wide
//! periodic tasks; [`state`] is what they all share.
//!
//! Start: join the consumer group of every served shard, publish a liveness
//! key, then read. When `shutdown` resolves: stop reading, finish every
//! message in hand (commit, ack), leave the group, delete the liveness key —
//! the interfaces and their sockets never notice.

mod absorb;
pub(crate) mod commit;
mod dispatch;
mod http_request;
mod intake;
mod maintenance;
mod packed;
mod read_batch;
mod redelivery;
mod state;
mod ticks;

pub use absorb::install_panic_hook;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::{shards, Keys};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::api::app::{Apps, ChannelApp, Periodic};
use crate::config::WorkerConfig;
use crate::metrics::{self, Metrics};
use commit::Committer;
pub(crate) use state::Worker;

/// A channel with the app that serves it.
pub type ServedChannel = (String, ChannelApp);

/// Which channels and periodic tasks this process serves, after the globs.
pub fn select(config: &WorkerConfig, apps: &Apps) -> anyhow::Result<(Vec<ServedChannel>, Vec<Periodic>)> {
    let mut channels = Vec::new();
    for (channel, app) in &apps.channels {
        if config.serves(channel)? {
            channels.push((channel.clone(), app.clone()));
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

/// Runs the worker until `shutdown` resolves, then stops gracefully.
pub async fn run(config: WorkerConfig, apps: Apps, shutdown: impl Future) -> anyhow::Result<()> {
    let (channels, periodic) = select(&config, &apps)?;
    if channels.is_empty() {
        anyhow::bail!(
            "--only-channels/--exclude-channels leave no channel to serve (available: {})",
            apps.channel_names().join(", ")
        );
    }
    let keys = Keys::new(config.prefix.clone());
    let client = config.redis.open_at_start().await?;
    let redis = client.shared().context("--redis-url")?;
    let member = config.member_name();
    let metrics_listener = match config.metrics_bind {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let base_shards = base_shards(&config, &redis).await;
    let metrics = Arc::new(Metrics::new());
    let committer = Committer::start(commit::Settings {
        redis: client.shared().context("--redis-url")?,
        keys: keys.clone(),
        member: member.clone(),
        reply_ttl: config.reply_ttl,
        session_ttl: config.session_ttl,
        history: config.history.history(),
        wait_replicas: config.redis.wait_replicas,
        watch: (!client.is_cluster() && config.redis.wait_replicas == 0 && config.commit_watch_min > 0).then(|| {
            commit::Watch::new(
                client.clone(),
                config.commit_watch_min,
                // One connection per commit batch and per read batch under way.
                commit::BATCHES_IN_FLIGHT + read_batch::IN_FLIGHT,
                metrics.clone(),
            )
        }),
    });
    let apps: HashMap<String, ChannelApp> = channels.into_iter().collect();
    let mut streams: Vec<String> = apps
        .keys()
        .flat_map(|channel| keys.channel_streams(channel, base_shards))
        .collect();
    streams.sort();
    let worker = Arc::new(Worker {
        permits: Arc::new(Semaphore::new(config.concurrency)),
        apps,
        base_shards,
        streams: watch::Sender::new(streams),
        config,
        member,
        keys,
        client,
        redis,
        periodic,
        committer,
        metrics,
        stop: watch::Sender::new(false),
        reading: AtomicBool::new(false),
    });

    tracing::info!(
        member = %worker.member,
        channels = ?worker.channel_names(),
        shards = worker.base_shards,
        metrics = ?worker.config.metrics_bind,
        "worker starting"
    );
    // Tasks that run until the process ends; aborted (and awaited) at the end.
    let mut background = JoinSet::new();
    if let Some(listener) = metrics_listener {
        background.spawn(metrics::serve(listener, worker.metrics.clone()));
    }
    maintenance::announce(&worker).await;
    if let Err(error) = worker.refresh_shards().await {
        tracing::debug!(%error, "cannot read the announced channel shards yet");
    }
    let intake = tokio::spawn(intake::run(worker.clone()));
    background.spawn(maintenance::run(worker.clone()));
    for task in worker.periodic.clone() {
        background.spawn(ticks::run(worker.clone(), task));
    }

    shutdown.await;
    tracing::info!("stopping: finishing messages in hand");
    worker.stop.send_replace(true);
    if let Err(error) = intake.await {
        tracing::error!(%error, "the intake task failed");
    }
    // Every message in hand holds a permit until it is committed (or given up).
    let all = worker.config.concurrency as u32;
    let finished = tokio::time::timeout(worker.config.drain_timeout, worker.permits.acquire_many(all)).await;
    if finished.is_err() {
        tracing::warn!("drain timeout: leaving unfinished messages to other workers");
    }
    background.shutdown().await;
    maintenance::leave(&worker).await;
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

/// How long a read blocks per call (and so how soon a stopping worker's last
/// read ends).
pub(crate) const READ_BLOCK: Duration = Duration::from_millis(1000);
