//! A real, throw-away Redis Cluster for one test: three masters, three replicas.
//!
//! Why this exists: on a Redis Cluster the keys of one deployment live on several masters,
//! a master can fail over to its replica, and a client must follow `MOVED` redirects and a
//! changed topology. Whether Switchyard keeps its guarantees there can only be shown against
//! the real thing, so this starts six `redis-server --cluster-enabled yes` processes on free
//! ports (each with its cluster bus port, P+10000, free as well), joins them with
//! `redis-cli --cluster create … --cluster-replicas 1`, and waits until every node agrees:
//! `cluster_state:ok`, all 16384 slots served, every replica's link to its master up.
//!
//! Redis defaults are kept except where a test needs otherwise: a short
//! `--cluster-node-timeout` (2 s by default, see [`RedisClusterOptions`]) so a failover
//! takes seconds, and `--repl-diskless-sync-delay 0` so a replica's first sync does not wait
//! the default 5 s for company. Like [`crate::RedisServer`] there is no persistence unless
//! asked for (append-only file fsynced on every write). Every node logs to
//! `redis-<port>.log` in the test dir (tails printed when a test fails), keeps its data and
//! `nodes.conf` in `cluster-node-<port>/` there, and is killed on drop.
//!
//! Faults: [`RedisCluster::kill_master`] (`kill -9`), [`RedisCluster::stop_node`]
//! (SIGTERM), [`RedisCluster::pause_node`] (SIGSTOP); [`RedisCluster::wait_failover`]
//! measures how long until a replica took over and the survivors are healthy again;
//! [`RedisCluster::restart_node`] starts a node again on its port and directory, where its
//! `nodes.conf` makes it rejoin (as a replica of its successor, if it was failed over).
//! [`RedisCluster::command_stats`] reads `INFO commandstats` per node, to see how the load
//! is shared among the masters.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::ports::free_cluster_port;
use crate::process::Proc;
use crate::redis_server::which;

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// Masters in a [`RedisCluster`]; each has one replica.
pub const MASTERS: usize = 3;
/// Nodes in a [`RedisCluster`].
pub const NODES: usize = 2 * MASTERS;

/// How long a node may take to answer one of the harness's own commands.
const NODE_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `start` and `restart_node` wait for the cluster to be healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the waits poll the nodes.
const POLL: Duration = Duration::from_millis(100);

/// How to run the cluster; `Default` is what [`RedisCluster::start`] runs.
#[derive(Debug, Clone)]
pub struct RedisClusterOptions {
    /// `--cluster-node-timeout`: how long a node may be unreachable before it counts as
    /// failing (and a replica takes over a failed master). Default 2 s.
    pub node_timeout: Duration,
    /// Append-only file fsynced on every write, on every node.
    pub persistent: bool,
    /// Replicas per master (1 by default: six nodes). With 2, a master's failover still
    /// leaves its successor a replica, which `--redis-wait-replicas 1` needs to go on writing.
    pub replicas_per_master: usize,
}

impl Default for RedisClusterOptions {
    fn default() -> Self {
        RedisClusterOptions {
            node_timeout: Duration::from_millis(2000),
            persistent: false,
            replicas_per_master: 1,
        }
    }
}

/// A node's role as the cluster sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Master,
    Replica,
}

/// One line of `CLUSTER NODES`: a node as one member of the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The 40-character node id.
    pub id: String,
    /// Client port (on 127.0.0.1).
    pub port: u16,
    pub role: Role,
    /// For a replica: the id of its master.
    pub master_id: Option<String>,
    /// Slot ranges served (inclusive), for a master.
    pub slots: Vec<(u16, u16)>,
    /// Flagged `fail` (agreed unreachable) or `fail?` (unreachable from the viewer).
    pub failing: bool,
    /// The line of the node that answered.
    pub myself: bool,
}

impl ClusterNode {
    /// True if this node serves hash slot `slot`.
    pub fn owns_slot(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
    }

    /// How many slots it serves.
    pub fn slot_count(&self) -> usize {
        self.slots.iter().map(|&(lo, hi)| usize::from(hi - lo) + 1).sum()
    }
}

/// What [`RedisCluster::wait_failover`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// Port of the replica that took over the dead master's slots.
    pub new_master: u16,
    /// From the moment the master was killed (or paused, or stopped) until every surviving
    /// node reported a healthy cluster with the slots on `new_master`.
    pub took: Duration,
}

