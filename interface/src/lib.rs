//! Switchyard's interface server.
//!
//! It terminates HTTP and WebSocket connections and holds the sockets; the
//! application runs in workers. The folders follow one client message:
//!
//! 1. [`front`]: the listener, admission, and [`front::dispatch`], which sends
//!    each request to its place — a WebSocket handshake, the workers
//!    ([`front::proxy`]), a static file or the interface's own endpoints;
//! 2. [`websocket`]: the handshake, the frame reader ([`websocket::frames`]),
//!    the connection task that keeps one message in flight
//!    ([`websocket::connection`], its rules in [`websocket::flow`]);
//! 3. [`bus`]: the Redis side — [`bus::outbound`] appends the message to its
//!    channel's stream; a worker handles it and appends the answer to this
//!    interface's reply stream, which [`bus::replies`] reads and hands through
//!    the [`bus::registry`] back to the connection, which writes the frame out.
//!    Broadcasts come through [`bus::groups`]; [`bus::presence`] keeps the
//!    liveness record.
//!
//! Beside them: [`config`] (flags), [`state`] (what every task shares),
//! [`metrics`], and [`shutdown`] (draining, and waiting for every socket).

pub mod bus;
pub mod config;
pub mod front;
pub mod metrics;
pub mod shutdown;
pub mod state;
pub mod websocket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::{shards, Keys};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::bus::groups::Groups;
use crate::bus::outbound::{self, Outbound};
use crate::bus::registry::Registry;
use crate::bus::{backlog, presence, replies};
use crate::config::Config;
use crate::front::router::Routes;
use crate::front::server;
use crate::front::static_files::StaticFiles;
use crate::metrics::Metrics;
use crate::state::Shared;

/// A connection ceiling for people: `unlimited` or the number.
pub fn describe_limit(limit: Option<usize>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// Binds `--bind` (with `--reuse-port`); the error names the flag.
pub fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    server::bind(config.bind, config.reuse_port).with_context(|| format!("--bind: cannot listen on {}", config.bind))
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

/// Serves `listener` until `shutdown` completes, then drains: the listener
/// closes, every connection says goodbye before `--shutdown-timeout`, and
/// this returns once the last one has ended (or the time is up).
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future) -> anyhow::Result<()> {
    // Before anything else, so a taken admin port stops the start naming the flag.
    let admin = match config.admin_bind {
        Some(address) => Some(front::admin::bind(address).await?),
        None => None,
    };
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
    // Tasks that live as long as the interface; stopped (and awaited) at the end.
    let mut background = JoinSet::new();
    let groups = Groups::start(
        client.clone(),
        redis.clone(),
        keys,
        id.clone(),
        config.group_expiry,
        registry.clone(),
        &mut background,
    );
    let outbound_settings = outbound::Settings {
        hold: config.redis_hold,
        wait_replicas: config.redis.wait_replicas,
        pack: config.pack_entries,
    };
    let outbound = Outbound::start(redis.clone(), outbound_settings, metrics.clone(), &mut background);
    let (mut trigger, draining) = shutdown::channel();
    let shutdown_timeout = config.shutdown_timeout;
    let shared = Arc::new(Shared::new(
        config, id, routes, statics, redis, shards, registry, groups, outbound, metrics, draining,
    ));

    shared.outbound.follow_backlogs(shared.backlogs.clone());
    background.spawn(replies::run(client, shared.clone()));
    background.spawn(presence::run(shared.clone()));
    background.spawn(backlog::run(
        shared.redis.clone(),
        shared.backlogs.clone(),
        shared.metrics.clone(),
    ));
    if let Some(admin) = admin {
        background.spawn(front::admin::run(admin, shared.clone()));
    }
    let server = tokio::spawn(server::run(listener, shared.clone()));
    log_start(&shared);

    shutdown.await;
    tracing::info!(
        connections = shared.registry.len(),
        "shutting down: draining connections"
    );
    trigger.start(shutdown_timeout);
    if let Err(error) = server.await {
        tracing::error!(%error, "the listener task failed");
    }
    let all_closed = tokio::time::timeout(shutdown_timeout + Duration::from_millis(500), trigger.finished()).await;
    if all_closed.is_err() {
        tracing::warn!(
            left_open = shared.registry.len(),
            "shutdown timeout: connections left open"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), shared.groups.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), shared.outbound.flush()).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), presence::leave(&shared)).await;
    background.shutdown().await;
    tracing::info!(left_open = shared.registry.len(), "interface stopped");
    Ok(())
}

fn log_start(shared: &Shared) {
    let describe =
        |routes: &Routes| -> Vec<String> { routes.iter().map(|t| format!("{}={}", t.prefix, t.channel)).collect() };
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
        admin = ?shared.config.admin_bind,
        trusted_proxies = ?shared.config.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "interface listening"
    );
}
