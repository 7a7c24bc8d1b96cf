//! Keeping the pool healthy: liveness, taking over a dead worker's messages,
//! trimming.
//!
//! Every second a worker
//! - refreshes its liveness key (expires 3 s after the last refresh),
//! - looks at the pending entries of its channels: entries owned by a
//!   consumer whose liveness key is gone are claimed and handled here —
//!   so a `kill -9`ed worker's messages move on within a few seconds,
//! - trims entries that are delivered and acknowledged.
//!
//! Every ten seconds, as a backstop, `XAUTOCLAIM` takes over entries idle for
//! longer than `--claim-idle` whoever owns them, and consumers that are dead
//! and own nothing are removed from the group.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use switchyard_protocol::redis_conn::SlotBatch;
use switchyard_protocol::stream::{fields, items, parse_autoclaim_reply, parse_entries, trim_acked, StreamEntry};
use switchyard_protocol::WORKER_GROUP;

use crate::handler;
use crate::runtime::Worker;

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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Publishes (or refreshes) this worker's liveness key.
pub async fn announce(worker: &Worker) {
    let channels = worker.channel_names();
    let info = serde_json::json!({
        "consumer": worker.consumer,
        "pid": std::process::id(),
        "channels": channels,
        "in_flight": worker.config.concurrency - worker.permits.available_permits(),
        "stopping": worker.stopping(),
        "reading": worker.reading(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let alive = worker.keys.worker_alive(&worker.consumer);
    let index = worker.keys.workers_index();
    let mut batch = SlotBatch::new();
    let mut set = redis::cmd("SET");
    set.arg(&alive)
        .arg(info.to_string())
        .arg("PX")
        .arg(LIVENESS_TTL.as_millis() as u64);
    batch.add(&alive, set);
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(&index).arg(now_ms()).arg(&worker.consumer);
    batch.add(&index, zadd);
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
            .arg(&worker.consumer)
            .query_async(&mut con)
            .await;
        if matches!(&pending, Ok(Value::Array(items)) if items.is_empty()) {
            let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&stream)
                .arg(WORKER_GROUP)
                .arg(&worker.consumer)
                .query_async(&mut con)
                .await;
        }
    }
    let alive = worker.keys.worker_alive(&worker.consumer);
    let index = worker.keys.workers_index();
    let mut batch = SlotBatch::new();
    let mut del = redis::cmd("DEL");
    del.arg(&alive);
    batch.add(&alive, del);
    let mut zrem = redis::cmd("ZREM");
    zrem.arg(&index).arg(&worker.consumer);
    batch.add(&index, zrem);
    let _ = batch.run_all(&worker.redis).await;
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

/// Whether each consumer's liveness key exists.
async fn alive(worker: &Worker, consumers: &[String]) -> redis::RedisResult<Vec<bool>> {
    let mut batch = SlotBatch::new();
    for consumer in consumers {
        let key = worker.keys.worker_alive(consumer);
        let mut exists = redis::cmd("EXISTS");
        exists.arg(&key);
        batch.add(&key, exists);
    }
    batch
        .run(&worker.redis)
        .await
        .into_iter()
        .map(|outcome| Ok(matches!(outcome?, Value::Int(n) if n > 0)))
        .collect()
}

/// Claims and handles the entries of consumers that are no longer alive.
async fn take_over_dead(worker: &Arc<Worker>, stream: &str) -> redis::RedisResult<()> {
    let owners: Vec<String> = pending_owners(worker, stream)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| *name != worker.consumer)
        .collect();
    if owners.is_empty() {
        return Ok(());
    }
    let liveness = alive(worker, &owners).await?;
    let mut con = worker.redis.clone();
    for (dead, _) in owners.iter().zip(liveness).filter(|(_, alive)| !alive) {
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
            .arg(&worker.consumer)
            .arg(0)
            .arg(&ids)
            .query_async(&mut con)
            .await?;
        let entries = parse_entries(&claimed);
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
        .arg(&worker.consumer)
        .arg(worker.config.claim_idle * 1000)
        .arg("0-0")
        .arg("COUNT")
        .arg(CLAIM_BATCH)
        .query_async(&mut con)
        .await?;
    let (_, entries) = parse_autoclaim_reply(&reply);
    worker.metrics.claimed.inc_by(entries.len() as u64);
    if !entries.is_empty() {
        tracing::warn!(
            stream,
            claimed = entries.len(),
            "took over messages idle longer than --claim-idle"
        );
        handle_claimed(worker, stream, entries).await;
    }
    let consumers: Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(WORKER_GROUP)
        .query_async(&mut con)
        .await?;
    let idle_empty: Vec<String> = items(&consumers)
        .iter()
        .filter_map(|info| {
            let fields = fields(info);
            let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| (*v).clone());
            let name: String = redis::from_redis_value(get("name")?).ok()?;
            let pending: i64 = redis::from_redis_value(get("pending")?).ok()?;
            let idle: i64 = redis::from_redis_value(get("idle")?).ok()?;
            (pending == 0 && idle > 10_000 && name != worker.consumer).then_some(name)
        })
        .collect();
    if idle_empty.is_empty() {
        return Ok(());
    }
    let liveness = alive(worker, &idle_empty).await?;
    for (name, _) in idle_empty.iter().zip(liveness).filter(|(_, alive)| !alive) {
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

/// Handles claimed entries with the usual permits, without waiting for them.
async fn handle_claimed(worker: &Arc<Worker>, stream: &str, entries: Vec<StreamEntry>) {
    for entry in entries {
        let Ok(permit) = worker.permits.clone().acquire_owned().await else {
            return;
        };
        let worker = worker.clone();
        let stream = stream.to_owned();
        tokio::spawn(async move {
            handler::handle(&worker, &stream, entry, true).await;
            drop(permit);
        });
    }
}
