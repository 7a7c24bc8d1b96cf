//! End-to-end test harness for Switchyard.
//!
//! Every test starts its own Redis on free ports (one `redis-server`, or with
//! `SWITCHYARD_TEST_REDIS=cluster` a Redis Cluster of six; see `test_redis.rs`), its own
//! `switchyard-interface` on a free port and its own workers, talks to them with a real
//! WebSocket client, and tears everything down on drop. When a test fails, the tail of every process log is printed and
//! the temporary directory holding the logs is kept (its path is printed).
//!
//! The binaries are looked up next to the test executable (`target/<profile>/`); build them
//! first with `cargo build --bins` (`scripts/test` does).

pub mod binaries;
pub mod chaos;
pub mod cluster;
pub mod http;
pub mod load;
pub mod ports;
pub mod process;
pub mod promtool;
pub mod python;
pub mod redis_cluster;
pub mod redis_server;
pub mod stack;
pub mod supervisor;
pub mod test_redis;
pub mod testdir;
pub mod traefik;
pub mod wait;
pub mod ws;

pub use binaries::{bin_dir, binary, INTERFACE_BIN, OPS_BIN, WORKER_BIN};
pub use process::Proc;
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;
pub use stack::{Stack, StackBuilder};
pub use test_redis::{TestConn, TestRedis, Topology};
pub use testdir::TestDir;
pub use wait::{bounded, eventually};
pub use ws::{Incoming, WsClient};
