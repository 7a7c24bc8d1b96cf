//! The shared connection to a Redis Cluster, watched.
//!
//! redis-rs's `ClusterConnection` follows MOVED/ASK, reconnects to nodes and
//! refreshes its slot map by itself. But under load through a failover we have
//! seen one stop answering for good (redis 1.8.1): every request timed out long
//! after the cluster was healthy again, while a fresh connection in the same
//! process worked at once (the chaos test on a cluster, `tests/tests/chaos.rs`:
//! an interface held its clients' messages until `--redis-hold` closed them,
//! minutes after the failover). A process's shared connection is what all its
//! appends, commits and liveness writes go through, so it is watched: every
//! request records whether it got an answer, and once nothing has been
//! answered for [`STALL`] while requests were made, a probe `PING` decides —
//! no answer, and the connection is replaced by a new one. Requests already
//! under way finish (or time out) on the old one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::topology::{cluster_shards, primary_of, ClusterShard};

/// How long requests may go unanswered before the connection is probed.
pub const STALL: Duration = Duration::from_secs(2);
/// How long the probe waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the watchdog looks.
const EVERY: Duration = Duration::from_millis(500);
/// How long a read of the cluster's shards is trusted for routing `WAIT`s.
const SHARDS_FRESH: Duration = Duration::from_secs(2);

/// A shared cluster connection that is replaced when it stops answering.
#[derive(Clone)]
pub struct SharedCluster {
    state: Arc<State>,
}

struct State {
    client: ClusterClient,
    current: Mutex<ClusterConnection>,
    /// Which primary serves which slots, as last read (for `WAIT`); refreshed
    /// when older than [`SHARDS_FRESH`].
    shards: tokio::sync::Mutex<Option<(Instant, Vec<ClusterShard>)>>,
    started: Instant,
    /// Milliseconds since `started` of the last answer (any reply, errors
    /// from the server included), and of the last request made.
    last_answer: AtomicU64,
    last_request: AtomicU64,
    /// Milliseconds since `started` (+1, so 0 is "none") of the first and the
    /// last request that timed out since the connection was made.
    first_timeout: AtomicU64,
    last_timeout: AtomicU64,
    /// Connections replaced so far.
    replaced: AtomicU64,
}

impl SharedCluster {
    /// A lazily connecting shared connection from `client`, with its watchdog.
    pub fn new(client: ClusterClient) -> SharedCluster {
        let connection = pending(&client);
        let state = Arc::new(State {
            client,
            current: Mutex::new(connection),
            shards: tokio::sync::Mutex::new(None),
            started: Instant::now(),
            last_answer: AtomicU64::new(0),
            last_request: AtomicU64::new(0),
            first_timeout: AtomicU64::new(0),
            last_timeout: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
        });
        tokio::spawn(watch(Arc::downgrade(&state)));
        SharedCluster { state }
    }

    /// The connection requests go through now.
    pub fn connection(&self) -> ClusterConnection {
        self.state.current()
    }

    /// One slot per primary among `slots`, with that primary's address: the
    /// nodes a `WAIT` must go to. From `CLUSTER SHARDS`, read again when older
    /// than [`SHARDS_FRESH`]; if it cannot be read, every slot stands for itself.
    pub async fn masters_of(&self, slots: &[u16]) -> Vec<(u16, String)> {
        let mut cached = self.state.shards.lock().await;
        let stale = cached.as_ref().is_none_or(|(at, _)| at.elapsed() > SHARDS_FRESH);
        if stale {
            let mut con = self.clone();
            if let Ok(shards) = cluster_shards(&mut con).await {
                *cached = Some((Instant::now(), shards));
            }
        }
        let mut by_node: Vec<(u16, String)> = Vec::new();
        for &slot in slots {
            let node = cached
                .as_ref()
                .and_then(|(_, shards)| primary_of(shards, slot))
                .map_or_else(|| format!("slot {slot}"), str::to_owned);
            if !by_node.iter().any(|(_, n)| *n == node) {
                by_node.push((slot, node));
            }
        }
        by_node
    }

