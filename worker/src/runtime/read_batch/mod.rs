//! A read batch: messages read together, their sessions read together under `WATCH`, their
//! commit made together in one `EXEC`.
//!
//! Why it exists: each handler reading its own session costs a round trip and a request per
//! message, and the WATCH/MULTI commit (`commit/watched.rs`) then reads each session's guard
//! again under `WATCH` (`HMGET`), because the handlers read on the shared connection.
//! Here a batch of new client messages (`websocket.receive`) for a consumer that reads its
//! session on each
//! ([`reads_session`](crate::api::consumer::WebSocketConsumer::reads_session)) starts on a connection of the watched commit's
//! pool: `WATCH` every session, `HGETALL` each, in one round trip. Each handler runs on its
//! own task as always, with its session already there, and hands its commit back here. Once
//! all have (or [`WAIT`] has passed), the guards are decided on the sessions as read and the
//! commit is one `MULTI … EXEC` on the same connection: Redis runs it only if no session
//! changed since it was read. Whatever that does not take — a message committed before, a
//! session that changed, a handler that came late, an error — goes to the batcher and its
//! script as any other message, whose guard then decides.
//!
//! It takes as many round trips as the script's way (the handler's `HGETALL`, then the
//! script), so it is taken for a batch of any size, down to one message: at 1,000 connections
//! × 5 messages/s, where reads return a few messages each, it cut Redis's CPU per message by
//! about a fifth (docs/benchmarks.md, "Read batches"). Only on a single Redis with the watched
//! commit on (`--commit-watch-min` above 0), for messages read new (`>`): a redelivered one
//! is handled as before.

pub(crate) mod slot;

use std::sync::Arc;
use std::time::Duration;

use switchyard_protocol::{decode, ChannelMessage, Event};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::api::app::ChannelApp;
use crate::api::session;
use crate::runtime::commit::Commit;
use crate::runtime::dispatch::{self, Delivery};
use crate::runtime::packed::Incoming;
use crate::runtime::Worker;
use slot::{Answer, Arrival, Preload, Slot};

/// How long the batch waits for its handlers' commits; one that comes later goes to the
/// batcher instead. Handlers that read only their session finish within one scheduling round.
const WAIT: Duration = Duration::from_millis(10);

/// Most messages in one read batch: a larger read is split. Redis checks each key a `WATCH`
/// names against those the connection already watches, so a batch's `WATCH` costs it the
/// square of the batch's size: at 1,000 connections (reads of about 67 messages) it was
/// 1.5–1.6 µs of Redis per message, 0.7–0.9 in batches of at most 32, with 8.3–9.7 µs inside
/// commands in all (four rounds) against 9.9–10.2 (two; at most 16: 10.7–10.8, the batches'
/// own cost grows).
pub(crate) const MOST: usize = 32;

/// Read batches under way at once, each on its own connection of the watched commit's pool;
/// a read batch that finds none free is handled message by message.
pub(crate) const IN_FLIGHT: usize = 12;

/// Whether new messages of `stream` are handled as a read batch.
pub(crate) fn wanted(worker: &Worker, stream: &str) -> bool {
    let reads_session = match worker.channel_of(stream) {
        Some((_, ChannelApp::WebSocket(consumer))) => consumer.reads_session(),
        _ => false,
    };
    reads_session && worker.config.read_batches && worker.committer.watch().is_some()
}

/// Handles new `entries` of `stream` as read batches of at most [`MOST`] messages, each on
/// its own task; each entry's `hold` is dropped once it is handled.
pub(crate) fn start<H: Send + 'static>(worker: &Arc<Worker>, stream: &str, mut entries: Vec<(Incoming, H)>) {
    let stream: Arc<str> = stream.into();
    while !entries.is_empty() {
        let rest = entries.split_off(entries.len().min(MOST));
        tokio::spawn(run(
            worker.clone(),
            stream.clone(),
            std::mem::replace(&mut entries, rest),
        ));
    }
}

/// Handles new `entries` of `stream` as one read batch.
async fn run<H: Send + 'static>(worker: Arc<Worker>, stream: Arc<str>, entries: Vec<(Incoming, H)>) {
    // Each client message, decoded (its handler does not decode it again), and its session's
    // key with its reply address, in order; `None` for any other event (a connect, say, which
    // need not read the session) and for an entry that does not decode (its handler
    // dead-letters it).
    let mut keys: Vec<(String, String)> = Vec::with_capacity(entries.len());
    let mut messages: Vec<Option<ChannelMessage>> = entries
        .iter()
        .map(|(incoming, _)| {
            let message = decode::<ChannelMessage>(incoming.entry.payload()?).ok()?;
            if !matches!(message.event, Event::Receive(_)) {
                return None;
            }
            let key = worker.keys.session(session::session_id(&message.query, &message.reply));
            keys.push((key, message.reply.clone()));
            Some(message)
        })
        .collect();
    let read = match worker.committer.watch() {
        Some(watch) if !keys.is_empty() => watch.read(keys).await,
        _ => None,
    };
    let Some((watched, fields)) = read else {
        // No connection free, or Redis failed: each handler reads and commits on its own.
        for (incoming, hold) in entries {
            spawn(&worker, &stream, incoming, None, hold);
        }
        return;
    };
    let (batch, mut arrivals) = mpsc::unbounded_channel();
    let mut fields = fields.into_iter();
    let mut expected = 0;
    for ((incoming, hold), message) in entries.into_iter().zip(messages.iter_mut()) {
        // The fields come in the order of the messages that have a session key.
        let preload = message.take().and_then(|message| {
            let fields = fields.next()?;
            expected += 1;
            Some(Box::new(Preload {
                message: Some(message),
                fields,
                slot: Slot::new(batch.clone()),
            }))
        });
        spawn(&worker, &stream, incoming, preload, hold);
    }
    drop(batch);
    let mut offers: Vec<(Box<Commit>, oneshot::Sender<Answer>)> = Vec::with_capacity(expected);
    let deadline = Instant::now() + WAIT;
    while expected > 0 {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some(Arrival::Offer(commit, done))) => offers.push((commit, done)),
            Ok(Some(Arrival::Withdrawn)) => {}
            Ok(None) | Err(_) => break,
        }
        expected -= 1;
    }
    // Late handlers find the batch closed and go to the batcher; one that got in just
    // before is sent there too. Drained with `recv`, which waits for a send under way:
    // `try_recv` may miss it, and the offer was then left unanswered in the channel.
    arrivals.close();
    while let Some(arrival) = arrivals.recv().await {
        if let Arrival::Offer(commit, done) = arrival {
            let _ = done.send(Err(commit));
        }
    }
    let (commits, dones): (Vec<Commit>, Vec<_>) = offers.into_iter().map(|(commit, done)| (*commit, done)).unzip();
    let outcomes = worker.committer.commit_watched(watched, &commits).await;
    for ((commit, outcome), done) in commits.into_iter().zip(outcomes).zip(dones) {
        let _ = done.send(outcome.map(Ok).ok_or_else(|| Box::new(commit)));
    }
}

fn spawn<H: Send + 'static>(
    worker: &Arc<Worker>,
    stream: &Arc<str>,
    incoming: Incoming,
    preload: Option<Box<Preload>>,
    hold: H,
) {
    let worker = worker.clone();
    let stream = stream.clone();
    tokio::spawn(async move {
        dispatch::handle(&worker, &stream, incoming, Delivery::First, preload).await;
        drop(hold);
    });
}
