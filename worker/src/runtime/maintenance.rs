//! Keeping the pool healthy: liveness, taking over a dead worker's messages,
//! trimming.
//!
//! Every second a worker
//! - refreshes its liveness key (expires 3 s after the last refresh),
//! - looks at the pending entries of its channels: entries owned by a
//!   consumer whose liveness key is gone are claimed and handled here —
//!   so a `kill -9`ed worker's messages move on within a few seconds,
//! - trims entries that are delivered and acknowledged,
//! - sweeps the group members of interfaces that died
//!   (`protocol/src/sweep.rs`; live interfaces do the same, whoever is first).
//!
//! Every ten seconds, as a backstop, `XAUTOCLAIM` takes over entries idle for
//! longer than `--claim-idle` whoever owns them, and consumers that are dead
//! and own nothing are removed from the group.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use switchyard_protocol::liveness::{self, Role};
use switchyard_protocol::redis_conn::SlotBatch;
use switchyard_protocol::stream::{parse_autoclaim_reply, parse_entries, trim_acked, StreamEntry};
use switchyard_protocol::{sweep, xinfo, WORKER_GROUP};

use crate::runtime::Worker;
use crate::runtime::{packed, redelivery};

const EVERY: Duration = Duration::from_secs(1);
const LIVENESS_TTL: Duration = Duration::from_secs(3);
const BACKSTOP_EVERY: u64 = 10;
const CLAIM_BATCH: usize = 256;

pub async fn run(worker: Arc<Worker>) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick: u64 = 0;
    loop {
        ticker.tick().await;
        tick += 1;
        announce(&worker).await;
        if worker.stopping() {
            continue;
        }
        if let Err(error) = worker.refresh_shards().await {
            tracing::debug!(%error, "cannot read the announced channel shards");
        }
        sweep::sweep_logged(&worker.redis, &worker.keys).await;
        for stream in worker.streams() {
            if let Err(error) = take_over_dead(&worker, &stream).await {
                tracing::debug!(%error, stream, "claim pass failed");
            }
            if tick.is_multiple_of(BACKSTOP_EVERY) {
                if let Err(error) = backstop(&worker, &stream).await {
                    tracing::debug!(%error, stream, "backstop claim failed");
                }
            }
            let mut con = worker.redis.clone();
            if let Err(error) = trim_acked(&mut con, &stream, WORKER_GROUP).await {
                tracing::debug!(%error, stream, "trim failed");
            }
        }
    }
}

