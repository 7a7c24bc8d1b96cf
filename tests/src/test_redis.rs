//! The test's Redis, whichever topology it runs on: one `redis-server` or a Redis Cluster.
//!
//! Why this exists: the same end-to-end test should prove the same guarantees on a single
//! Redis and on a Redis Cluster, so [`crate::Stack`] and the multi-interface
//! [`crate::cluster::Cluster`] hold a [`TestRedis`] instead of a [`RedisServer`]. The
//! topology comes from the environment variable `SWITCHYARD_TEST_REDIS` (`single`, the
//! default, or `cluster`) unless a builder forces one (`.single_redis()` for the tests that
//! stop, pause or restart *the* server or run it with TLS or an ACL user; `.redis_cluster()`
//! for tests about the cluster itself).
//!
//! What is the same on both: [`TestRedis::url`] and [`TestRedis::client_args`] for the
//! binaries, [`TestRedis::conn`] for the test's own commands — a [`TestConn`], which is a
//! `redis::ConnectionLike` either way (on a cluster it follows `MOVED` and routes by key) —
//! and the helpers that must look at every master on a cluster: [`TestRedis::keys`],
//! [`TestRedis::command_stats`], the subscriber counts. Topology-specific operations go
//! through [`TestRedis::single_mut`] and [`TestRedis::cluster_mut`], which panic with a
//! clear message on the other topology.

use std::path::Path;

use anyhow::{bail, Context, Result};
use redis::{Cmd, ConnectionLike, RedisResult, Value};

use crate::redis_cluster::{NodeStats, RedisCluster, RedisClusterOptions, Role};
use crate::redis_server::{RedisOptions, RedisServer};

/// The environment variable choosing the topology: `single` (default) or `cluster`.
pub const TOPOLOGY_ENV: &str = "SWITCHYARD_TEST_REDIS";

/// Which kind of Redis a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One `redis-server` ([`RedisServer`]).
    Single,
    /// A Redis Cluster of 3 masters and 3 replicas ([`RedisCluster`]).
    Cluster,
}

impl Topology {
    /// The topology `SWITCHYARD_TEST_REDIS` asks for (`single` when unset or empty);
    /// panics on any other value, so a typo cannot silently test the wrong thing.
    pub fn from_env() -> Topology {
        match std::env::var(TOPOLOGY_ENV) {
            Err(std::env::VarError::NotPresent) => Topology::Single,
            Ok(v) if v.is_empty() || v == "single" => Topology::Single,
            Ok(v) if v == "cluster" => Topology::Cluster,
            Ok(v) => panic!("{TOPOLOGY_ENV}={v:?}: expected `single` or `cluster`"),
            Err(e) => panic!("{TOPOLOGY_ENV}: {e}"),
        }
    }
}

/// The test's Redis: one server or a cluster.
pub enum TestRedis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl TestRedis {
    /// Starts a Redis of `topology` with its data and logs in `dir`. On a cluster only
    /// `options.persistent` applies: TLS and ACL users are single-server features here
    /// (asking for them on a cluster is an error).
    pub async fn start(dir: &Path, topology: Topology, options: RedisOptions) -> Result<TestRedis> {
        match topology {
            Topology::Single => Ok(TestRedis::Single(RedisServer::start_with_options(dir, options).await?)),
            Topology::Cluster => {
                if options.tls.is_some() || options.user.is_some() {
                    bail!(
                        "TLS and ACL users are only set up on a single redis-server: build the test with \
                         `.single_redis()`"
                    );
                }
                let defaults = RedisClusterOptions::default();
                let cluster_options = RedisClusterOptions {
                    persistent: options.persistent,
                    replicas_per_master: options.replicas_per_master.unwrap_or(defaults.replicas_per_master),
                    ..defaults
                };
                Ok(TestRedis::Cluster(
                    RedisCluster::start_with_options(dir, cluster_options).await?,
                ))
            }
        }
    }

    /// Which topology this is.
    pub fn topology(&self) -> Topology {
        match self {
            TestRedis::Single(_) => Topology::Single,
            TestRedis::Cluster(_) => Topology::Cluster,
        }
    }