/// `INFO commandstats` of one node.
#[derive(Debug, Clone)]
pub struct NodeStats {
    pub port: u16,
    pub role: Role,
    /// Calls per command, as Redis names them (`xadd`, `publish`, `cluster|info`, …).
    pub calls: BTreeMap<String, u64>,
    /// Calls refused before they ran (`rejected_calls`: no permission, say), per command.
    pub rejected: BTreeMap<String, u64>,
}

impl NodeStats {
    /// Calls of `command` (lower case, e.g. `xadd`); 0 if never called.
    pub fn calls(&self, command: &str) -> u64 {
        self.calls.get(command).copied().unwrap_or(0)
    }

    /// Calls of `command` Redis refused; 0 if none.
    pub fn rejected(&self, command: &str) -> u64 {
        self.rejected.get(command).copied().unwrap_or(0)
    }
}

/// The state of one of the six processes.
struct Node {
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    paused: bool,
    /// Role as last seen in a healthy cluster.
    role: Option<Role>,
}

impl Node {
    /// Started (and not killed or stopped by the harness) and not paused: expected to
    /// answer. A node that crashed on its own still counts, so its silence is reported.
    fn is_live(&self) -> bool {
        !self.paused && self.proc.is_some()
    }
}

/// Masters serving slots, as (port, slot ranges), sorted: what every node must agree on.
type SlotOwners = Vec<(u16, Vec<(u16, u16)>)>;

/// A node taken down by the harness: when, and what it served then.
struct Down {
    at: Instant,
    slots: Vec<(u16, u16)>,
}

/// Six redis-server processes forming one Redis Cluster (3 masters, 3 replicas).
pub struct RedisCluster {
    dir: PathBuf,
    options: RedisClusterOptions,
    nodes: Vec<Node>,
    down: HashMap<u16, Down>,
}

impl RedisCluster {
    /// Starts a cluster with the default options, with `dir` (the test dir) holding each
    /// node's directory and log; returns once it is healthy.
    pub async fn start(dir: &Path) -> Result<RedisCluster> {
        RedisCluster::start_with_options(dir, RedisClusterOptions::default()).await
    }

    /// Like [`RedisCluster::start`], with every node's append-only file fsynced on every
    /// write.
    pub async fn start_persistent(dir: &Path) -> Result<RedisCluster> {
        let options = RedisClusterOptions {
            persistent: true,
            ..RedisClusterOptions::default()
        };
        RedisCluster::start_with_options(dir, options).await
    }

    /// Starts six nodes (each on a fresh port pair, retried if a port is taken meanwhile),
    /// creates the cluster with `redis-cli --cluster create`, and waits (up to 90 s) until
    /// every node reports it healthy.
    pub async fn start_with_options(dir: &Path, options: RedisClusterOptions) -> Result<RedisCluster> {
        let started = Instant::now();
        let mut cluster = RedisCluster {
            dir: dir.to_path_buf(),
            options,
            nodes: Vec::new(),
            down: HashMap::new(),
        };
        for _ in 0..MASTERS * (1 + cluster.options.replicas_per_master) {
            let node = cluster.launch_new_node().await?;
            cluster.nodes.push(node);
        }
        cluster.create().await?;
        cluster
            .wait_healthy(HEALTHY_TIMEOUT)
            .await
            .context("the new Redis Cluster did not become healthy")?;
        eprintln!(
            "[harness] redis cluster up in {:.1} s: masters {:?}, replicas {:?}",
            started.elapsed().as_secs_f64(),
            cluster.ports_with_role(Role::Master),
            cluster.ports_with_role(Role::Replica)
        );
        Ok(cluster)
    }

