//! The reader: pulls messages off the served channel streams.
//!
//! One `XREADGROUP` on a dedicated connection reads every served stream at
//! once, never more messages than there are free permits, and hands each to
//! its own task. The first reads on every connection ask for this consumer's
//! own pending entries (id `0`): a worker restarted under the same `--name`
//! picks up what its previous life left unacknowledged, and after a reconnect
//! the worker picks up entries Redis delivered to it whose reply the broken
//! connection swallowed (a Redis restart does that) — otherwise they would
//! wait for the `--claim-idle` backstop. Entries still in hand from before the
//! reconnect are skipped, so none is handled twice at once.
//!
//! When the worker is stopping it simply does not read again; its last
//! blocking read ends by itself within the block time, so no message is ever
//! delivered to a reader that is no longer there.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use switchyard_protocol::redis_conn::{self, Backoff};
use switchyard_protocol::stream::{parse_read_reply, StreamBatch};
use switchyard_protocol::WORKER_GROUP;

use crate::handler;
use crate::runtime::{Worker, READ_BLOCK};

const MAX_READ: usize = 256;

pub async fn run(worker: Arc<Worker>) {
    let streams = worker.streams();
    let mut backoff = Backoff::default();
    // Per stream: an id = our own pending entries after it (history);
    // ">" = new entries.
    let mut positions: Vec<String> = streams.iter().map(|_| "0".to_owned()).collect();
    // (stream, entry id) of every message being handled.
    let in_hand: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    while !worker.stopping() {
        let mut con = match redis_conn::blocking(&worker.client, READ_BLOCK).await {
            Ok(con) => con,
            Err(error) => {
                tracing::warn!(%error, "reader cannot reach Redis; retrying");
                backoff.wait().await;
                continue;
            }
        };
        if let Err(error) = worker.ensure_groups().await {
            tracing::warn!(%error, "cannot create consumer groups; retrying");
            backoff.wait().await;
            continue;
        }
        positions.iter_mut().for_each(|p| *p = "0".to_owned());
        while !worker.stopping() {
            // Wait for at least one free permit, then read as many as are free.
            let first = match worker.permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => return,
            };
            let count = (worker.permits.available_permits() + 1).min(MAX_READ);
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(WORKER_GROUP)
                .arg(&worker.consumer)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&streams);
            command.arg(&positions);
            let reply: redis::RedisResult<redis::Value> = command.query_async(&mut con).await;
            let value = match reply {
                Ok(value) => value,
                Err(error) => {
                    tracing::warn!(%error, "read failed; reconnecting");
                    drop(first);
                    break;
                }
            };
            backoff.reset();
            if worker.mark_reading() {
                crate::maintenance::announce(&worker).await;
            }
            let batches = parse_read_reply(&value);
            advance_history(&streams, &mut positions, &batches);
            let mut first = Some(first);
            for batch in batches {
                for entry in batch.entries {
                    let key = (batch.stream.clone(), entry.id.clone());
                    if !lock(&in_hand).insert(key.clone()) {
                        continue; // read again from our history while still in hand
                    }
                    let permit = match first.take() {
                        Some(permit) => permit,
                        None => match worker.permits.clone().acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    };
                    let worker = worker.clone();
                    let in_hand = in_hand.clone();
                    tokio::spawn(async move {
                        handler::handle(&worker, &key.0, entry).await;
                        lock(&in_hand).remove(&key);
                        drop(permit);
                    });
                }
            }
        }
        backoff.wait().await;
    }
}

fn lock<T>(set: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Moves each stream's history position past what was just read; a stream
/// whose history came back empty switches to new entries.
fn advance_history(streams: &[String], positions: &mut [String], batches: &[StreamBatch]) {
    for (stream, position) in streams.iter().zip(positions.iter_mut()) {
        if position == ">" {
            continue;
        }
        match batches
            .iter()
            .find(|b| &b.stream == stream)
            .and_then(|b| b.entries.last())
        {
            Some(last) => *position = last.id.clone(),
            None => *position = ">".to_owned(),
        }
    }
}
