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
//! every frame a member got to check "exactly once"). [`Cluster`] starts and owns the
//! processes (logs printed on failure, like [`crate::Stack`]); [`Member`] is a WebSocket
//! client whose frames are read and recorded by a task of its own.

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::http;
use crate::ports::free_port;
use crate::process::Proc;
use crate::redis_server::RedisOptions;
use crate::stack::{PREFIX, REPLY_TIMEOUT};
use crate::test_redis::{TestRedis, Topology};
use crate::testdir::TestDir;
use crate::ws::{self, Incoming, WsClient};
use crate::{binary, INTERFACE_BIN, OPS_BIN, WORKER_BIN};

/// Configures a [`Cluster`].
pub struct ClusterBuilder {
    name: String,
    interfaces: usize,
    workers: usize,
    interface_args: Vec<String>,
    worker_env: Vec<(String, String)>,
    persistent_redis: bool,
    topology: Option<Topology>,
}

impl ClusterBuilder {
    /// Runs Redis with an fsynced append-only file, so a `stop`/`restart` keeps the streams.
    pub fn persistent_redis(mut self) -> Self {
        self.persistent_redis = true;
        self
    }

    /// Runs on one redis-server whatever `SWITCHYARD_TEST_REDIS` says: for tests that stop,
    /// pause or restart the server.
    pub fn single_redis(mut self) -> Self {
        self.topology = Some(Topology::Single);
        self
    }

    /// Runs on a Redis Cluster (3 masters, 3 replicas) whatever `SWITCHYARD_TEST_REDIS` says.
    pub fn redis_cluster(mut self) -> Self {
        self.topology = Some(Topology::Cluster);
        self
    }

    /// Number of interfaces (default 3).
    pub fn interfaces(mut self, n: usize) -> Self {
        self.interfaces = n;
        self
    }

    /// Number of workers (default 1; they serve every built-in app).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// An extra command-line argument for every interface.
    pub fn interface_arg(mut self, arg: &str) -> Self {
        self.interface_args.push(arg.into());
        self
    }

    /// An environment variable for every worker.
    pub fn worker_env(mut self, key: &str, value: &str) -> Self {
        self.worker_env.push((key.into(), value.into()));
        self
    }

    /// Starts Redis, the interfaces (each up on `/healthz`; `/readyz` also wants
    /// live workers, which start after them) and the workers (an echo round trip through
    /// every interface). Panics (printing logs) on failure.
    pub async fn start(self) -> Cluster {
        binary(INTERFACE_BIN);
        binary(WORKER_BIN);
        binary(OPS_BIN);
        let dir = TestDir::new(&self.name);
        let topology = self.topology.unwrap_or_else(Topology::from_env);
        let options = RedisOptions {
            persistent: self.persistent_redis,
            ..RedisOptions::default()
        };
        let redis = TestRedis::start(dir.path(), topology, options)
            .await
            .unwrap_or_else(|e| panic!("start the test's Redis ({topology:?}): {e:#}"));
        let mut cluster = Cluster {
            workers: Vec::new(),
            interfaces: Vec::new(),
            addrs: Vec::new(),
            redis,
            dir,
            worker_env: self.worker_env,
        };
        for index in 0..self.interfaces {
            cluster.start_interface(index, &self.interface_args).await;
        }
        for _ in 0..self.workers {
            cluster.spawn_worker();
        }
        if self.workers > 0 {
            cluster.wait_workers_live().await;
        }
        cluster
    }
}

/// Interfaces and workers on one Redis. Dropped in field order: workers, interfaces,
/// redis, then the temp dir (kept if the test failed).
pub struct Cluster {
    /// Worker processes, in start order.
    pub workers: Vec<Proc>,
    interfaces: Vec<Proc>,
    /// `127.0.0.1:<port>` of each interface, by index.
    pub addrs: Vec<String>,
    /// The test's Redis: one server or a Redis Cluster.
    pub redis: TestRedis,
    /// The test's temp dir (logs, redis dir).
    pub dir: TestDir,
    worker_env: Vec<(String, String)>,
}

impl Cluster {
    /// A cluster named `name` (used for the temp dir): 3 interfaces, 1 worker.
    pub fn builder(name: &str) -> ClusterBuilder {
        ClusterBuilder {
            name: name.to_string(),
            interfaces: 3,
            workers: 1,
            interface_args: Vec::new(),
            worker_env: Vec::new(),
            persistent_redis: false,
            topology: None,
        }
    }

    /// The id interface `index` runs with (`--id`).
    pub fn interface_id(index: usize) -> String {
        format!("iface-{index}")
    }

