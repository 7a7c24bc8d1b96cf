//! Switchyard's interface server.
//!
//! It terminates HTTP and WebSocket connections and holds the sockets; the
//! application runs in workers. Reading order for a newcomer:
//!
//! 1. [`config`] and [`router`]: what the server is told to do,
//! 2. [`server`] and [`http`]: accepting connections and routing requests;
//!    [`proxy`]: HTTP requests through workers; [`static_files`],
//! 3. [`websocket`]: the handshake, the frame reader, the connection task,
//! 4. [`outbound`] and [`replies`]: the two directions through Redis,
//! 5. [`groups`]: broadcast fan-out ([`membership`]: its records in Redis),
//!    [`presence`]: liveness and readiness,
//! 6. [`shutdown`]: graceful draining.

pub mod admission;
pub mod config;
pub mod groups;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod outbound;
pub mod presence;
pub mod proxy;
pub mod registry;
pub mod replies;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod static_files;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::{shards, Keys};

use crate::config::Config;
use crate::groups::Groups;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::registry::Registry;
use crate::state::Shared;
use crate::static_files::StaticFiles;

/// A connection ceiling for people: `unlimited` or the number.
pub fn describe_limit(limit: Option<usize>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// `--channel-shards`, or one shard per primary of the cluster; 1 if Redis
/// cannot be asked at start (a working, if less spread, choice).
async fn channel_shards(config: &Config, redis: &Redis) -> u16 {
    let mut con = redis.clone();
    match tokio::time::timeout(Duration::from_secs(5), shards::resolve(config.channel_shards, &mut con)).await {
        Ok(Ok(count)) => count,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot count the cluster's primaries; one shard per channel");
            1
        }
        Err(_) => {
            tracing::warn!("Redis did not answer in time; one shard per channel");
            config.channel_shards.max(1)
        }
    }
}

/// Runs the interface until SIGTERM or SIGINT, then drains and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let routes = config.route_tables()?;
    let statics = StaticFiles::new(config.static_mounts(), config.static_max_age)?;
    let client = config.redis.open_at_start().await?;
    let redis = client.shared().context("--redis-url")?;
    let shards = channel_shards(&config, &redis).await;
    let id = config
        .id
        .clone()
        .unwrap_or_else(|| format!("if-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    let keys = Keys::new(config.prefix.clone());
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::default());
    let groups = Groups::start(
        client.clone(),
        redis.clone(),
        keys,
        id.clone(),
        config.group_expiry(),
        registry.clone(),
    );
    let outbound_settings = outbound::Settings {
        hold: config.redis_hold(),
        wait_replicas: config.redis.wait_replicas,
    };
    let (outbound, _batcher) = Outbound::start(redis.clone(), outbound_settings, metrics.clone());
    let (trigger, shutdown) = shutdown::channel();
    let listener = server::bind(config.bind, config.reuse_port)
        .with_context(|| format!("--bind: cannot listen on {}", config.bind))?;
    let shutdown_timeout = config.shutdown_timeout();
    let shared = Arc::new(Shared::new(
        config, id, routes, statics, redis, shards, registry, groups, outbound, metrics, shutdown,
    ));

    tokio::spawn(replies::run(client, shared.clone()));
    tokio::spawn(presence::run(shared.clone()));
    let server = tokio::spawn(server::run(listener, shared.clone()));
    let describe = |routes: &router::Routes| -> Vec<String> {
        routes.iter().map(|t| format!("{}={}", t.prefix, t.channel)).collect()
    };
    let statics: Vec<String> = shared
        .statics
        .mounts()
        .map(|(prefix, dir)| format!("{prefix}={}", dir.display()))
        .collect();
    tracing::info!(
        interface = %shared.id,
        bind = %shared.config.bind,
        routes = ?describe(&shared.routes),
        http_routes = ?describe(&shared.http_routes),
        statics = ?statics,
        channel_shards = shared.shards,
        max_connections = %describe_limit(shared.config.effective_max_connections()),
        "interface listening"
    );

    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let signal = signals.next().await;
    tracing::info!(
        ?signal,
        connections = shared.registry.len(),
        "shutting down: draining connections"
    );
    trigger.start(shutdown_timeout);
    let _ = server.await;

    let deadline = tokio::time::Instant::now() + shutdown_timeout + Duration::from_millis(500);
    while !shared.registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), shared.groups.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), shared.outbound.flush()).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), presence::leave(&shared)).await;
    tracing::info!(left_open = shared.registry.len(), "interface stopped");
    Ok(())
}
