//! Several interfaces on one Redis, with workers: the layout that group broadcasts are for.
//!
//! (Not to be confused with a Redis Cluster: this is a Switchyard deployment of several
//! interfaces. Its Redis is a [`TestRedis`] — one server, or a Redis Cluster when
//! `SWITCHYARD_TEST_REDIS=cluster` or [`ClusterBuilder::redis_cluster`] asks for one.)
//!
//! Why this exists: a group send is one PUBLISH that every interface fans out to its own
//! members, so the group tests need more than one interface on the same Redis, a way
//! to kill one of them, the `switchyard` ops binary pointed at that Redis, and clients that
//! keep reading in the background (a broadcast can arrive at any time, and a test must see
//! every frame a member got to check "exactly once"). [`Cluster`] is a [`Stack`] with
//! several interfaces, addressed by index; [`Member`] is a WebSocket client whose frames are
//! read and recorded by a task of its own.

use std::ops::{Deref, DerefMut};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::binaries::{binary, OPS_BIN};
use crate::process::Proc;
use crate::stack::{Probe, Stack, StackBuilder, PREFIX};
use crate::ws::{Incoming, WsClient};

/// Configures a [`Cluster`]: a [`StackBuilder`] with 3 named interfaces and 1 worker.
pub struct ClusterBuilder(StackBuilder);

impl ClusterBuilder {
    /// Runs Redis with an fsynced append-only file, so a `stop`/`restart` keeps the streams.
    pub fn persistent_redis(self) -> Self {
        ClusterBuilder(self.0.persistent_redis())
    }

    /// Runs on one redis-server whatever `SWITCHYARD_TEST_REDIS` says: for tests that stop,
    /// pause or restart the server.
    pub fn single_redis(self) -> Self {
        ClusterBuilder(self.0.single_redis())
    }

    /// Runs on a Redis Cluster (3 masters, 3 replicas) whatever `SWITCHYARD_TEST_REDIS` says.
    pub fn redis_cluster(self) -> Self {
        ClusterBuilder(self.0.redis_cluster())
    }

    /// Number of interfaces (default 3).
    pub fn interfaces(self, n: usize) -> Self {
        ClusterBuilder(self.0.interfaces(n).named_interfaces())
    }

    /// Number of workers (default 1; they serve every built-in app).
    pub fn workers(self, n: usize) -> Self {
        ClusterBuilder(self.0.workers(n))
    }

    /// An extra command-line argument for every interface.
    pub fn interface_arg(self, arg: &str) -> Self {
        ClusterBuilder(self.0.interface_arg(arg))
    }

    /// An environment variable for every worker.
    pub fn worker_env(self, key: &str, value: &str) -> Self {
        ClusterBuilder(self.0.worker_env(key, value))
    }

    /// Starts Redis, the interfaces and the workers (an echo round trip through every
    /// interface); panics (printing logs) on failure.
    pub async fn start(self) -> Cluster {
        binary(OPS_BIN);
        Cluster(self.0.start().await)
    }
}

/// Interfaces and workers on one Redis: a [`Stack`] with several interfaces, addressed by
/// index, and the group helpers below. Everything of [`Stack`] is reachable through it.
pub struct Cluster(Stack);

impl Deref for Cluster {
    type Target = Stack;

    fn deref(&self) -> &Stack {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Stack {
        &mut self.0
    }
}

impl Cluster {
    /// A cluster named `name` (used for the temp dir): 3 interfaces, 1 worker.
    pub fn builder(name: &str) -> ClusterBuilder {
        ClusterBuilder(Stack::builder(name).interfaces(3).named_interfaces())
    }

    /// The id interface `index` runs with (`--id`).
    pub fn interface_id(index: usize) -> String {
        Stack::interface_id(index)
    }

    /// Waits (up to 40 s) until an echo round trip works through every live interface.
    pub async fn wait_workers_live(&mut self) {
        self.0.wait_workers_live(Probe::Echo).await;
    }

    /// Interface process `index`.
    pub fn interface(&mut self, index: usize) -> &mut Proc {
        self.0.interface_at(index)
    }

    /// `ws://<addr of interface index><path>`
    pub fn ws_url(&self, index: usize, path: &str) -> String {
        self.0.ws_url_at(index, path)
    }

