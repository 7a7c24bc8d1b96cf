//! The reader: pulls messages off the served channel shard streams.
//!
//! One `XREADGROUP` on a dedicated connection reads every served stream at
//! once, never more messages than there are free permits (an entry may hold
//! several, [`packed`]: a read asks for as many entries as the last read's
//! messages per entry fit in the permits), and hands each message to its own
//! task. On a Redis Cluster one command may only name keys of one
//! hash slot, so there is one such read loop per slot (each shard of a channel
//! has its own), each on its own dedicated connection; [`run`] starts one for
//! every slot group and more when interfaces announce new shards. The first reads ask for this consumer's own pending entries
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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use switchyard_protocol::redis_conn::Backoff;
use switchyard_protocol::stream::{parse_read_reply, EntryId, StreamBatch};
use switchyard_protocol::WORKER_GROUP;

use crate::runtime::dispatch::{self, Delivery};
use crate::runtime::packed::{self, Incoming};
use crate::runtime::{read_batch, redelivery};
use crate::runtime::{Worker, READ_BLOCK};

const MAX_READ: usize = 256;
/// When, after the first good read past a failure, the pending list is read again.
const RECHECK: Duration = Duration::from_secs(2);

/// A message, by stream, entry id and index in its entry (the stream's name shared by a
/// read's entries).
type EntryKey = (Arc<str>, EntryId, usize);

/// Messages handed to a handler task and not yet finished.
#[derive(Default, Clone)]
struct InHand(Arc<Mutex<HashSet<EntryKey>>>);

impl InHand {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<EntryKey>> {
        // A panic while holding this lock cannot leave the set inconsistent.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks a message as in hand until the returned guard drops (even by a
    /// panicking handler); `None` if it already is.
    fn take(&self, key: EntryKey) -> Option<Held> {
        self.set().insert(key.clone()).then(|| Held {
            in_hand: self.clone(),
            key,
        })
    }
}

struct Held {
    in_hand: InHand,
    key: EntryKey,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.in_hand.set().remove(&self.key);
    }
}

/// Runs a read loop per slot group of the served streams until the worker stops.
pub async fn run(worker: Arc<Worker>) {
    let mut streams = worker.watch_streams();
    let mut loops: HashMap<u16, (watch::Sender<Vec<String>>, JoinHandle<()>)> = HashMap::new();
    loop {
        let current = streams.borrow_and_update().clone();
        let mut groups: HashMap<u16, Vec<String>> = HashMap::new();
        for stream in current {
            groups
                .entry(worker.redis.slot_group(stream.as_bytes()))
                .or_default()
                .push(stream);
        }
        for (group, members) in groups {
            match loops.get(&group) {
                Some((sender, _)) => {
                    sender.send_if_modified(|known| {
                        let changed = *known != members;
                        *known = members;
                        changed
                    });
                }
                None => {
                    let (sender, receiver) = watch::channel(members);
                    let task = tokio::spawn(read_loop(worker.clone(), receiver));
                    loops.insert(group, (sender, task));
                }
            }
        }
        tokio::select! {
            changed = streams.changed() => if changed.is_err() { break },
            () = worker.stopped() => break,
        }
    }
    for (_, (_, task)) in loops {
        let _ = task.await;
    }
}