    /// The command line of interface `index` on `addr`.
    fn interface_args(&self, index: usize, addr: &str, extra: &[String]) -> Vec<String> {
        let mut args = vec!["--bind".to_string(), addr.to_string()];
        args.extend(self.redis.client_args());
        args.extend([
            "--prefix".to_string(),
            PREFIX.to_string(),
            "--id".to_string(),
            Cluster::interface_id(index),
        ]);
        args.extend(extra.iter().cloned());
        args
    }

    async fn start_interface(&mut self, index: usize, extra: &[String]) {
        let program = binary(INTERFACE_BIN);
        for attempt in 1..=5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let args = self.interface_args(index, &addr, extra);
            let mut proc = Proc::spawn(&format!("interface-{index}"), &program, &args, &[], self.dir.path())
                .expect("spawn switchyard-interface");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(st) = proc.try_status() {
                    let log = proc.log();
                    if attempt < 5 && log.to_ascii_lowercase().contains("in use") {
                        break; // port taken meanwhile: try another
                    }
                    drop(proc);
                    panic!("interface-{index} exited during startup ({st}); args {args:?}\n{log}");
                }
                if http::status(&addr, "/healthz").await == Some(200) {
                    self.addrs.push(addr);
                    self.interfaces.push(proc);
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    let tail = proc.log_tail(40);
                    drop(proc);
                    panic!("interface-{index} on {addr} not up (/healthz != 200) within 30 s; args {args:?}\n{tail}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("interface-{index} could not bind a port after 5 attempts");
    }

    /// Starts one more worker; returns its index in `workers`.
    pub fn spawn_worker(&mut self) -> usize {
        let mut args = self.redis.client_args();
        args.extend(["--prefix".to_string(), PREFIX.to_string()]);
        let index = self.workers.len();
        let proc = Proc::spawn(
            &format!("worker-{index}"),
            &binary(WORKER_BIN),
            &args,
            &self.worker_env,
            self.dir.path(),
        )
        .expect("spawn switchyard-worker");
        self.workers.push(proc);
        index
    }

    /// Waits (up to 40 s) until an echo round trip works through every live interface.
    pub async fn wait_workers_live(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        for index in 0..self.interfaces.len() {
            if !self.interfaces[index].is_running() {
                continue;
            }
            loop {
                for w in &mut self.workers {
                    if let Some(st) = w.try_status() {
                        panic!("{} exited during startup ({st})", w.name());
                    }
                }
                if let Ok(mut c) = ws::connect_retry(&self.ws_url(index, "/ws/echo/"), Duration::from_secs(1)).await {
                    let ok = c.send_text("probe").await.is_ok()
                        && matches!(c.recv(REPLY_TIMEOUT).await, Ok(Incoming::Text(t)) if t == "probe");
                    c.close().await;
                    if ok {
                        break;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "workers not live: no echo round trip through interface-{index} within 40 s"
                );
            }
        }
    }

    /// Number of interfaces started (killed ones included).
    pub fn interface_count(&self) -> usize {
        self.interfaces.len()
    }

    /// Interface process `index`.
    pub fn interface(&mut self, index: usize) -> &mut Proc {
        &mut self.interfaces[index]
    }

    /// `ws://<addr of interface index><path>`
    pub fn ws_url(&self, index: usize, path: &str) -> String {
        format!("ws://{}{}", self.addrs[index], path)
    }

    /// Connects a client to interface `index`, retrying for up to 20 s; panics on failure.
    pub async fn ws(&self, index: usize, path: &str) -> WsClient {
        ws::connect_retry(&self.ws_url(index, path), Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("interface-{index}: {e:#}"))
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
        crate::eventually(timeout, || async {
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
        crate::eventually(timeout, || async { self.json().into_iter().find(|v| pred(v)) })
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

impl Cluster {
    /// Starts interface `index` again (after it has exited) on the same address and with the
    /// same id, as a supervisor would; waits (up to 30 s) for `/healthz`, retrying while the
    /// port is still held. `extra` are its extra arguments.
    pub async fn restart_interface(&mut self, index: usize, extra: &[String]) {
        let addr = self.addrs[index].clone();
        let args = self.interface_args(index, &addr, extra);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut proc = Proc::spawn(
            &format!("interface-{index}"),
            &binary(INTERFACE_BIN),
            &args,
            &[],
            self.dir.path(),
        )
        .expect("spawn switchyard-interface");
        loop {
            if http::status(&addr, "/healthz").await == Some(200) {
                self.interfaces[index] = proc;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "interface-{index} not back on {addr} within 30 s:\n{}",
                proc.log_tail(40)
            );
            if proc.try_status().is_some() {
                // Most likely the port is not free yet: try again.
                tokio::time::sleep(Duration::from_millis(250)).await;
                proc = Proc::spawn(
                    &format!("interface-{index}"),
                    &binary(INTERFACE_BIN),
                    &args,
                    &[],
                    self.dir.path(),
                )
                .expect("spawn switchyard-interface");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
