//! A whole Switchyard deployment for one test: Redis, one or more interfaces, N workers.
//!
//! Why this exists: nearly every test needs the same setup — a private Redis, an interface
//! on a free port pointed at it, some workers — and the same readiness rules: the interface
//! is up when `/healthz` answers 200 (`/readyz` also wants a live worker for every routed
//! channel, and the workers start after it), workers are live when a WebSocket round trip
//! through them works. Starting it in one place keeps the tests about behaviour, and makes failures
//! print every process's log tail (see `process.rs`). Redis is a single server or a Redis
//! Cluster, as `SWITCHYARD_TEST_REDIS` says or the builder forces (see `test_redis.rs`).
//!
//! This is the one harness: the group tests' several interfaces (`cluster.rs`) are a
//! [`Stack`] started with [`StackBuilder::interfaces`], plus helpers for groups.

use std::time::Duration;

use anyhow::{Context, Result};
use redis::Value;
use switchyard_protocol::value::{fields, int_of};
use switchyard_protocol::xinfo::parse_consumers;

use crate::binaries::{binary, INTERFACE_BIN, WORKER_BIN};
use crate::http;
use crate::ports::free_port;
use crate::process::Proc;
use crate::redis_server::RedisOptions;
use crate::test_redis::{TestConn, TestRedis, Topology};
use crate::testdir::TestDir;
use crate::ws::{self, WsClient};

/// Key prefix the tests run with (the default one, passed explicitly).
pub const PREFIX: &str = "switchyard";

/// Generous per-reply time limit: the machine is small and shared.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// How the harness decides that workers are live before the test starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// An echo round trip on `/ws/echo/` (the default).
    Echo,
    /// A chat round trip on `/ws/chat/`.
    Chat,
    /// Don't wait for workers.
    None,
}

/// Configures a [`Stack`].
pub struct StackBuilder {
    name: String,
    interfaces: usize,
    /// Interfaces run with `--id iface-<index>` (stable across restarts).
    named_interfaces: bool,
    workers: usize,
    worker_env: Vec<(String, String)>,
    worker_args: Vec<String>,
    interface_args: Vec<String>,
    interface_env: Vec<(String, String)>,
    probe: Probe,
    redis: RedisOptions,
    topology: Option<Topology>,
}

impl StackBuilder {
    /// A stack named `name` (used for the temp dir), with one worker.
    pub fn new(name: &str) -> StackBuilder {
        StackBuilder {
            name: name.to_string(),
            interfaces: 1,
            named_interfaces: false,
            workers: 1,
            worker_env: Vec::new(),
            worker_args: Vec::new(),
            interface_args: Vec::new(),
            interface_env: Vec::new(),
            probe: Probe::Echo,
            redis: RedisOptions::default(),
            topology: None,
        }
    }

    /// Runs on one redis-server whatever `SWITCHYARD_TEST_REDIS` says: for tests that stop,
    /// pause or restart the server, or run it with TLS or an ACL user.
    pub fn single_redis(mut self) -> Self {
        self.topology = Some(Topology::Single);
        self
    }

    /// Runs on a Redis Cluster (3 masters, 3 replicas) whatever `SWITCHYARD_TEST_REDIS` says.
    pub fn redis_cluster(mut self) -> Self {
        self.topology = Some(Topology::Cluster);
        self
    }

    /// Runs on a Redis Cluster with `replicas` replicas per master.
    pub fn redis_cluster_with_replicas(mut self, replicas: usize) -> Self {
        self.topology = Some(Topology::Cluster);
        self.redis.replicas_per_master = Some(replicas);
        self
    }

    /// Runs Redis with an fsynced append-only file, so a `stop`/`restart` keeps the streams.
    pub fn persistent_redis(mut self) -> Self {
        self.redis.persistent = true;
        self
    }

    /// Runs Redis as `options` say (TLS, an ACL user; see [`RedisOptions`]); the binaries
    /// get the matching flags. TLS and ACL users need [`StackBuilder::single_redis`].
    pub fn redis_options(mut self, options: RedisOptions) -> Self {
        self.redis = options;
        self
    }

    /// Number of interfaces to start (default 1), each with `--id iface-<index>` when more
    /// than one.
    pub fn interfaces(mut self, n: usize) -> Self {
        self.interfaces = n;
        self.named_interfaces |= n > 1;
        self
    }

    /// Interfaces run with `--id iface-<index>`, so a restarted one keeps its reply stream.
    pub fn named_interfaces(mut self) -> Self {
        self.named_interfaces = true;
        self
    }

    /// Number of worker processes to start.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// An environment variable for every worker.
    pub fn worker_env(mut self, key: &str, value: &str) -> Self {
        self.worker_env.push((key.into(), value.into()));
        self
    }

