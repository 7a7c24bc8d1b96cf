//! Entries handed out again after their handler died: the one that kills is
//! isolated, so it does not take the others down with it.
//!
//! A consumer that aborts the process (or runs it out of memory) on one
//! message kills every other message the worker held. Whoever takes them over
//! — a worker claiming a dead one's entries, or the same worker re-reading
//! its pending list after a restart under the same `--name` — gets the poison
//! together with innocent entries. Handled all at once, the poison would kill
//! the innocents again, and again, until the delivery limit dead-letters them
//! too. So redelivered entries are handled here:
//!
//! - The entry the previous handler was running alone when it died (recorded
//!   in `P:suspect:{CHANNEL:N}`, the stream's slot) is the suspect: the others
//!   are handled first (concurrently) and committed, then the suspect alone.
//! - Without a known suspect, entries already handed out at least
//!   [`ISOLATE_FROM`] times (each of their handlers died at least twice) are
//!   handled one at a time, each recorded as the suspect before it runs, so
//!   the next crash names its culprit. Fewer deliveries (a plain `kill -9` of
//!   a worker) keep the usual concurrency.
//!
//! The poison then dies alone each time until `--max-deliveries` gives it up
//! (`dispatch`), while its neighbours are committed after one or two extra
//! deliveries, well within the limit (default 5).

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use switchyard_protocol::stream::{self, StreamEntry};
use switchyard_protocol::WORKER_GROUP;

use crate::runtime::dispatch::{self, Delivery};
use crate::runtime::Worker;

/// Deliveries from which entries without a known suspect are handled one at a time.
pub const ISOLATE_FROM: u64 = 3;
/// How long a suspect record is kept.
const SUSPECT_TTL: Duration = Duration::from_secs(3600);

/// Handles redelivered entries of one stream; each one's `guard` (its permit,
/// its in-hand mark) is dropped when it is finished.
pub async fn run<G: Send>(worker: Arc<Worker>, stream: String, items: Vec<(StreamEntry, G)>) {
    let suspect_key = worker.keys.suspect(&stream);
    let mut con = worker.redis.clone();
    let suspect: Option<String> = redis::cmd("GET")
        .arg(&suspect_key)
        .query_async(&mut con)
        .await
        .unwrap_or(None);
    let (alone, others): (Vec<_>, Vec<_>) = items
        .into_iter()
        .partition(|(entry, _)| suspect.as_deref() == Some(entry.id.as_str()));
    let mut isolate = false;
    if suspect.is_none() || alone.is_empty() {
        for (entry, _) in &others {
            let count = stream::delivery_count(&mut con, &stream, WORKER_GROUP, &entry.id).await;
            if count.ok().flatten().is_some_and(|n| n >= ISOLATE_FROM) {
                isolate = true;
                break;
            }
        }
    }
    if isolate {
        tracing::warn!(
            stream = %stream,
            entries = others.len(),
            "entries handed out again after repeated crashes: handling them one at a time"
        );
        for (entry, guard) in others {
            one_alone(&worker, &stream, &suspect_key, entry).await;
            drop(guard);
        }
    } else {
        join_all(others.into_iter().map(|(entry, guard)| {
            let worker = &worker;
            let stream = &stream;
            async move {
                dispatch::handle_entry(worker, stream, entry, Delivery::AfterDeath, None).await;
                drop(guard);
            }
        }))
        .await;
    }
    for (entry, guard) in alone {
        tracing::warn!(stream = %stream, entry = %entry.id, "handling the entry its last handler died with, alone");
        one_alone(&worker, &stream, &suspect_key, entry).await;
        drop(guard);
    }
}

/// Records `entry` as the suspect, then handles it (nothing else of this batch runs meanwhile).
async fn one_alone(worker: &Worker, stream: &str, suspect_key: &str, entry: StreamEntry) {
    let mut con = worker.redis.clone();
    let marked: redis::RedisResult<()> = redis::cmd("SET")
        .arg(suspect_key)
        .arg(&entry.id)
        .arg("PX")
        .arg(SUSPECT_TTL.as_millis() as u64)
        .query_async(&mut con)
        .await;
    if let Err(error) = marked {
        tracing::debug!(%error, "cannot record the suspect entry");
    }
    dispatch::handle_entry(worker, stream, entry, Delivery::AfterDeath, None).await;
}