    /// Connects a client to interface `index`, retrying for up to 20 s; panics on failure.
    pub async fn ws(&self, index: usize, path: &str) -> WsClient {
        self.0.ws_at(index, path).await
    }

    /// Runs the `switchyard` ops binary with `REDIS_URL` pointing at the test's Redis (and
    /// nothing else of ours from the caller's environment); at most 30 s.
    pub async fn ops(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = tokio::process::Command::new(binary(OPS_BIN));
        cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
        for key in crate::process::scrubbed_env() {
            cmd.env_remove(key);
        }
        cmd.env("REDIS_URL", self.redis.url()).env("SWITCHYARD_PREFIX", PREFIX);
        tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .map_err(|_| anyhow!("switchyard {args:?} did not exit within 30 s"))?
            .with_context(|| format!("run switchyard {args:?}"))
    }

    /// `switchyard send-group GROUP MESSAGE [--json]`; returns the broadcast's sequence
    /// number as printed (`… (broadcast #N)`).
    pub async fn send_group(&self, group: &str, message: &str, json: bool) -> Result<u64> {
        let mut args = vec!["send-group", group, message];
        if json {
            args.push("--json");
        }
        let out = self.ops(&args).await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "switchyard {args:?} failed ({}):\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        stdout
            .rsplit_once("broadcast #")
            .and_then(|(_, rest)| rest.trim().trim_end_matches(')').parse().ok())
            .ok_or_else(|| anyhow!("no broadcast number in {stdout:?}"))
    }

