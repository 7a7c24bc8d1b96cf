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
pub mod ws;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use process::Proc;
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;
pub use stack::{Stack, StackBuilder};
pub use test_redis::{TestConn, TestRedis, Topology};
pub use testdir::TestDir;
pub use ws::{Incoming, WsClient};

/// Name of the interface binary.
pub const INTERFACE_BIN: &str = "switchyard-interface";
/// Name of the worker binary.
pub const WORKER_BIN: &str = "switchyard-worker";
/// Name of the operations binary.
pub const OPS_BIN: &str = "switchyard";

/// Directory holding the workspace binaries: `SWITCHYARD_BIN_DIR` if set, else the profile
/// directory the running test executable lives in (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// Path of one of our binaries; panics with a clear message if it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {} — build the binaries first with `cargo build --bins` \
             (scripts/test does this), or point SWITCHYARD_BIN_DIR at them",
            path.display()
        );
    }
    path
}

/// Runs a test body with an overall time limit, so a hung test fails (and prints the process
/// logs) instead of hanging the suite.
pub async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("test exceeded its time limit of {limit:?}"),
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or gives up after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