    /// An extra command-line argument for every worker.
    pub fn worker_arg(mut self, arg: &str) -> Self {
        self.worker_args.push(arg.into());
        self
    }

    /// An extra command-line argument for the interface.
    pub fn interface_arg(mut self, arg: &str) -> Self {
        self.interface_args.push(arg.into());
        self
    }

    /// An environment variable for the interface.
    pub fn interface_env(mut self, key: &str, value: &str) -> Self {
        self.interface_env.push((key.into(), value.into()));
        self
    }

    /// How to wait for workers (default: echo round trip).
    pub fn probe(mut self, probe: Probe) -> Self {
        self.probe = probe;
        self
    }

    /// Starts everything and waits until it is ready. Panics (printing logs) on failure.
    pub async fn start(self) -> Stack {
        // Check the binaries up front so a missing build gives one clear message.
        binary(INTERFACE_BIN);
        if self.workers > 0 {
            binary(WORKER_BIN);
        }
        let dir = TestDir::new(&self.name);
        let topology = self.topology.unwrap_or_else(Topology::from_env);
        let redis = TestRedis::start(dir.path(), topology, self.redis)
            .await
            .unwrap_or_else(|e| panic!("start the test's Redis ({topology:?}): {e:#}"));
        let mut stack = Stack {
            workers: Vec::new(),
            interfaces: Vec::new(),
            redis,
            dir,
            addr: String::new(),
            addrs: Vec::new(),
            worker_env: self.worker_env,
            worker_args: self.worker_args,
            interface_args: self.interface_args,
            interface_env: self.interface_env,
            named_interfaces: self.named_interfaces,
        };
        for index in 0..self.interfaces {
            stack.start_interface(index).await;
        }
        stack.addr = stack.addrs.first().cloned().unwrap_or_default();
        for _ in 0..self.workers {
            stack.spawn_worker();
        }
        if self.workers > 0 {
            stack.wait_workers_live(self.probe).await;
        }
        stack
    }
}

/// A running deployment. Dropped in field order: workers, interfaces, redis, then the temp
/// dir (kept if the test failed).
pub struct Stack {
    /// Worker processes, in start order.
    pub workers: Vec<Proc>,
    interfaces: Vec<Proc>,
    /// The test's Redis: one server or a cluster.
    pub redis: TestRedis,
    /// The test's temp dir (logs, redis dir).
    pub dir: TestDir,
    /// `127.0.0.1:<port>` of the (first) interface.
    pub addr: String,
    /// `127.0.0.1:<port>` of each interface, by index.
    pub addrs: Vec<String>,
    worker_env: Vec<(String, String)>,
    worker_args: Vec<String>,
    interface_args: Vec<String>,
    interface_env: Vec<(String, String)>,
    named_interfaces: bool,
}

impl Stack {
    /// Shorthand for [`StackBuilder::new`].
    pub fn builder(name: &str) -> StackBuilder {
        StackBuilder::new(name)
    }

    /// The id interface `index` runs with when interfaces are named (`--id`).
    pub fn interface_id(index: usize) -> String {
        format!("iface-{index}")
    }

    /// The command line of interface `index` on `addr`.
    fn interface_command(&self, index: usize, addr: &str, extra: &[String]) -> Vec<String> {
        let mut args = vec!["--bind".to_string(), addr.to_string()];
        args.extend(self.redis.client_args());
        args.extend(["--prefix".to_string(), PREFIX.to_string()]);
        if self.named_interfaces {
            args.extend(["--id".to_string(), Stack::interface_id(index)]);
        }
        args.extend(self.interface_args.iter().cloned());
        args.extend(extra.iter().cloned());
        args
    }

    fn spawn_interface(&self, index: usize, args: &[String]) -> Proc {
        Proc::spawn(
            &format!("interface-{index}"),
            &binary(INTERFACE_BIN),
            args,
            &self.interface_env,
            self.dir.path(),
        )
        .expect("spawn switchyard-interface")
    }