/// Reads one slot group's streams (the list may grow) until the worker stops.
async fn read_loop(worker: Arc<Worker>, mut watched: watch::Receiver<Vec<String>>) {
    let mut streams = watched.borrow_and_update().clone();
    let mut backoff = Backoff::default();
    // Per stream: an id = our own pending entries after it (history);
    // ">" = new entries.
    let mut positions: Vec<String> = streams.iter().map(|_| "0".to_owned()).collect();
    let in_hand = InHand::default();
    // Streams whose pending list this process has read through once: what it
    // finds there later comes from lost reads, not from a handler that died.
    let mut read_through: HashSet<String> = HashSet::new();
    // Set by a failed read: read the pending list again after the next good read.
    let mut recheck = false;
    let mut recheck_at: Option<Instant> = None;
    // Messages per entry in the last read: a read asks for no more entries than the free
    // permits can take as messages, so one worker does not take a packed backlog's share
    // of several.
    let mut per_entry: usize = 1;
    while !worker.stopping() {
        let mut con = match worker.client.blocking(READ_BLOCK).await {
            Ok(con) => con,
            Err(error) => {
                tracing::warn!(%error, "reader cannot reach Redis; retrying");
                backoff.wait().await;
                continue;
            }
        };
        if let Err(error) = worker.ensure_groups(&streams).await {
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
            if watched.has_changed().unwrap_or(false) {
                // New shards: read their history (our own pending entries) first.
                let grown = watched.borrow_and_update().clone();
                positions = grown
                    .iter()
                    .map(|stream| match streams.iter().position(|s| s == stream) {
                        Some(known) => positions[known].clone(),
                        None => "0".to_owned(),
                    })
                    .collect();
                streams = grown;
                if let Err(error) = worker.ensure_groups(&streams).await {
                    tracing::warn!(%error, "cannot create consumer groups on new shards; retrying");
                }
            }
            if recheck_at.is_some_and(|at| Instant::now() >= at) {
                recheck_at = None;
                positions.iter_mut().for_each(|p| *p = "0".to_owned());
            }
            let count = ((worker.permits.available_permits() + 1) / per_entry).clamp(1, MAX_READ);
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(WORKER_GROUP)
                .arg(&worker.member)
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
                crate::runtime::maintenance::announce(&worker).await;
            }
            // Entries read from our own pending list (id, not ">") were
            // delivered before: possibly half committed by an earlier attempt.
            let history: HashSet<&String> = streams
                .iter()
                .zip(&positions)
                .filter(|(_, p)| *p != ">")
                .map(|(s, _)| s)
                .collect();
            let batches = parse_read_reply(value);
            let redelivered: HashSet<String> = batches
                .iter()
                .filter(|b| history.contains(&b.stream))
                .map(|b| b.stream.clone())
                .collect();
            advance_history(&streams, &mut positions, &batches);
            let after_death: HashSet<String> = redelivered.difference(&read_through).cloned().collect();
            read_through.extend(
                streams
                    .iter()
                    .zip(&positions)
                    .filter(|(_, p)| *p == ">")
                    .map(|(s, _)| s.clone()),
            );
            let mut first = Some(first);
            let (mut read_entries, mut read_messages): (usize, usize) = (0, 0);
            for batch in batches {
                // Re-read from our own pending list after our previous life:
                // handled together, the one that may have killed it isolated.
                let mut again = Vec::new();
                let delivery = if after_death.contains(&batch.stream) {
                    Delivery::AfterDeath
                } else if redelivered.contains(&batch.stream) {
                    Delivery::LostRead
                } else {
                    Delivery::First
                };
                // New client messages that read their sessions: handled as one read batch.
                let together = delivery == Delivery::First && read_batch::wanted(&worker, &batch.stream);
                let mut read: Vec<(Incoming, (Held, OwnedSemaphorePermit))> = Vec::new();
                let shared_name: Arc<str> = batch.stream.as_str().into();
                read_entries += batch.entries.len();
                let messages = batch.entries.into_iter().flat_map(|entry| {
                    // Redis's ids always parse; anything else shares the zero id.
                    let id = EntryId::parse(&entry.id).unwrap_or(EntryId::ZERO);
                    packed::split(entry).into_iter().map(move |incoming| (id, incoming))
                });
                for (id, incoming) in messages {
                    read_messages += 1;
                    let Some(held) = in_hand.take((shared_name.clone(), id, incoming.index())) else {
                        continue;
                    };
                    if delivery == Delivery::AfterDeath {
                        // Each takes its permit when its turn comes (`redelivery`): held
                        // here, a packed entry's messages could outnumber the permits.
                        again.push((incoming, held));
                        continue;
                    }
                    let permit = match first.take() {
                        Some(permit) => permit,
                        None => match worker.permits.clone().try_acquire_owned() {
                            Ok(permit) => permit,
                            Err(_) => {
                                // Out of permits: the read batch gathered so far holds some,
                                // so it starts before the wait (a packed entry may hold more
                                // messages than there are permits).
                                if !read.is_empty() {
                                    read_batch::start(&worker, &batch.stream, std::mem::take(&mut read));
                                }
                                match worker.permits.clone().acquire_owned().await {
                                    Ok(permit) => permit,
                                    Err(_) => return,
                                }
                            }
                        },
                    };
                    if together {
                        read.push((incoming, (held, permit)));
                        // Started when full: not held back while the next permit is awaited.
                        if read.len() == read_batch::MOST {
                            read_batch::start(&worker, &batch.stream, std::mem::take(&mut read));
                        }
                        continue;
                    }
                    let worker = worker.clone();
                    let stream = batch.stream.clone();
                    tokio::spawn(async move {
                        dispatch::handle(&worker, &stream, incoming, delivery, None).await;
                        drop((held, permit));
                    });
                }
                if !again.is_empty() {
                    tokio::spawn(redelivery::run(worker.clone(), batch.stream.clone(), again));
                }
                if !read.is_empty() {
                    read_batch::start(&worker, &batch.stream, read);
                }
            }
            if read_entries > 0 {
                per_entry = read_messages.div_ceil(read_entries);
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