    /// How many times the connection was replaced (for tests and logs).
    pub fn replaced(&self) -> u64 {
        self.state.replaced.load(Ordering::Relaxed)
    }
}

fn pending(client: &ClusterClient) -> ClusterConnection {
    client.get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new())
}

impl State {
    fn current(&self) -> ClusterConnection {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records a request's outcome; `generation` is the value of `replaced`
    /// when it started: late timeouts from a replaced connection do not count
    /// against the new one.
    fn record<T>(&self, outcome: &RedisResult<T>, generation: u64) {
        // A server's answer, even an error, shows the connection works; a
        // timeout or a dropped connection does not.
        let answered = match outcome {
            Ok(_) => true,
            Err(error) => !(error.is_timeout() || error.is_io_error() || error.is_connection_dropped()),
        };
        if answered {
            self.last_answer.store(self.now(), Ordering::Relaxed);
        }
        let current = generation == self.replaced.load(Ordering::Relaxed);
        if current && matches!(outcome, Err(error) if error.is_timeout()) {
            let now = self.now() + 1;
            let _ = self
                .first_timeout
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            self.last_timeout.store(now, Ordering::Relaxed);
        }
    }

    /// Requests to part of the cluster have been timing out for [`STALL`]
    /// and still are: other nodes may answer, but some slots are stuck.
    fn timing_out(&self) -> bool {
        let first = self.first_timeout.load(Ordering::Relaxed);
        let last = self.last_timeout.load(Ordering::Relaxed);
        let now = self.now() + 1;
        let stall = STALL.as_millis() as u64;
        first != 0 && now.saturating_sub(first) >= stall && now.saturating_sub(last) < stall
    }

    fn replace(&self, why: &str, silent_ms: u64) {
        *self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = pending(&self.client);
        self.replaced.fetch_add(1, Ordering::Relaxed);
        // Give the new connection its own grace period.
        self.last_answer.store(self.now(), Ordering::Relaxed);
        self.first_timeout.store(0, Ordering::Relaxed);
        self.last_timeout.store(0, Ordering::Relaxed);
        tracing::warn!(silent_ms, why, "Redis Cluster connection replaced with a new one");
    }
}

async fn watch(state: Weak<State>) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let now = state.now();
        if state.timing_out() {
            state.replace("requests to part of the cluster keep timing out", 0);
            continue;
        }
        let last_answer = state.last_answer.load(Ordering::Relaxed);
        let last_request = state.last_request.load(Ordering::Relaxed);
        let stalled = last_request > last_answer && now.saturating_sub(last_answer) >= STALL.as_millis() as u64;
        if !stalled {
            continue;
        }
        let mut con = state.current();
        let probe = tokio::time::timeout(PROBE_TIMEOUT, redis::cmd("PING").query_async::<String>(&mut con)).await;
        if matches!(probe, Ok(Ok(_))) {
            state.last_answer.store(state.now(), Ordering::Relaxed);
            continue;
        }
        state.replace("stopped answering", now.saturating_sub(last_answer));
    }
}

impl ConnectionLike for SharedCluster {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let state = self.state.clone();
        state.last_request.store(state.now(), Ordering::Relaxed);
        let generation = state.replaced.load(Ordering::Relaxed);
        let mut con = state.current();
        Box::pin(async move {
            let outcome = con.req_packed_command(cmd).await;
            state.record(&outcome, generation);
            outcome
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let state = self.state.clone();
        state.last_request.store(state.now(), Ordering::Relaxed);
        let generation = state.replaced.load(Ordering::Relaxed);
        let mut con = state.current();
        Box::pin(async move {
            let outcome = con.req_packed_commands(pipeline, offset, count).await;
            state.record(&outcome, generation);
            outcome
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