/// Publishes (or refreshes) this worker's liveness key.
pub async fn announce(worker: &Worker) {
    let channels = worker.channel_names();
    let info = serde_json::json!({
        "consumer": worker.member,
        "pid": std::process::id(),
        "channels": channels,
        "in_flight": worker.config.concurrency - worker.permits.available_permits(),
        "stopping": worker.stopping(),
        "reading": worker.reading(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let mut batch = SlotBatch::new();
    liveness::beat(
        &mut batch,
        &worker.keys,
        Role::Worker,
        &worker.member,
        &info.to_string(),
        LIVENESS_TTL,
    );
    if let Err(error) = batch.run_all(&worker.redis).await {
        tracing::warn!(%error, "cannot refresh liveness key");
    }
}

/// Removes this worker from Redis after a graceful stop.
pub async fn leave(worker: &Worker) {
    let mut con = worker.redis.clone();
    for stream in worker.streams() {
        // Only leave the group with nothing pending; otherwise others claim it.
        let pending: redis::RedisResult<Value> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(WORKER_GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&worker.member)
            .query_async(&mut con)
            .await;
        if matches!(&pending, Ok(Value::Array(items)) if items.is_empty()) {
            let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&stream)
                .arg(WORKER_GROUP)
                .arg(&worker.member)
                .query_async(&mut con)
                .await;
        }
    }
    let _ = liveness::leave(&worker.redis, &worker.keys, Role::Worker, &worker.member).await;
}

/// Consumers with pending entries on `stream`, with their counts.
async fn pending_owners(worker: &Worker, stream: &str) -> redis::RedisResult<Vec<(String, u64)>> {
    let mut con = worker.redis.clone();
    let summary: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(WORKER_GROUP)
        .query_async(&mut con)
        .await?;
    let mut owners = Vec::new();
    if let Value::Array(parts) = summary {
        if let Some(Value::Array(consumers)) = parts.get(3) {
            for pair in consumers {
                if let Value::Array(fields) = pair {
                    if let [name, count] = fields.as_slice() {
                        let name: String = redis::from_redis_value(name.clone())?;
                        let count: u64 = redis::from_redis_value(count.clone())?;
                        owners.push((name, count));
                    }
                }
            }
        }
    }
    Ok(owners)
}

/// Claims and handles the entries of consumers that are no longer alive.
async fn take_over_dead(worker: &Arc<Worker>, stream: &str) -> redis::RedisResult<()> {
    let owners: Vec<String> = pending_owners(worker, stream)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| *name != worker.member)
        .collect();
    if owners.is_empty() {
        return Ok(());
    }
    let alive = liveness::alive(&worker.redis, &worker.keys, Role::Worker, &owners).await?;
    let mut con = worker.redis.clone();
    for (dead, _) in owners.iter().zip(alive).filter(|(_, alive)| !alive) {
        let pending: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(WORKER_GROUP)
            .arg("-")
            .arg("+")
            .arg(CLAIM_BATCH)
            .arg(dead)
            .query_async(&mut con)
            .await?;
        let ids: Vec<String> = match &pending {
            Value::Array(rows) => rows
                .iter()
                .filter_map(|row| match row {
                    Value::Array(fields) => fields.first().and_then(|id| redis::from_redis_value(id.clone()).ok()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if ids.is_empty() {
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(stream)
                .arg(WORKER_GROUP)
                .arg(dead)
                .query_async(&mut con)
                .await?;
            tracing::info!(consumer = %dead, stream, "removed dead consumer from the group");
            continue;
        }
        let claimed: Value = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(WORKER_GROUP)
            .arg(&worker.member)
            .arg(0)
            .arg(&ids)
            .query_async(&mut con)
            .await?;
        let entries = parse_entries(claimed);
        worker.metrics.claimed.inc_by(entries.len() as u64);
        tracing::warn!(consumer = %dead, stream, claimed = entries.len(), "took over the messages of a dead worker");
        handle_claimed(worker, stream, entries).await;
    }
    Ok(())
}

/// Takes over entries idle longer than `--claim-idle`, and removes dead
/// consumers that own nothing.
async fn backstop(worker: &Arc<Worker>, stream: &str) -> redis::RedisResult<()> {
    let mut con = worker.redis.clone();
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(WORKER_GROUP)
        .arg(&worker.member)
        .arg(worker.config.claim_idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(CLAIM_BATCH)
        .query_async(&mut con)
        .await?;
    let (_, entries) = parse_autoclaim_reply(reply);
    worker.metrics.claimed.inc_by(entries.len() as u64);
    if !entries.is_empty() {
        tracing::warn!(
            stream,
            claimed = entries.len(),
            "took over messages idle longer than --claim-idle"
        );
        handle_claimed(worker, stream, entries).await;
    }
    let idle_empty: Vec<String> = xinfo::consumers(&mut con, stream, WORKER_GROUP)
        .await?
        .into_iter()
        .filter(|c| c.pending == 0 && c.idle_ms > 10_000 && c.name != worker.member)
        .map(|c| c.name)
        .collect();
    if idle_empty.is_empty() {
        return Ok(());
    }
    let alive = liveness::alive(&worker.redis, &worker.keys, Role::Worker, &idle_empty).await?;
    for (name, _) in idle_empty.iter().zip(alive).filter(|(_, alive)| !alive) {
        let _: i64 = redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(stream)
            .arg(WORKER_GROUP)
            .arg(name)
            .query_async(&mut con)
            .await?;
    }
    Ok(())
}

/// Handles claimed entries' messages with the usual permits, without waiting for them
/// (the one that may have killed their last handler isolated: `redelivery`).
async fn handle_claimed(worker: &Arc<Worker>, stream: &str, entries: Vec<StreamEntry>) {
    let items = entries
        .into_iter()
        .flat_map(packed::split)
        .map(|incoming| (incoming, ()))
        .collect();
    tokio::spawn(redelivery::run(worker.clone(), stream.to_owned(), items));
}
