//! Outbound batching: many connections' messages, one Redis round trip.
//!
//! Connection tasks hand their messages to one batcher task. It takes all that
//! is queued (up to a batch size), sends the XADDs as one pipeline, and tells
//! each sender whether its message is on the stream. While Redis is away it
//! holds the batch and retries, in order, up to `--redis-hold`; then it
//! gives up on those messages so their connections can close with 1013.
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

struct Item {
    /// `None` marks a flush request: acknowledged once everything before it is sent.
    stream: Option<Arc<str>>,
    payload: Vec<u8>,
    ack: Option<oneshot::Sender<bool>>,
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
        });
        done
    }

    /// Appends a message without waiting (disconnect notices).
    pub fn send_detached(&self, stream: Arc<str>, payload: Vec<u8>) {
        let _ = self.tx.send(Item {
            stream: Some(stream),
            payload,
            ack: None,
        });
    }

    /// Resolves once everything enqueued before the call has been sent (or given up).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        let marker = Item {
            stream: None,
            payload: Vec::new(),
            ack: Some(ack),
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
        let ok = pipe.is_empty() || send_with_retry(&mut con, &pipe, hold, &metrics).await;
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
    hold: Duration,
    metrics: &Metrics,
) -> bool {
    let give_up = Instant::now() + hold;
    let mut backoff = Backoff::default();
    loop {
        match pipe.query_async::<()>(con).await {
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