    /// `switchyard status --json`, parsed (the exit code is not checked: it is non-zero when
    /// a channel has no live worker, which some tests cause on purpose).
    pub async fn status_json(&self) -> Result<Value> {
        let out = self.ops(&["status", "--json"]).await?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "switchyard status --json ({}) printed no JSON:\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Size of `group` in `switchyard status --json` (0 when it is not listed).
    pub async fn group_size(&self, group: &str) -> Result<u64> {
        let status = self.status_json().await?;
        Ok(status["groups"].get(group).and_then(Value::as_u64).unwrap_or(0))
    }

    /// Polls `switchyard status --json` until `group` has `size` members; returns the last
    /// size seen as the error otherwise.
    pub async fn wait_group_size(&self, group: &str, size: u64, timeout: Duration) -> Result<(), u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = u64::MAX;
        loop {
            if let Ok(n) = self.group_size(group).await {
                if n == size {
                    return Ok(());
                }
                last = n;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The pub/sub channel of `group` on this topology (see [`group_pubsub`]).
    pub fn group_channel(&self, group: &str) -> String {
        group_pubsub(self.redis.is_cluster()).channel(group)
    }

    /// Number of Redis connections subscribed to `group`'s pub/sub channel: one per
    /// interface that has local members. `PUBSUB NUMSUB` on one server; on a cluster
    /// `PUBSUB SHARDNUMSUB` of the sharded channel (see [`group_pubsub`]), summed over the
    /// nodes (only those serving the channel's slot have any).
    pub fn subscribers(&self, group: &str) -> Result<u64> {
        let pubsub = group_pubsub(self.redis.is_cluster());
        let channel = pubsub.channel(group);
        match pubsub {
            GroupPubSub::Classic => self.redis.subscribers(&channel),
            GroupPubSub::Sharded => self.redis.shard_subscribers(&channel),
        }
    }

    /// How many PUBLISH and SPUBLISH commands Redis has run so far (`INFO commandstats`,
    /// summed over every node of a cluster; publishes from Lua scripts included).
    pub fn publishes(&self) -> Result<u64> {
        Ok(self.redis.command_calls("publish")? + self.redis.command_calls("spublish")?)
    }

    /// Polls [`Cluster::subscribers`] until `group` has `n` subscribers; false after
    /// `timeout`.
    pub async fn wait_subscribers(&self, group: &str, n: u64, timeout: Duration) -> bool {
        crate::wait::eventually(timeout, || async {
            (self.subscribers(group).ok() == Some(n)).then_some(())
        })
        .await
        .is_some()
    }
}

/// How group broadcasts travel through Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupPubSub {
    /// `PUBLISH`/`SUBSCRIBE` on `switchyard:group:{<group>}` (a single server).
    Classic,
    /// `SPUBLISH`/`SSUBSCRIBE` on `switchyard:group:{<group>}` (a Redis Cluster: the hash
    /// tag puts the channel in the group's slot, served by one shard).
    Sharded,
}

impl GroupPubSub {
    /// The channel name of `group` (the same on both: the hash tag only matters to a cluster).
    pub fn channel(self, group: &str) -> String {
        format!("{PREFIX}:group:{{{group}}}")
    }
}

/// The pub/sub the binaries use for groups on this topology: sharded pub/sub on a Redis
/// Cluster, classic pub/sub on one server (docs/protocol.md, "Group broadcasts").
pub fn group_pubsub(cluster: bool) -> GroupPubSub {
    if cluster {
        GroupPubSub::Sharded
    } else {
        GroupPubSub::Classic
    }
}

enum Command {
    Send(String),
    Close,
    Drop,
}

/// A WebSocket client read by a background task that records every frame it gets
/// (text, binary, close, end of stream), so a test can check what each member received.
pub struct Member {
    /// Index of the interface it is connected to.
    pub interface: usize,
    frames: Arc<Mutex<Vec<Incoming>>>,
    commands: mpsc::UnboundedSender<Command>,
    task: Option<JoinHandle<()>>,
}

impl Member {
    /// Hands `client` (connected to interface `interface`) to a reading task.
    pub fn spawn(mut client: WsClient, interface: usize) -> Member {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (commands, mut rx) = mpsc::unbounded_channel();
        let record = frames.clone();
        let push = move |frame: Incoming| record.lock().unwrap().push(frame);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = client.stream().next() => match next {
                        None => {
                            push(Incoming::Ended("stream ended".into()));
                            return;
                        }
                        Some(Err(e)) => {
                            push(Incoming::Ended(e.to_string()));
                            return;
                        }
                        Some(Ok(Message::Text(t))) => push(Incoming::Text(t)),
                        Some(Ok(Message::Binary(b))) => push(Incoming::Binary(b)),
                        Some(Ok(Message::Close(f))) => push(match f {
                            Some(f) => Incoming::Close(Some(u16::from(f.code)), f.reason.into_owned()),
                            None => Incoming::Close(None, String::new()),
                        }),
                        Some(Ok(_)) => {}
                    },
                    command = rx.recv() => match command {
                        Some(Command::Send(text)) => {
                            if let Err(e) = client.send_text(text).await {
                                push(Incoming::Ended(format!("{e:#}")));
                                return;
                            }
                        }
                        Some(Command::Close) | None => {
                            client.close().await;
                            return;
                        }
                        // Dropping the client closes the TCP connection without a close frame.
                        Some(Command::Drop) => return,
                    },
                }
            }
        });
        Member {
            interface,
            frames,
            commands,
            task: Some(task),
        }
    }

    /// Sends a text frame (from the reading task).
    pub fn send(&self, text: impl Into<String>) {
        let _ = self.commands.send(Command::Send(text.into()));
    }

    /// Every frame received so far.
    pub fn frames(&self) -> Vec<Incoming> {
        self.frames.lock().unwrap().clone()
    }

    /// Every text frame received so far that parses as JSON.
    pub fn json(&self) -> Vec<Value> {
        self.frames()
            .into_iter()
            .filter_map(|f| match f {
                Incoming::Text(t) => serde_json::from_str(&t).ok(),
                _ => None,
            })
            .collect()
    }

    /// True while no close frame or end of stream has been received.
    pub fn is_open(&self) -> bool {
        !self
            .frames()
            .iter()
            .any(|f| matches!(f, Incoming::Close(..) | Incoming::Ended(_)))
    }

    /// Waits until a received JSON frame satisfies `pred`; returns it.
    pub async fn wait_json(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        crate::wait::eventually(timeout, || async { self.json().into_iter().find(|v| pred(v)) })
            .await
            .ok_or_else(|| anyhow!("no matching frame within {timeout:?}; got {:?}", self.frames()))
    }

    /// Closes with a close handshake (1000) and waits for the reading task to end.
    pub async fn close(mut self) {
        let _ = self.commands.send(Command::Close);
        self.join().await;
    }

    /// Drops the TCP connection without a close frame.
    pub async fn drop_connection(mut self) {
        let _ = self.commands.send(Command::Drop);
        self.join().await;
    }

    async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
