//! Outbound batching: many connections' messages, one Redis round trip.
//!
//! Connection tasks hand their messages to one batcher task. It takes all that
//! is queued (up to a batch size), sends the XADDs as one pipeline, and tells
//! each sender whether its message is on the stream. While Redis is away it
//! holds the batch and retries, in order, until its oldest message has waited
//! `--redis-hold`; then it gives up on those messages so their connections can
//! close with 1013. Each attempt is cut at that deadline too: a frozen Redis
//! (no answer at all) would otherwise stretch the hold to the response timeout.
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
        let mut pipe = redis::pipe();
        for item in &batch {
            if let Some(stream) = &item.stream {
                pipe.cmd("XADD")
                    .arg(&**stream)
                    .arg("*")
                    .arg(PAYLOAD_FIELD)
                    .arg(&item.payload)
                    .ignore();
            }
        }
        let oldest = batch.iter().map(|item| item.queued).min().unwrap_or_else(Instant::now);
        let ok = pipe.is_empty() || send_with_retry(&mut con, &pipe, oldest + hold, &metrics).await;
        metrics.redis_batches.inc();
        for item in batch.drain(..) {
            if let Some(ack) = item.ack {
                let _ = ack.send(ok);
            }
        }
    }
}

async fn send_with_retry(
    con: &mut ConnectionManager,
    pipe: &redis::Pipeline,
    give_up: Instant,
    metrics: &Metrics,
) -> bool {
    let mut backoff = Backoff::default();
    loop {
        // Always one real attempt, even when the messages waited in the queue past the deadline.
        let limit = give_up.max(Instant::now() + MIN_ATTEMPT);
        let attempt = tokio::time::timeout_at(limit, pipe.query_async::<()>(con)).await;
        match attempt.unwrap_or_else(|_| Err(timed_out())) {
            Ok(_) => return true,
            Err(error) => {
                metrics.redis_errors.inc();
                if Instant::now() >= give_up {
                    tracing::error!(%error, "Redis unreachable for longer than --redis-hold; refusing held messages");
                    return false;
                }
                tracing::warn!(%error, "Redis append failed; holding the batch and retrying");
                backoff.wait().await;
            }
        }
    }
}

fn timed_out() -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer before --redis-hold ran out").into()
}
