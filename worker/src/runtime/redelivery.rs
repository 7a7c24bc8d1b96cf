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
//! - When the suspect is a message of a packed entry, its neighbours in that
//!   entry share its delivery count: they are handled one at a time, each
//!   recorded as the suspect before it runs, and the limit does not give them
//!   up ([`Delivery::BesideSuspect`]). A second poison message among them is
//!   named by the crash it causes and given up in its turn.
//!
//! The poison then dies alone each time until `--max-deliveries` gives it up
//! (`dispatch`), while its neighbours are committed after one or two extra
//! deliveries, well within the limit (default 5). Messages are named as in
//! logs and dead letters: `ID`, or `ID#N` inside a packed entry.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use switchyard_protocol::stream;
use switchyard_protocol::WORKER_GROUP;

use crate::runtime::dispatch::{self, Delivery};
use crate::runtime::packed::Incoming;
use crate::runtime::Worker;

/// Deliveries from which entries without a known suspect are handled one at a time.
pub const ISOLATE_FROM: u64 = 3;
/// How long a suspect record is kept.
const SUSPECT_TTL: Duration = Duration::from_secs(3600);

/// Handles redelivered messages of one stream, each with a permit taken when its turn
/// comes (a claimed packed entry may hold more messages than there are permits); each
/// one's `guard` (its in-hand mark) is dropped when it is finished.
pub async fn run<G: Send>(worker: Arc<Worker>, stream: String, items: Vec<(Incoming, G)>) {
    let suspect_key = worker.keys.suspect(&stream);
    let mut con = worker.redis.clone();
    let suspect: Option<String> = redis::cmd("GET")
        .arg(&suspect_key)
        .query_async(&mut con)
        .await
        .unwrap_or(None);
    // The entry a packed suspect came in: its other messages are its neighbours.
    let suspect_entry = suspect.as_deref().and_then(|name| Some(name.split_once('#')?.0));
    let (alone, rest): (Vec<_>, Vec<_>) = items
        .into_iter()
        .partition(|(incoming, _)| suspect.as_deref() == Some(&*incoming.name()));
    let (beside, others): (Vec<_>, Vec<_>) = rest
        .into_iter()
        .partition(|(incoming, _)| incoming.part.is_some() && suspect_entry == Some(incoming.entry.id.as_str()));
    let mut isolate = false;
    if suspect.is_none() || (alone.is_empty() && beside.is_empty()) {
        // One count per entry: a packed entry's messages share it.
        let ids: HashSet<&str> = others.iter().map(|(incoming, _)| incoming.entry.id.as_str()).collect();
        for id in ids {
            let count = stream::delivery_count(&mut con, &stream, WORKER_GROUP, id).await;
            if count.ok().flatten().is_some_and(|n| n >= ISOLATE_FROM) {
                isolate = true;
                break;
            }
        }
    }
    if isolate {
        tracing::warn!(
            stream = %stream,
            messages = others.len(),
            "messages handed out again after repeated crashes: handling them one at a time"
        );
        for (incoming, guard) in others {
            one_alone(&worker, &stream, &suspect_key, incoming, Delivery::AfterDeath).await;
            drop(guard);
        }
    } else {
        join_all(others.into_iter().map(|(incoming, guard)| {
            let worker = &worker;
            let stream = &stream;
            async move {
                let Ok(permit) = worker.permits.clone().acquire_owned().await else {
                    return;
                };
                dispatch::handle(worker, stream, incoming, Delivery::AfterDeath, None).await;
                drop((guard, permit));
            }
        }))
        .await;
    }
    for (incoming, guard) in beside {
        one_alone(&worker, &stream, &suspect_key, incoming, Delivery::BesideSuspect).await;
        drop(guard);
    }
    for (incoming, guard) in alone {
        tracing::warn!(stream = %stream, entry = %incoming.name(), "handling the message its last handler died with, alone");
        one_alone(&worker, &stream, &suspect_key, incoming, Delivery::AfterDeath).await;
        drop(guard);
    }
}

/// Records `incoming` as the suspect, then handles it (nothing else of this batch runs
/// meanwhile).
async fn one_alone(worker: &Worker, stream: &str, suspect_key: &str, incoming: Incoming, delivery: Delivery) {
    let Ok(_permit) = worker.permits.clone().acquire_owned().await else {
        return;
    };
    let mut con = worker.redis.clone();
    let marked: redis::RedisResult<()> = redis::cmd("SET")
        .arg(suspect_key)
        .arg(&*incoming.name())
        .arg("PX")
        .arg(SUSPECT_TTL.as_millis() as u64)
        .query_async(&mut con)
        .await;
    if let Err(error) = marked {
        tracing::debug!(%error, "cannot record the suspect message");
    }
    dispatch::handle(worker, stream, incoming, delivery, None).await;
}