    /// True on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.topology() == Topology::Cluster
    }

    /// The URL for `--redis-url` / `REDIS_URL`: `redis://…` (or `rediss://`) for one server,
    /// `redis+cluster://h:p,h:p,h:p` (the masters as seeds) for a cluster.
    pub fn url(&self) -> String {
        match self {
            TestRedis::Single(s) => s.url(),
            TestRedis::Cluster(c) => c.url(),
        }
    }

    /// The flags that point one of our binaries at this Redis (`--redis-url` and, for a
    /// TLS server, the certificate files).
    pub fn client_args(&self) -> Vec<String> {
        match self {
            TestRedis::Single(s) => s.client_args(),
            TestRedis::Cluster(c) => c.client_args(),
        }
    }

    /// A new synchronous connection for the test's own commands (keep calls short).
    pub fn conn(&self) -> Result<TestConn> {
        Ok(match self {
            TestRedis::Single(s) => TestConn::Single(s.conn()?),
            TestRedis::Cluster(c) => TestConn::Cluster(Box::new(c.conn()?)),
        })
    }

    /// A plain connection to the node that serves `key`: the server itself, or the cluster
    /// master owning `key`'s hash slot. For what must happen on that very node, such as
    /// `CLIENT LIST` / `CLIENT KILL` of the connections reading a stream.
    pub fn conn_for_key(&self, key: &str) -> Result<redis::Connection> {
        match self {
            TestRedis::Single(s) => s.conn(),
            TestRedis::Cluster(c) => c.node_conn(c.master_for_key(key)?.port),
        }
    }

    /// The single server; panics on a cluster.
    pub fn single(&self) -> &RedisServer {
        match self {
            TestRedis::Single(s) => s,
            TestRedis::Cluster(_) => panic!("{}", single_only()),
        }
    }

    /// The single server, to stop, pause, kill or restart it; panics on a cluster.
    pub fn single_mut(&mut self) -> &mut RedisServer {
        match self {
            TestRedis::Single(s) => s,
            TestRedis::Cluster(_) => panic!("{}", single_only()),
        }
    }

    /// The cluster; panics on a single server.
    pub fn cluster(&self) -> &RedisCluster {
        match self {
            TestRedis::Cluster(c) => c,
            TestRedis::Single(_) => panic!("{}", cluster_only()),
        }
    }

    /// The cluster, to kill, pause or restart its nodes; panics on a single server.
    pub fn cluster_mut(&mut self) -> &mut RedisCluster {
        match self {
            TestRedis::Cluster(c) => c,
            TestRedis::Single(_) => panic!("{}", cluster_only()),
        }
    }

    /// Every key matching `pattern`: `KEYS` on the server, or on every master of the cluster
    /// (merged). Sorted.
    pub fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        match self {
            TestRedis::Single(s) => {
                let mut keys: Vec<String> = redis::cmd("KEYS")
                    .arg(pattern)
                    .query(&mut s.conn()?)
                    .with_context(|| format!("KEYS {pattern}"))?;
                keys.sort();
                Ok(keys)
            }
            TestRedis::Cluster(c) => c.keys(pattern),
        }
    }

    /// `INFO commandstats` of the server, or of every live cluster node.
    pub fn command_stats(&self) -> Result<Vec<NodeStats>> {
        match self {
            TestRedis::Single(s) => {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query(&mut s.conn()?)
                    .context("INFO commandstats")?;
                Ok(vec![NodeStats {
                    port: s.port(),
                    role: Role::Master,
                    calls: crate::redis_cluster::parse_commandstats(&info),
                    rejected: crate::redis_cluster::parse_commandstats_field(&info, "rejected_calls"),
                }])
            }
            TestRedis::Cluster(c) => c.command_stats(),
        }
    }

    /// Calls of `command` (lower case, e.g. `publish`) summed over every node.
    pub fn command_calls(&self, command: &str) -> Result<u64> {
        Ok(self.command_stats()?.iter().map(|n| n.calls(command)).sum())
    }

    /// `CONFIG RESETSTAT` on the server or on every live cluster node.
    pub fn reset_stats(&self) -> Result<()> {
        match self {
            TestRedis::Single(s) => Ok(redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .exec(&mut s.conn()?)
                .context("CONFIG RESETSTAT")?),
            TestRedis::Cluster(c) => c.reset_stats(),
        }
    }

    /// Clients subscribed to `channel` with `SUBSCRIBE` (`PUBSUB NUMSUB`, summed over every
    /// live node of a cluster).
    pub fn subscribers(&self, channel: &str) -> Result<u64> {
        match self {
            TestRedis::Single(s) => numsub(&mut s.conn()?, "NUMSUB", channel),
            TestRedis::Cluster(c) => c.subscribers(channel),
        }
    }

    /// Clients subscribed to `channel` with `SSUBSCRIBE` (`PUBSUB SHARDNUMSUB`; on a
    /// cluster summed over every live node, of which only the shard serving the channel's
    /// slot has any).
    pub fn shard_subscribers(&self, channel: &str) -> Result<u64> {
        match self {
            TestRedis::Single(s) => numsub(&mut s.conn()?, "SHARDNUMSUB", channel),
            TestRedis::Cluster(c) => c.shard_subscribers(channel),
        }
    }
}

fn single_only() -> String {
    format!(
        "this test needs a single redis-server (it stops, pauses or restarts it, or uses TLS or an ACL \
         user), but runs on a Redis Cluster: build it with `.single_redis()` (or unset {TOPOLOGY_ENV})"
    )
}

fn cluster_only() -> String {
    "this test needs a Redis Cluster, but runs on a single redis-server: build it with `.redis_cluster()`".to_string()
}

fn numsub(con: &mut redis::Connection, subcommand: &str, channel: &str) -> Result<u64> {
    let answer: Vec<(String, u64)> = redis::cmd("PUBSUB")
        .arg(subcommand)
        .arg(channel)
        .query(con)
        .with_context(|| format!("PUBSUB {subcommand} {channel}"))?;
    Ok(answer.iter().map(|(_, n)| n).sum())
}

/// A synchronous connection to the test's Redis: a plain connection to the single server,
/// or a cluster connection (routes each command by its key, follows `MOVED`, fans `KEYS`
/// and the like out to every master). Use it wherever a `redis::Connection` was used with
/// `query`/`exec`; [`TestConn::single`] gives the plain connection for what only a single
/// connection can do (`MONITOR`, reading pushed replies).
pub enum TestConn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl TestConn {
    /// The plain connection; panics on a cluster.
    pub fn single(&mut self) -> &mut redis::Connection {
        match self {
            TestConn::Single(c) => c,
            TestConn::Cluster(_) => panic!("{}", single_only()),
        }
    }
}

impl ConnectionLike for TestConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            TestConn::Single(c) => c.req_packed_command(cmd),
            TestConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        match self {
            TestConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            TestConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            TestConn::Single(c) => c.req_command(cmd),
            TestConn::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            TestConn::Single(c) => c.get_db(),
            TestConn::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            TestConn::Single(c) => c.supports_pipelining(),
            TestConn::Cluster(c) => c.supports_pipelining(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            TestConn::Single(c) => c.check_connection(),
            TestConn::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            TestConn::Single(c) => c.is_open(),
            TestConn::Cluster(c) => c.is_open(),
        }
    }
}
