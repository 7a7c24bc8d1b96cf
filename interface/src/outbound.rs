//! Outbound batching: many connections' messages, one Redis round trip.
//!
//! Connection tasks hand their messages to one batcher task. It takes all that
//! is queued (up to a batch size), sends the XADDs as one pipeline, and tells
//! each sender whether its message is on the stream. While Redis is away it
//! holds the batch and retries; a message that has waited `--redis-hold` is
//! given up so its connection can close with 1013, the younger ones are
//! retried. Each attempt is cut at the oldest message's deadline: a frozen
//! Redis (no answer at all) would otherwise stretch the hold to the response
//! timeout, and messages queued behind a failing batch would wait twice.
//!
//! A retried batch may append a message twice; workers detect the repeated
//! sequence number and apply it once (see docs/protocol.md).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use switchyard_protocol::redis_conn::Backoff;
use switchyard_protocol::PAYLOAD_FIELD;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::metrics::Metrics;

const MAX_BATCH: usize = 512;
/// Shortest attempt at appending a batch, however late it is.
const MIN_ATTEMPT: Duration = Duration::from_millis(200);

struct Item {
    /// `None` marks a flush request: acknowledged once everything before it is sent.
    stream: Option<Arc<str>>,
    payload: Vec<u8>,
    ack: Option<oneshot::Sender<bool>>,
    queued: Instant,
}

/// Handle for enqueueing messages.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Item>,
}

impl Outbound {
    /// Starts the batcher task; it ends when every handle is dropped and the
    /// queue is flushed.
    pub fn start(
        con: ConnectionManager,
        hold: Duration,
        metrics: Arc<Metrics>,
    ) -> (Outbound, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(con, rx, hold, metrics));
        (Outbound { tx }, task)
    }

    /// Appends a message; the receiver yields `true` once it is on the stream
    /// (`false`, or a dropped sender, when it could not be appended).
    pub fn send(&self, stream: Arc<str>, payload: Vec<u8>) -> oneshot::Receiver<bool> {
        let (ack, done) = oneshot::channel();
        let _ = self.tx.send(Item {
            stream: Some(stream),
            payload,
            ack: Some(ack),
            queued: Instant::now(),
        });
        done
    }

    /// Appends a message without waiting (disconnect notices).
    pub fn send_detached(&self, stream: Arc<str>, payload: Vec<u8>) {
        let _ = self.tx.send(Item {
            stream: Some(stream),
            payload,
            ack: None,
            queued: Instant::now(),
        });
    }

    /// Resolves once everything enqueued before the call has been sent (or given up).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        let marker = Item {
            stream: None,
            payload: Vec::new(),
            ack: Some(ack),
            queued: Instant::now(),
        };
        if self.tx.send(marker).is_ok() {
            let _ = done.await;
        }
    }
}

async fn run(mut con: ConnectionManager, mut rx: mpsc::UnboundedReceiver<Item>, hold: Duration, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Flush markers have nothing to append: acknowledged once the batch is done.
        let (messages, markers): (Vec<Item>, Vec<Item>) = batch.drain(..).partition(|item| item.stream.is_some());
        append_with_retry(&mut con, messages, hold, &metrics).await;
        metrics.redis_batches.inc();
        for marker in markers {
            acknowledge(marker, true);
        }
    }
}

/// Appends the messages in one pipeline, retrying while Redis fails. A message
/// whose own hold has run out is given up (its sender learns `false`); the
/// others are retried. Each connection has at most one message here, so
/// giving one up never reorders another's.
async fn append_with_retry(con: &mut ConnectionManager, mut pending: Vec<Item>, hold: Duration, metrics: &Metrics) {
    let mut backoff = Backoff::default();
    let mut tried = false;
    while !pending.is_empty() {
        if tried {
            let now = Instant::now();
            let (expired, kept): (Vec<Item>, Vec<Item>) =
                pending.into_iter().partition(|item| item.queued + hold <= now);
            pending = kept;
            if !expired.is_empty() {
                tracing::error!(
                    refused = expired.len(),
                    "Redis unreachable for longer than --redis-hold; refusing held messages"
                );
                expired.into_iter().for_each(|item| acknowledge(item, false));
            }
            if pending.is_empty() {
                return;
            }
        }
        let mut pipe = redis::pipe();
        for item in &pending {
            if let Some(stream) = &item.stream {
                pipe.cmd("XADD")
                    .arg(&**stream)
                    .arg("*")
                    .arg(PAYLOAD_FIELD)
                    .arg(&item.payload)
                    .ignore();
            }
        }
        let deadline = pending
            .iter()
            .map(|item| item.queued + hold)
            .min()
            .unwrap_or_else(Instant::now);
        // Always one real attempt, even for messages that waited in the queue past their hold.
        let limit = deadline.max(Instant::now() + MIN_ATTEMPT);
        let attempt = tokio::time::timeout_at(limit, pipe.query_async::<()>(con)).await;
        tried = true;
        match attempt.unwrap_or_else(|_| Err(timed_out())) {
            Ok(()) => {
                pending.into_iter().for_each(|item| acknowledge(item, true));
                return;
            }
            Err(error) => {
                metrics.redis_errors.inc();
                tracing::warn!(%error, held = pending.len(), "Redis append failed; holding the messages and retrying");
                // Wake up for the next message's deadline even in the middle of a backoff.
                let _ = tokio::time::timeout_at(deadline.max(Instant::now()), backoff.wait()).await;
            }
        }
    }
}

fn acknowledge(item: Item, ok: bool) {
    if let Some(ack) = item.ack {
        let _ = ack.send(ok);
    }
}

fn timed_out() -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer before --redis-hold ran out").into()
}