    /// Starts interface `index` on a free port; waits (up to 30 s) for `/healthz`
    /// (`/readyz` also wants live workers, which start after it).
    async fn start_interface(&mut self, index: usize) {
        for attempt in 1..=5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let args = self.interface_command(index, &addr, &[]);
            let mut proc = self.spawn_interface(index, &args);
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

    /// Starts interface `index` again (after it has exited) on the same address (and id),
    /// as a supervisor would; waits (up to 30 s) for `/healthz`, retrying while the port is
    /// still held. `extra` are arguments added to the usual ones.
    pub async fn restart_interface(&mut self, index: usize, extra: &[String]) {
        let addr = self.addrs[index].clone();
        let args = self.interface_command(index, &addr, extra);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut proc = self.spawn_interface(index, &args);
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
                proc = self.spawn_interface(index, &args);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The (first) interface process.
    pub fn interface(&mut self) -> &mut Proc {
        self.interface_at(0)
    }

    /// Interface process `index`.
    pub fn interface_at(&mut self, index: usize) -> &mut Proc {
        &mut self.interfaces[index]
    }

    /// Number of interfaces started (killed ones included).
    pub fn interface_count(&self) -> usize {
        self.interfaces.len()
    }

    /// Starts one more worker (same arguments and environment as the others); returns its
    /// index in `workers`.
    pub fn spawn_worker(&mut self) -> usize {
        self.spawn_worker_with(&[], &[])
    }

    /// Starts one more worker with extra arguments and environment.
    pub fn spawn_worker_with(&mut self, extra_args: &[&str], extra_env: &[(&str, &str)]) -> usize {
        let program = binary(WORKER_BIN);
        let mut args = self.redis.client_args();
        args.extend(["--prefix".to_string(), PREFIX.to_string()]);
        args.extend(self.worker_args.iter().cloned());
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut env = self.worker_env.clone();
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let index = self.workers.len();
        let proc = Proc::spawn(&format!("worker-{index}"), &program, &args, &env, self.dir.path())
            .expect("spawn switchyard-worker");
        self.workers.push(proc);
        index
    }

    /// Waits until a round trip through the workers works, then (best effort, up to 10 s)
    /// until every running worker has published its liveness key (`<prefix>:worker:<name>`)
    /// — a blocked `XREADGROUP` does not register a consumer, so the group's consumer list
    /// cannot tell whether a worker is up.
    pub async fn wait_workers_live(&mut self, probe: Probe) {
        let (path, channel) = match probe {
            Probe::None => return,
            Probe::Echo => ("/ws/echo/", "echo"),
            Probe::Chat => ("/ws/chat/", "chat"),
        };
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
                if let Ok(mut c) = ws::connect_retry(&self.ws_url_at(index, path), Duration::from_secs(1)).await {
                    let ok = match probe {
                        Probe::Echo => {
                            c.send_text("probe").await.is_ok()
                                && matches!(c.recv(REPLY_TIMEOUT).await, Ok(ws::Incoming::Text(t)) if t == "probe")
                        }
                        _ => c.chat("probe", REPLY_TIMEOUT).await.is_ok(),
                    };
                    c.close().await;
                    if ok {
                        break;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "workers not live: no {channel} round trip through interface-{index} within 40 s"
                );
            }
            // The round trip can pass before the interface has read the workers once (it
            // refuses nothing until then) while its first read still finds the new worker's
            // liveness saying "not reading yet": the channel would then answer 503 for about
            // a second. Wait until the interface itself counts a live worker for it.
            let addr = self.addrs[index].clone();
            let series = format!("switchyard_channel_workers{{channel=\"{channel}\"}}");
            let counted = crate::wait::eventually(Duration::from_secs(10), || {
                let (addr, series) = (addr.clone(), series.clone());
                async move {
                    let page = http::get(&addr, "/metrics").await.ok()?;
                    (http::metric(&page.body, &series) >= 1.0).then_some(())
                }
            })
            .await;
            assert!(
                counted.is_some(),
                "interface-{index} counts no live worker for {channel} 10 s after a {channel} round trip"
            );
        }
        let running = self.workers.iter_mut().map(|w| w.is_running()).filter(|r| *r).count();
        let reached = crate::wait::eventually(Duration::from_secs(10), || async {
            (self.live_workers() >= running).then_some(())
        })
        .await;
        if reached.is_none() {
            eprintln!(
                "[harness] note: {} of {running} workers have a liveness key after 10 s; going on",
                self.live_workers()
            );
        }
    }

    /// Number of worker liveness keys (`<prefix>:worker:*`) in Redis (on every master of a
    /// cluster).
    pub fn live_workers(&self) -> usize {
        self.redis
            .keys(&format!("{PREFIX}:worker:*"))
            .map(|keys| keys.len())
            .unwrap_or(0)
    }

    /// Number of consumers in the `workers` group of a channel stream (0 if none yet).
    pub fn consumer_count(&self, channel: &str) -> usize {
        let Ok(mut con) = self.redis.conn() else {
            return 0;
        };
        redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(channel_stream(channel))
            .arg("workers")
            .query::<Value>(&mut con)
            .map_or(0, |reply| parse_consumers(&reply).len())
    }

    /// `ws://127.0.0.1:<port><path>` of the (first) interface.
    pub fn ws_url(&self, path: &str) -> String {
        self.ws_url_at(0, path)
    }

    /// `ws://<addr of interface index><path>`
    pub fn ws_url_at(&self, index: usize, path: &str) -> String {
        format!("ws://{}{}", self.addrs[index], path)
    }

    /// Connects a WebSocket client to `path`, retrying for up to 20 s; panics on failure.
    pub async fn ws(&self, path: &str) -> WsClient {
        self.ws_at(0, path).await
    }

    /// Connects a client to interface `index`, retrying for up to 20 s; panics on failure.
    pub async fn ws_at(&self, index: usize, path: &str) -> WsClient {
        ws::connect_retry(&self.ws_url_at(index, path), Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("interface-{index}: {e:#}"))
    }

    /// A synchronous connection to the test's Redis (a cluster connection on a cluster).
    pub fn redis_conn(&self) -> Result<TestConn> {
        self.redis.conn().context("connect to the test's Redis")
    }

    /// Waits (20 s at most) until every entry of `channel`'s shards is acknowledged, then
    /// returns how many entries they ever took: fewer than the messages sent means that
    /// packed entries held several (docs/protocol.md, "Packed entries").
    pub async fn entries_once_settled(&self, channel: &str) -> u64 {
        let mut con = self.redis_conn().expect("redis");
        let streams = channel_streams(&mut con, channel);
        assert!(!streams.is_empty(), "no {channel} shard stream");
        let done = crate::eventually(Duration::from_secs(20), || {
            let left: u64 = streams.iter().map(|s| pending_entries(&mut con, s)).sum();
            async move { (left == 0).then_some(()) }
        })
        .await;
        assert!(done.is_some(), "entries left pending on {streams:?}");
        streams.iter().map(|s| entries_added(&mut con, s)).sum()
    }
}

/// Stream key of a channel's first (on a single Redis: only) shard: `switchyard:chan:{<channel>:0}`.
pub fn channel_stream(channel: &str) -> String {
    format!("{PREFIX}:chan:{{{channel}:0}}")
}

/// The dead-letter stream key: `switchyard:deadletter`.
pub fn deadletter_stream() -> String {
    format!("{PREFIX}:deadletter")
}

/// Entries pending to the workers' group on `stream` (0 when it or the group does not exist).
pub fn pending_entries(con: &mut impl redis::ConnectionLike, stream: &str) -> u64 {
    match redis::cmd("XPENDING")
        .arg(stream)
        .arg("workers")
        .query::<Vec<Value>>(con)
    {
        Ok(summary) => match summary.first() {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        },
        Err(_) => 0,
    }
}

/// `XINFO STREAM`'s `entries-added` (every entry ever appended, trimmed or not), 0 if the
/// stream does not exist.
pub fn entries_added(con: &mut impl redis::ConnectionLike, stream: &str) -> u64 {
    let Ok(info) = redis::cmd("XINFO").arg("STREAM").arg(stream).query::<Value>(con) else {
        return 0;
    };
    let added = fields(&info).into_iter().find(|(name, _)| name == "entries-added");
    added
        .and_then(|(_, value)| int_of(value))
        .map_or(0, |n| n.max(0) as u64)
}

/// A channel's shard streams that exist (shards are numbered from 0).
pub fn channel_streams(con: &mut impl redis::ConnectionLike, channel: &str) -> Vec<String> {
    (0..1024)
        .map(|shard| format!("{PREFIX}:chan:{{{channel}:{shard}}}"))
        .take_while(|stream| redis::cmd("EXISTS").arg(stream).query::<u64>(con).unwrap_or(0) == 1)
        .collect()
}

/// Renders a Redis value as text (bulk and simple strings, integers).
pub fn value_to_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// One stream entry: id and field/value pairs.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl StreamEntry {
    /// Value of a field, if present.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `XRANGE key - +`, parsed.
pub fn xrange_all(con: &mut impl redis::ConnectionLike, key: &str) -> Result<Vec<StreamEntry>> {
    let v: Value = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(con)?;
    let mut out = Vec::new();
    if let Value::Array(entries) = v {
        for e in entries {
            let Value::Array(parts) = e else { continue };
            let (Some(id), Some(fields)) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let id = value_to_string(id).unwrap_or_default();
            let mut pairs = Vec::new();
            match fields {
                Value::Array(kv) => {
                    for pair in kv.chunks(2) {
                        if let [k, v] = pair {
                            pairs.push((
                                value_to_string(k).unwrap_or_default(),
                                value_to_string(v).unwrap_or_default(),
                            ));
                        }
                    }
                }
                Value::Map(kv) => {
                    for (k, v) in kv {
                        pairs.push((
                            value_to_string(k).unwrap_or_default(),
                            value_to_string(v).unwrap_or_default(),
                        ));
                    }
                }
                _ => {}
            }
            out.push(StreamEntry { id, fields: pairs });
        }
    }
    Ok(out)
}
