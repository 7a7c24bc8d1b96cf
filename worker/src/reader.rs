//! The reader: pulls messages off the served channel streams.
//!
//! One `XREADGROUP` on a dedicated connection reads every served stream at
//! once, never more messages than there are free permits, and hands each to
//! its own task. The first reads ask for this consumer's own pending entries
//! (id `0`): a worker restarted under the same `--name` picks up what its
//! previous life left unacknowledged before it reads anything new. When the
//! worker is stopping it simply does not read again; its last blocking read
//! ends by itself within the block time, so no message is ever delivered to a
//! reader that is no longer there.
//!
//! After a failed read (and on every new connection) it reads its own pending
//! entries again, twice: at once and [`RECHECK`] later. A read whose answer
//! was lost (Redis frozen or restarted, a network cut: the client gave up, but
//! Redis ran the command) has put entries into this consumer's pending list
//! that no task holds; without the re-read they would wait for the
//! `--claim-idle` backstop. Redis may run the lost read only after the first
//! re-read, hence the second. Entries still in a handler's hands are skipped,
//! so none is handled twice at once. (Regression tests: `worker_reconnect`,
//! `redis_outage`.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use switchyard_protocol::redis_conn::{self, Backoff};
use switchyard_protocol::stream::{parse_read_reply, StreamBatch};
use switchyard_protocol::WORKER_GROUP;

use crate::handler;
use crate::runtime::{Worker, READ_BLOCK};

const MAX_READ: usize = 256;
/// When, after the first good read past a failure, the pending list is read again.
const RECHECK: Duration = Duration::from_secs(2);

/// Entries (stream, id) handed to a handler task and not yet finished.
#[derive(Default, Clone)]
struct InHand(Arc<Mutex<HashSet<(String, String)>>>);

impl InHand {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        // A panic while holding this lock cannot leave the set inconsistent.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks an entry as in hand until the returned guard drops (even by a
    /// panicking handler); `None` if it already is.
    fn take(&self, key: (String, String)) -> Option<Held> {
        self.set().insert(key.clone()).then(|| Held {
            in_hand: self.clone(),
            key,
        })
    }
}

struct Held {
    in_hand: InHand,
    key: (String, String),
}

impl Drop for Held {
    fn drop(&mut self) {
        self.in_hand.set().remove(&self.key);
    }
}

pub async fn run(worker: Arc<Worker>) {
    let streams = worker.streams();
    let mut backoff = Backoff::default();
    // Per stream: an id = our own pending entries after it (history);
    // ">" = new entries.
    let mut positions: Vec<String> = streams.iter().map(|_| "0".to_owned()).collect();
    let in_hand = InHand::default();
    // Set by a failed read: read the pending list again after the next good read.
    let mut recheck = false;
    let mut recheck_at: Option<Instant> = None;
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
            if recheck_at.is_some_and(|at| Instant::now() >= at) {
                recheck_at = None;
                positions.iter_mut().for_each(|p| *p = "0".to_owned());
            }
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
                    positions.iter_mut().for_each(|p| *p = "0".to_owned());
                    recheck = true;
                    break;
                }
            };
            backoff.reset();
            if std::mem::take(&mut recheck) {
                recheck_at = Some(Instant::now() + RECHECK);
            }
            if worker.mark_reading() {
                crate::maintenance::announce(&worker).await;
            }
            let batches = parse_read_reply(&value);
            advance_history(&streams, &mut positions, &batches);
            let mut first = Some(first);
            for batch in batches {
                for entry in batch.entries {
                    let Some(held) = in_hand.take((batch.stream.clone(), entry.id.clone())) else {
                        continue;
                    };
                    let permit = match first.take() {
                        Some(permit) => permit,
                        None => match worker.permits.clone().acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    };
                    let worker = worker.clone();
                    let stream = batch.stream.clone();
                    tokio::spawn(async move {
                        handler::handle(&worker, &stream, entry).await;
                        drop((held, permit));
                    });
                }
            }
        }
        backoff.wait().await;
    }
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