    /// A node on a new port pair; up to 5 attempts (a port may be taken between the check
    /// and the bind).
    async fn launch_new_node(&self) -> Result<Node> {
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_cluster_port();
            let mut node = Node {
                port,
                dir: self.dir.join(format!("cluster-node-{port}")),
                proc: None,
                paused: false,
                role: None,
            };
            std::fs::create_dir_all(&node.dir)
                .with_context(|| format!("create the node directory {}", node.dir.display()))?;
            match self.launch(&node).await {
                Ok(proc) => {
                    node.proc = Some(proc);
                    return Ok(node);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err
            .expect("at least one attempt")
            .context("a Redis Cluster node did not start after 5 attempts"))
    }

    /// Spawns the node's redis-server and waits (up to 15 s) until it answers PING.
    async fn launch(&self, node: &Node) -> Result<Proc> {
        let program = which("redis-server").context(
            "redis-server not found on PATH: install it (`apt-get install -y redis-server`) or run scripts/test",
        )?;
        let (appendonly, fsync) = if self.options.persistent {
            ("yes", "always")
        } else {
            ("no", "everysec")
        };
        let args: Vec<String> = [
            "--port",
            &node.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &node.dir.display().to_string(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &self.options.node_timeout.as_millis().to_string(),
            "--repl-diskless-sync-delay",
            "0",
            "--save",
            "",
            "--appendonly",
            appendonly,
            "--appendfsync",
            fsync,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = Proc::spawn(&format!("redis-{}", node.port), &program, &args, &[], &self.dir)
            .with_context(|| format!("spawn redis-server for cluster node {}", node.port))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = proc.try_status() {
                bail!(
                    "cluster node redis-server on port {} exited ({st}) during startup:\n{}",
                    node.port,
                    proc.log_tail(20)
                );
            }
            if ping(node.port).is_ok() {
                return Ok(proc);
            }
            if Instant::now() >= deadline {
                bail!(
                    "cluster node redis-server on port {} did not answer PING within 15 s:\n{}",
                    node.port,
                    proc.log_tail(20)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `redis-cli --cluster create <nodes> --cluster-replicas N --cluster-yes` (the first
    /// three become masters); its output goes to `redis-cli-create.log`.
    async fn create(&self) -> Result<()> {
        let program = which("redis-cli").context(
            "redis-cli not found on PATH: install it (`apt-get install -y redis-tools`) or run scripts/test",
        )?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args([
                "--cluster-replicas",
                &self.options.replicas_per_master.to_string(),
                "--cluster-yes",
            ])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .map_err(|_| anyhow!("redis-cli --cluster create did not finish within 120 s"))?
            .context("run redis-cli --cluster create")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::write(self.dir.join("redis-cli-create.log"), &text);
        if !out.status.success() || !text.contains("[OK] All 16384 slots covered") {
            bail!("redis-cli --cluster create failed ({}):\n{text}", out.status);
        }
        Ok(())
    }

    /// Client ports of all six nodes, in start order (killed ones included).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn ports_with_role(&self, role: Role) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.role == Some(role))
            .map(|n| n.port)
            .collect()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`: the masters as the harness
    /// last saw them healthy (after start, a failover, a restart) as seed nodes.
    pub fn url(&self) -> String {
        let mut seeds = self.ports_with_role(Role::Master);
        if seeds.is_empty() {
            seeds = self.ports();
        }
        let hosts: Vec<String> = seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The flags that point one of our binaries at this cluster: `--redis-url <url>`.
    pub fn client_args(&self) -> Vec<String> {
        vec!["--redis-url".to_string(), self.url()]
    }

    /// A cluster connection for the test's own use (seeded with every live node; follows
    /// `MOVED`, routes `KEYS` to every master and merges the answers).
    pub fn conn(&self) -> Result<redis::cluster::ClusterConnection> {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect();
        let client = redis::cluster::ClusterClient::builder(seeds)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(NODE_IO_TIMEOUT)
            .build()
            .context("build a Redis Cluster client")?;
        client.get_connection().context("connect to the Redis Cluster")
    }

    /// A plain connection to one node (no redirects followed), with 5 s I/O timeouts.
    pub fn node_conn(&self, port: u16) -> Result<redis::Connection> {
        node_conn(port)
    }

    /// True while the node's process runs (paused or not).
    pub fn is_running(&mut self, port: u16) -> bool {
        self.node_mut(port)
            .is_ok_and(|n| n.proc.as_mut().is_some_and(|p| p.is_running()))
    }

    fn node_mut(&mut self, port: u16) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .ok_or_else(|| anyhow!("no node of this cluster has port {port}"))
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter_map(|n| n.is_live().then_some(n.port))
            .collect()
    }

    /// The cluster as one live node sees it (`CLUSTER NODES`), the first one that answers.
    pub fn nodes(&self) -> Result<Vec<ClusterNode>> {
        let mut last_err = anyhow!("no live node");
        for port in self.live_ports() {
            match cluster_nodes(port) {
                Ok(nodes) => return Ok(nodes),
                Err(e) => last_err = e,
            }
        }
        Err(last_err.context("no node answered CLUSTER NODES"))
    }

    /// The masters serving slots and not failing, as a live node sees them, by port.
    pub fn masters(&self) -> Result<Vec<ClusterNode>> {
        let mut masters: Vec<ClusterNode> = self
            .nodes()?
            .into_iter()
            .filter(|n| n.role == Role::Master && !n.failing && !n.slots.is_empty())
            .collect();
        masters.sort_by_key(|n| n.port);
        Ok(masters)
    }

    /// The master serving `key`'s hash slot (see [`key_slot`]).
    pub fn master_for_key(&self, key: &str) -> Result<ClusterNode> {
        let slot = key_slot(key);
        self.masters()?
            .into_iter()
            .find(|m| m.owns_slot(slot))
            .ok_or_else(|| anyhow!("no live master serves slot {slot} (key {key:?})"))
    }

    /// Every key matching `pattern` on every master (`KEYS` on each, merged and sorted).
    pub fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for master in self.masters()? {
            let mut con = node_conn(master.port)?;
            let some: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query(&mut con)
                .with_context(|| format!("KEYS {pattern} on master {}", master.port))?;
            keys.extend(some);
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Records what a node served before the harness takes it down (for `wait_failover`).
    fn note_down(&mut self, port: u16) {
        let slots = self
            .nodes()
            .ok()
            .and_then(|nodes| nodes.into_iter().find(|n| n.port == port))
            .map(|n| n.slots)
            .unwrap_or_default();
        self.down.insert(
            port,
            Down {
                at: Instant::now(),
                slots,
            },
        );
    }

    /// `kill -9` of the master on `port`; fails if that node is not a live master.
    pub fn kill_master(&mut self, port: u16) -> Result<()> {
        let is_master = self.masters()?.iter().any(|m| m.port == port);
        if !is_master {
            bail!("node {port} is not a live master of the cluster");
        }
        self.kill_node(port)
    }

    /// `kill -9` of the master serving `key`; returns its port.
    pub fn kill_master_for_key(&mut self, key: &str) -> Result<u16> {
        let port = self.master_for_key(key)?.port;
        self.kill_node(port)?;
        Ok(port)
    }

    /// `kill -9` of the node on `port`, whatever its role.
    pub fn kill_node(&mut self, port: u16) -> Result<()> {
        self.note_down(port);
        let node = self.node_mut(port)?;
        let mut proc = node.proc.take().ok_or_else(|| anyhow!("node {port} is not running"))?;
        proc.kill9();
        node.paused = false;
        Ok(())
    }

    /// SIGTERM to the node on `port` and wait (up to 20 s, then SIGKILL) for it to exit. A
    /// master first waits for its replicas to catch up (Redis 7 `shutdown-timeout`), so no
    /// acknowledged write is lost.
    pub async fn stop_node(&mut self, port: u16) -> Result<()> {
        self.note_down(port);
        let node = self.node_mut(port)?;
        let mut proc = node.proc.take().ok_or_else(|| anyhow!("node {port} is not running"))?;
        if node.paused {
            proc.signal(libc::SIGCONT);
            node.paused = false;
        }
        proc.sigterm();
        if proc.wait_exit(Duration::from_secs(20)).await.is_none() {
            proc.kill9();
        }
        Ok(())
    }

    /// Freezes the node on `port` (SIGSTOP): its connections stay open, nothing is
    /// answered; after the node timeout the others count it as failed.
    pub fn pause_node(&mut self, port: u16) -> Result<()> {
        self.note_down(port);
        let node = self.node_mut(port)?;
        let proc = node
            .proc
            .as_mut()
            .ok_or_else(|| anyhow!("node {port} is not running"))?;
        proc.signal(libc::SIGSTOP);
        node.paused = true;
        Ok(())
    }

    /// Thaws a paused node (SIGCONT). Call [`RedisCluster::wait_healthy`] to wait until the
    /// cluster has taken it back.
    pub fn resume_node(&mut self, port: u16) -> Result<()> {
        let node = self.node_mut(port)?;
        let proc = node
            .proc
            .as_mut()
            .ok_or_else(|| anyhow!("node {port} is not running"))?;
        proc.signal(libc::SIGCONT);
        node.paused = false;
        Ok(())
    }

    /// Waits until a replica has taken over the slots the node on `dead_port` served when
    /// the harness took it down, and every live node reports a healthy cluster. `took`
    /// counts from the moment it was taken down.
    pub async fn wait_failover(&mut self, dead_port: u16, timeout: Duration) -> Result<Failover> {
        let (at, first_slot) = match self.down.get(&dead_port) {
            Some(down) => (
                down.at,
                down.slots
                    .first()
                    .map(|&(lo, _)| lo)
                    .ok_or_else(|| anyhow!("node {dead_port} served no slots when it was taken down"))?,
            ),
            None => bail!("node {dead_port} was not taken down by the harness (kill_master, stop_node, pause_node)"),
        };
        if self.node_mut(dead_port)?.is_live() {
            bail!("node {dead_port} is live again: there is nothing to fail over");
        }
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.health() {
                Ok(view) => {
                    let owner = view.iter().find(|n| n.role == Role::Master && n.owns_slot(first_slot));
                    match owner {
                        Some(owner) if owner.port != dead_port => {
                            let failover = Failover {
                                new_master: owner.port,
                                took: at.elapsed(),
                            };
                            self.remember_roles(&view);
                            return Ok(failover);
                        }
                        _ => format!("slot {first_slot} still served by {dead_port}"),
                    }
                }
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                bail!("no failover of node {dead_port} within {timeout:?}: {why}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts the node on `port` again (after a kill or stop), on its port and directory: its
    /// `nodes.conf` makes it rejoin — as a replica of its successor if it was failed over.
    /// Waits (up to 90 s) until the cluster is healthy with it; returns its role then.
    pub async fn restart_node(&mut self, port: u16) -> Result<Role> {
        if self.is_running(port) {
            bail!("node {port} is still running");
        }
        let mut last_err = None;
        for _ in 0..20 {
            let node = self.nodes.iter().find(|n| n.port == port).expect("checked above");
            match self.launch(node).await {
                Ok(proc) => {
                    self.node_mut(port)?.proc = Some(proc);
                    last_err = None;
                    break;
                }
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e.context(format!("restarting cluster node {port}")));
        }
        self.down.remove(&port);
        let view = self.wait_healthy(HEALTHY_TIMEOUT).await?;
        view.iter()
            .find(|n| n.port == port)
            .map(|n| n.role)
            .ok_or_else(|| anyhow!("restarted node {port} is not in the cluster's view"))
    }

    /// Waits until every live node reports a healthy cluster ([`RedisCluster::health`]
    /// rules); returns the agreed view.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<Vec<ClusterNode>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.health() {
                Ok(view) => {
                    self.remember_roles(&view);
                    return Ok(view);
                }
                Err(why) if Instant::now() >= deadline => {
                    bail!("Redis Cluster not healthy within {timeout:?}: {why}")
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// One health check of every live node: `cluster_state:ok`, 16384 slots assigned and
    /// ok, all six nodes known, no live node flagged failing, the node either a master
    /// serving slots or a replica whose `master_link_status` is `up`, and the same masters
    /// and slots in every node's view.
    /// `Err` says what is not so yet.
    fn health(&self) -> std::result::Result<Vec<ClusterNode>, String> {
        let live = self.live_ports();
        if live.is_empty() {
            return Err("no live node".into());
        }
        // The first node's port, its slot owners and its whole view.
        let mut agreed: Option<(u16, SlotOwners, Vec<ClusterNode>)> = None;
        for &port in &live {
            let mut con = node_conn(port).map_err(|e| format!("node {port}: {e:#}"))?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut con)
                .map_err(|e| format!("node {port}: CLUSTER INFO: {e}"))?;
            let field = |name: &str| info_field(&info, name).unwrap_or_default();
            if field("cluster_state") != "ok" {
                return Err(format!("node {port}: cluster_state:{}", field("cluster_state")));
            }
            for name in ["cluster_slots_assigned", "cluster_slots_ok"] {
                if field(name) != SLOTS.to_string() {
                    return Err(format!("node {port}: {name}:{}", field(name)));
                }
            }
            if field("cluster_known_nodes") != self.nodes.len().to_string() {
                return Err(format!(
                    "node {port}: cluster_known_nodes:{}",
                    field("cluster_known_nodes")
                ));
            }
            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut con)
                .map_err(|e| format!("node {port}: CLUSTER NODES: {e}"))?;
            let view = parse_cluster_nodes(&text).map_err(|e| format!("node {port}: {e:#}"))?;
            for n in view.iter().filter(|n| live.contains(&n.port)) {
                if n.failing {
                    return Err(format!("node {port} sees live node {} as failing", n.port));
                }
                if n.role == Role::Master && n.slots.is_empty() {
                    // Right after `--cluster create`, before it is told to replicate (or
                    // before the others have heard).
                    return Err(format!("node {port} sees node {} as a master without slots", n.port));
                }
            }
            let me = view
                .iter()
                .find(|n| n.myself)
                .ok_or_else(|| format!("node {port}: no `myself` line in CLUSTER NODES"))?;
            if me.role == Role::Replica {
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut con)
                    .map_err(|e| format!("node {port}: INFO replication: {e}"))?;
                let link = info_field(&replication, "master_link_status").unwrap_or_default();
                if link != "up" {
                    return Err(format!("replica {port}: master_link_status:{link}"));
                }
            }
            let mut owners: SlotOwners = view
                .iter()
                .filter(|n| n.role == Role::Master && !n.failing && !n.slots.is_empty())
                .map(|n| (n.port, n.slots.clone()))
                .collect();
            owners.sort();
            match &agreed {
                None => agreed = Some((port, owners, view)),
                Some((first, theirs, _)) if *theirs != owners => {
                    return Err(format!(
                        "nodes {first} and {port} disagree on the masters: {theirs:?} vs {owners:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        let (_, _, view) = agreed.expect("at least one live node");
        Ok(view)
    }

    fn remember_roles(&mut self, view: &[ClusterNode]) {
        for node in &mut self.nodes {
            node.role = view.iter().find(|v| v.port == node.port && !v.failing).map(|v| v.role);
        }
    }

    /// `INFO commandstats` of every live node, by port.
    pub fn command_stats(&self) -> Result<Vec<NodeStats>> {
        let mut stats = Vec::new();
        for port in self.live_ports() {
            let mut con = node_conn(port)?;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .arg("commandstats")
                .query(&mut con)
                .with_context(|| format!("INFO commandstats on node {port}"))?;
            let role = match info_field(&info, "role").as_deref() {
                Some("master") => Role::Master,
                _ => Role::Replica,
            };
            stats.push(NodeStats {
                port,
                role,
                calls: parse_commandstats(&info),
                rejected: parse_commandstats_field(&info, "rejected_calls"),
            });
        }
        Ok(stats)
    }

    /// `CONFIG RESETSTAT` on every live node (command counts back to zero).
    pub fn reset_stats(&self) -> Result<()> {
        for port in self.live_ports() {
            let mut con = node_conn(port)?;
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .exec(&mut con)
                .with_context(|| format!("CONFIG RESETSTAT on node {port}"))?;
        }
        Ok(())
    }

    /// Number of clients subscribed to `channel` with `SSUBSCRIBE`, over every live node
    /// (`PUBSUB SHARDNUMSUB`; only the nodes serving the channel's slot have any).
    pub fn shard_subscribers(&self, channel: &str) -> Result<u64> {
        self.sum_over_live_nodes("SHARDNUMSUB", channel)
    }

    /// Number of clients subscribed to `channel` with `SUBSCRIBE`, over every live node
    /// (`PUBSUB NUMSUB`; a subscriber is counted by the node it is connected to).
    pub fn subscribers(&self, channel: &str) -> Result<u64> {
        self.sum_over_live_nodes("NUMSUB", channel)
    }

    fn sum_over_live_nodes(&self, subcommand: &str, channel: &str) -> Result<u64> {
        let mut total = 0;
        for port in self.live_ports() {
            let mut con = node_conn(port)?;
            let answer: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg(subcommand)
                .arg(channel)
                .query(&mut con)
                .with_context(|| format!("PUBSUB {subcommand} {channel} on node {port}"))?;
            total += answer.iter().map(|(_, n)| n).sum::<u64>();
        }
        Ok(total)
    }
}

/// A plain connection to the node on 127.0.0.1:`port`, with 5 s I/O timeouts.
fn node_conn(port: u16) -> Result<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .with_context(|| format!("connect to cluster node {port}"))?;
    con.set_read_timeout(Some(NODE_IO_TIMEOUT))?;
    con.set_write_timeout(Some(NODE_IO_TIMEOUT))?;
    Ok(con)
}

fn ping(port: u16) -> Result<()> {
    let mut con = node_conn(port)?;
    let pong: String = redis::cmd("PING").query(&mut con)?;
    if pong != "PONG" {
        bail!("unexpected PING answer {pong:?}");
    }
    Ok(())
}

fn cluster_nodes(port: u16) -> Result<Vec<ClusterNode>> {
    let mut con = node_conn(port)?;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut con)
        .with_context(|| format!("CLUSTER NODES on node {port}"))?;
    parse_cluster_nodes(&text).with_context(|| format!("CLUSTER NODES of node {port}"))
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent>
/// <pong-recv> <config-epoch> <link-state> <slot> …`; slots migrating or importing
/// (`[…]`) are left out. Nodes without an address (`:0`) get port 0.
pub fn parse_cluster_nodes(text: &str) -> Result<Vec<ClusterNode>> {
    let mut nodes = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            bail!("short CLUSTER NODES line {line:?}");
        }
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| anyhow!("no port in CLUSTER NODES line {line:?}"))?;
        let flags: Vec<&str> = fields[2].split(',').collect();
        let role = if flags.contains(&"master") {
            Role::Master
        } else {
            Role::Replica
        };
        let mut slots = Vec::new();
        for slot in &fields[8..] {
            if slot.starts_with('[') {
                continue;
            }
            let range = match slot.split_once('-') {
                Some((lo, hi)) => (lo.parse(), hi.parse()),
                None => (slot.parse(), slot.parse()),
            };
            match range {
                (Ok(lo), Ok(hi)) => slots.push((lo, hi)),
                _ => bail!("bad slot {slot:?} in CLUSTER NODES line {line:?}"),
            }
        }
        nodes.push(ClusterNode {
            id: fields[0].to_string(),
            port,
            role,
            master_id: (fields[3] != "-").then(|| fields[3].to_string()),
            slots,
            failing: flags.contains(&"fail") || flags.contains(&"fail?"),
            myself: flags.contains(&"myself"),
        });
    }
    Ok(nodes)
}

/// `calls` per command from `INFO commandstats` (`cmdstat_<name>:calls=N,usec=…`).
pub fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    parse_commandstats_field(info, "calls")
}

/// One figure (`calls`, `rejected_calls`, …) per command from `INFO commandstats`.
pub fn parse_commandstats_field(info: &str, field: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{field}=");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let value = rest.split(',').find_map(|kv| kv.strip_prefix(&prefix))?.parse().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

/// The value of `name:value` in `INFO` or `CLUSTER INFO` text.
fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (key, value) = line.trim_end().split_once(':')?;
        (key == name).then(|| value.to_string())
    })
}

/// The hash slot of `key`, as Redis Cluster computes it (the project's own computation,
/// checked against `CLUSTER KEYSLOT` in `tests/tests/redis_cluster_harness.rs`).
pub fn key_slot(key: &str) -> u16 {
    switchyard_protocol::keys::slot(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 connected 10923-16383 [93->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 5461
";
        let nodes = parse_cluster_nodes(text).unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].port, 30004);
        assert_eq!(nodes[0].role, Role::Replica);
        assert_eq!(
            nodes[0].master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert_eq!(nodes[1].slots, vec![(5461, 10922)]);
        assert!(nodes[2].failing && nodes[2].slots == vec![(10923, 16383)]);
        assert!(nodes[3].myself && nodes[3].owns_slot(5461) && !nodes[3].owns_slot(5462));
        assert_eq!(nodes[3].slot_count(), 5462);
    }

    #[test]
    fn commandstats_parse() {
        let info = "# Commandstats\r\ncmdstat_xadd:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\ncmdstat_cluster|info:calls=3,usec=9\r\n";
        let calls = parse_commandstats(info);
        assert_eq!(calls.get("xadd"), Some(&12));
        assert_eq!(calls.get("cluster|info"), Some(&3));
    }
}
