//! Subscribing to group channels, on one Redis or on a Redis Cluster.
//!
//! On one Redis it is plain pub/sub (`SUBSCRIBE` on a connection of its own).
//! On a cluster a plain publish travels through every node, so groups use
//! sharded pub/sub instead: `SSUBSCRIBE` on the node that owns the channel's
//! slot (redis-rs routes it there over RESP3, pushes arrive on a channel).
//! That node can go away: a failover promotes its replica, a resharding moves
//! the slot. redis-rs reconnects but does not always subscribe again, so this
//! module does: after a lost connection every wanted channel is subscribed
//! again (routed to whichever node owns it now), and a channel the server
//! unsubscribed us from (its slot moved) is subscribed again at once.
//! (Measured with a 3-master cluster and a 2 s node timeout: broadcasts
//! resume about 1.3 s after the master's `kill -9`.)
//!
//! [`connect`] gives two halves, so one task can wait for messages while
//! another changes the subscriptions.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::redis_conn::{Backoff, RedisClient};

/// What the stream half yields.
#[derive(Debug)]
pub enum Delivery {
    /// A message published on a subscribed channel.
    Message(Vec<u8>),
    /// The subscriptions were lost and are being restored (cluster); messages
    /// published meanwhile were missed.
    Interrupted,
    /// The subscriptions lost since the last [`Delivery::Interrupted`] are all
    /// back (cluster): time to read what was missed from the groups' histories.
    Restored,
}

/// Changes the subscriptions.
pub enum Subscriptions {
    Single(PubSubSink),
    Cluster(ClusterSubscriptions),
}

/// Yields messages.
pub enum Messages {
    Single(PubSubStream),
    Cluster(ClusterMessages),
}

pub struct ClusterSubscriptions {
    con: ClusterConnection,
    wanted: Wanted,
}

pub struct ClusterMessages {
    con: ClusterConnection,
    wanted: Wanted,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    restoring: Option<JoinHandle<()>>,
    /// Signalled by a restore that subscribed everything again.
    restored: Arc<tokio::sync::Notify>,
    /// Set by a restore that could not subscribe again for [`GIVE_UP`]: the
    /// connection is given up and the caller starts over with a new one.
    given_up: Arc<tokio::sync::Notify>,
}

/// How long a restore keeps trying on one connection before giving it up.
const GIVE_UP: std::time::Duration = std::time::Duration::from_secs(15);

type Wanted = Arc<Mutex<HashSet<Vec<u8>>>>;

fn lock(wanted: &Wanted) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
    wanted.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens a subscriber connection (one per process).
pub async fn connect(client: &RedisClient) -> RedisResult<(Subscriptions, Messages)> {
    if let Some(single) = client.single() {
        let (sink, stream) = single.get_async_pubsub().await?.split();
        return Ok((Subscriptions::Single(sink), Messages::Single(stream)));
    }
    let (tx, pushes) = mpsc::unbounded_channel();
    let cluster = client
        .cluster_push_client(tx)
        .expect("a cluster client builds a push client")?;
    let con = match tokio::time::timeout(crate::redis_conn::COMMAND_TIMEOUT, cluster.get_async_connection()).await {
        Ok(con) => con?,
        Err(_) => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no cluster connection within the command timeout",
            )))
        }
    };
    let wanted = Wanted::default();
    Ok((
        Subscriptions::Cluster(ClusterSubscriptions {
            con: con.clone(),
            wanted: wanted.clone(),
        }),
        Messages::Cluster(ClusterMessages {
            con,
            wanted,
            pushes,
            restoring: None,
            restored: Arc::default(),
            given_up: Arc::default(),
        }),
    ))
}

impl Subscriptions {
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subscriptions::Single(sink) => sink.subscribe(channel).await,
            Subscriptions::Cluster(c) => {
                lock(&c.wanted).insert(channel.as_bytes().to_vec());
                c.con.ssubscribe(channel).await
            }
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subscriptions::Single(sink) => sink.unsubscribe(channel).await,
            Subscriptions::Cluster(c) => {
                lock(&c.wanted).remove(channel.as_bytes());
                c.con.sunsubscribe(channel).await
            }
        }
    }
}

impl Messages {
    /// The next message or interruption; `None` when the connection is gone
    /// for good (one Redis: connect again and subscribe again).
    pub async fn next(&mut self) -> Option<Delivery> {
        match self {
            Messages::Single(stream) => stream
                .next()
                .await
                .map(|message| Delivery::Message(message.get_payload_bytes().to_vec())),
            Messages::Cluster(c) => c.next().await,
        }
    }
}

impl ClusterMessages {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let push = tokio::select! {
                push = self.pushes.recv() => push?,
                () = self.given_up.notified() => {
                    tracing::warn!("group subscriptions could not be restored on this connection; starting over");
                    return None;
                }
                () = self.restored.notified() => return Some(Delivery::Restored),
            };
            match push.kind {
                PushKind::SMessage | PushKind::Message => {
                    if let Some(payload) = push.data.get(1).and_then(bytes_of) {
                        return Some(Delivery::Message(payload));
                    }
                }
                PushKind::Disconnection => {
                    tracing::warn!("group subscription connection lost; subscribing again");
                    let channels: Vec<Vec<u8>> = lock(&self.wanted).iter().cloned().collect();
                    self.restore(channels);
                    return Some(Delivery::Interrupted);
                }
                PushKind::SUnsubscribe => {
                    // Asked for (the channel is no longer wanted), or the server's
                    // doing: the slot moved to another node.
                    let Some(channel) = push.data.first().and_then(bytes_of) else {
                        continue;
                    };
                    if lock(&self.wanted).contains(&channel) {
                        tracing::warn!(
                            channel = %String::from_utf8_lossy(&channel),
                            "unsubscribed by the server (slot moved); subscribing again"
                        );
                        self.restore(vec![channel]);
                        return Some(Delivery::Interrupted);
                    }
                }
                _ => {}
            }
        }
    }

    /// Subscribes `channels` again in the background, retrying until each is
    /// back or no longer wanted; a newer restore replaces an older one.
    fn restore(&mut self, mut channels: Vec<Vec<u8>>) {
        if let Some(previous) = self.restoring.take() {
            if !previous.is_finished() {
                // The newer restore takes over everything still wanted.
                previous.abort();
                channels = lock(&self.wanted).iter().cloned().collect();
            }
        }
        let mut con = self.con.clone();
        let wanted = self.wanted.clone();
        let given_up = self.given_up.clone();
        let restored = self.restored.clone();
        self.restoring = Some(tokio::spawn(async move {
            let mut backoff = Backoff::default();
            let started = tokio::time::Instant::now();
            for channel in channels {
                while lock(&wanted).contains(&channel) {
                    match con.ssubscribe(&channel).await {
                        Ok(()) => break,
                        Err(error) if started.elapsed() >= GIVE_UP => {
                            tracing::warn!(%error, "cannot subscribe again; giving this connection up");
                            given_up.notify_one();
                            return;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "subscribing again failed; retrying");
                            backoff.wait().await;
                        }
                    }
                }
            }
            tracing::info!("group subscriptions restored");
            restored.notify_one();
        }));
    }
}

impl Drop for ClusterMessages {
    fn drop(&mut self) {
        if let Some(task) = self.restoring.take() {
            task.abort();
        }
    }
}

fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.as_bytes().to_vec()),
        _ => None,
    }
}
