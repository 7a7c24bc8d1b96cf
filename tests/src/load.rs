//! Continuous chat load that checks exactly-once, in-order delivery.
//!
//! Why this exists: the worker restart guarantees (kill -9, SIGTERM, rolling restarts) only
//! mean something under load. Each connection keeps a small window of messages in flight
//! and checks that the answers carry the counts 1, 2, 3, … with no gap (a lost message), no
//! repeat (a message applied twice) and no close. Counting lives in the chat app's Redis
//! session, so a message applied twice shows up as a skipped count even if the interface
//! suppresses the duplicate reply.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;

use crate::stack::Stack;
use crate::ws::WsClient;

/// A running set of chat load connections.
pub struct ChatLoad {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    handles: Vec<JoinHandle<Result<u64>>>,
}

impl ChatLoad {
    /// Connects `conns` chat clients (all before any sends) and starts them, each keeping
    /// up to `window` messages unanswered. A reply slower than `reply_timeout` fails that
    /// connection.
    pub async fn start(stack: &Stack, conns: usize, window: u64, reply_timeout: Duration) -> ChatLoad {
        let mut clients = Vec::with_capacity(conns);
        for _ in 0..conns {
            clients.push(stack.ws("/ws/chat/").await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let handles = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                let stop = stop.clone();
                let answered = answered.clone();
                tokio::spawn(async move {
                    run_connection(i, client, window, reply_timeout, stop, answered)
                        .await
                        .with_context(|| format!("load connection {i}"))
                })
            })
            .collect();
        ChatLoad {
            stop,
            answered,
            handles,
        }
    }

    /// Messages answered so far, over all connections.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` messages have been answered in total; false on timeout.
    pub async fn wait_answered(&self, n: u64, timeout: Duration) -> bool {
        crate::eventually(timeout, || async { (self.answered() >= n).then_some(()) })
            .await
            .is_some()
    }

    /// Stops sending, waits for every outstanding answer, closes the sockets normally and
    /// returns each connection's result (its number of answered messages).
    pub async fn finish(self) -> Vec<Result<u64>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut out = Vec::new();
        for h in self.handles {
            out.push(match h.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("load task panicked: {e}")),
            });
        }
        out
    }
}

async fn run_connection(
    conn: usize,
    mut client: WsClient,
    window: u64,
    reply_timeout: Duration,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Result<u64> {
    let mut sent = 0u64;
    let mut received = 0u64;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if !stopping && sent - received < window {
            sent += 1;
            client
                .send_text(format!("conn {conn} message {sent}"))
                .await
                .with_context(|| format!("sending message {sent}"))?;
            continue;
        }
        if received == sent {
            break;
        }
        let count = client
            .recv_count(reply_timeout)
            .await
            .with_context(|| format!("waiting for the answer to message {} ({sent} sent)", received + 1))?;
        if count != received + 1 {
            bail!(
                "expected count {} but got {count} ({}) after {received} answers",
                received + 1,
                if count > received + 1 {
                    "gap or double apply"
                } else {
                    "repeat"
                }
            );
        }
        received += 1;
        answered.fetch_add(1, Ordering::Relaxed);
    }
    client.close().await;
    Ok(received)
}
