//! Presence: this interface tells Redis it is alive, and learns whether Redis
//! and the workers are.
//!
//! Every second the interface writes a liveness key with its figures
//! (connections, routes, groups) for `switchyard status`, refreshes its entry in
//! the interfaces index and the expiry of its reply stream, and records whether
//! the round trip worked — that is what `/readyz` reports as "Redis reachable".
//! It then reads the workers' liveness keys (`P:worker:*`, listed in the
//! workers index) and counts the live workers per channel (reading, not
//! stopping): a routed channel without one is *unserved* — its handshakes and
//! requests get 503 at once (`front::unserved`; with `--ready-requires-workers`
//! `/readyz` says 503 too). Every ten
//! beats it announces its channel shard count, so workers read every shard it
//! appends to (again after Redis lost its data).
//!
//! Each beat also sweeps the group members of interfaces that died
//! (`protocol/src/sweep.rs`; workers do the same, whoever comes first). After
//! beats interrupted for `sweep::STALE` or longer, others may have taken this
//! interface for dead and swept its members: it writes them again at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_protocol::liveness::{self, Role};
use switchyard_protocol::redis_conn::SlotBatch;
use switchyard_protocol::{shards, sweep};
use tokio::time::Instant;

use crate::state::Shared;

const EVERY: Duration = Duration::from_secs(1);
const TTL: Duration = liveness::INTERFACE_TTL;
/// Beats interrupted this long: others may have taken this interface for dead.
const SWEPT_AFTER: Duration = sweep::STALE;
/// Matches the workers' default `--reply-ttl`.
const REPLY_TTL: Duration = Duration::from_secs(60);
/// Beats between two announcements of the channel shard count.
const ANNOUNCE_EVERY: u64 = 10;
/// Workers seen longer ago than this in the index are not even looked up
/// (their 3 s liveness keys are long gone).
const WORKER_SEEN: Duration = Duration::from_secs(10);

pub async fn run(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats: u64 = 0;
    let mut last_ok = Instant::now();
    loop {
        ticker.tick().await;
        let ok = beat(&shared).await;
        if ok {
            if last_ok.elapsed() >= SWEPT_AFTER {
                shared.groups.refresh();
            }
            last_ok = Instant::now();
            sweep::sweep_logged(&shared.redis, &shared.keys).await;
        }
        if ok && beats.is_multiple_of(ANNOUNCE_EVERY) {
            announce_shards(&shared).await;
        }
        beats += 1;
        if ok {
            match live_workers(&shared).await {
                Ok(workers) => shared.set_live_workers(workers),
                Err(error) => tracing::debug!(%error, "cannot read the workers' liveness keys"),
            }
        }
        // (The first successful beat is not news: readiness starts false until it.)
        if ok != shared.redis_ok() && !(ok && beats == 1) {
            if ok {
                tracing::info!("Redis reachable again");
            } else {
                tracing::warn!("Redis unreachable; sockets stay open, messages are held");
            }
        }
        shared.set_redis_ok(ok);
    }
}

async fn beat(shared: &Shared) -> bool {
    let routes: Vec<(&str, &str, &str)> = shared
        .routes
        .iter()
        .map(|t| (&*t.prefix, &*t.channel, "websocket"))
        .chain(shared.http_routes.iter().map(|t| (&*t.prefix, &*t.channel, "http")))
        .collect();
    let info = serde_json::json!({
        "id": shared.id,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "bind": shared.config.bind.to_string(),
        "connections": shared.registry.len(),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "draining": shared.shutdown.is_draining(),
        "routes": routes,
        "groups": shared.groups.sizes(),
    });
    let reply_stream = shared.keys.reply_stream(&shared.id);
    let seqs = shared.keys.connection_seqs(&shared.id);
    let mut batch = SlotBatch::new();
    liveness::beat(
        &mut batch,
        &shared.keys,
        Role::Interface,
        &shared.id,
        &info.to_string(),
        TTL,
    );
    // Our reply stream and sequence table live as long as we do.
    for key in [&reply_stream, &seqs] {
        let mut pexpire = redis::cmd("PEXPIRE");
        pexpire.arg(key).arg(REPLY_TTL.as_millis() as u64);
        batch.add(key, pexpire);
    }
    batch.run_all(&shared.redis).await.is_ok()
}

/// Announces the shard count of every routed channel.
async fn announce_shards(shared: &Shared) {
    let mut con = shared.redis.clone();
    for channel in shared.routed_channels() {
        if let Err(error) = shards::announce(&mut con, &shared.keys, &channel, shared.shards).await {
            tracing::debug!(%error, channel = %channel, "cannot announce the channel shard count");
            return;
        }
    }
}

/// Removes this interface's liveness key at shutdown.
pub async fn leave(shared: &Shared) {
    let _ = liveness::leave(&shared.redis, &shared.keys, Role::Interface, &shared.id).await;
}

/// Live workers per channel (reading, not stopping), from their liveness keys.
async fn live_workers(shared: &Shared) -> redis::RedisResult<HashMap<String, usize>> {
    let mut counts = HashMap::new();
    for (_, info) in liveness::live(&shared.redis, &shared.keys, Role::Worker, Some(WORKER_SEEN)).await? {
        let Ok(info) = serde_json::from_str::<serde_json::Value>(&info) else {
            continue;
        };
        // A stopping worker reads nothing more; a starting one has not read yet.
        if info["stopping"].as_bool() == Some(true) || info["reading"].as_bool() == Some(false) {
            continue;
        }
        for channel in info["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
        {
            *counts.entry(channel.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}
