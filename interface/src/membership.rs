//! Group membership records in Redis, for presence counts and cleanup.
//!
//! Fan-out needs only the in-memory table (`groups.rs`); this module mirrors it
//! into one sorted set per group (`P:groupmembers:GROUP`, member = reply
//! address, score = expiry in ms). Joins and leaves are written in batches;
//! every live membership is refreshed at a third of `--group-expiry`, so the
//! members of an interface that died simply expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use switchyard_protocol::{Keys, ReplyAddress};
use tokio::sync::mpsc;

use crate::groups::Groups;

const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A join or a leave to record.
pub enum Change {
    Join(String, u64),
    Leave(String, u64),
}

/// Writes membership changes and refreshes; runs for the life of the interface.
pub async fn run(
    mut con: ConnectionManager,
    keys: Keys,
    interface: String,
    expiry: Duration,
    groups: Arc<Groups>,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let refresh_every = (expiry / 3).max(Duration::from_secs(1));
    let mut refresh = tokio::time::interval(refresh_every);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut batch: Vec<Change> = Vec::new();
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => batch.push(change),
                None => return,
            },
            _ = flush.tick(), if !batch.is_empty() => {
                let mut pipe = redis::pipe();
                let until = expires_at(expiry);
                for change in batch.drain(..) {
                    match change {
                        Change::Join(group, conn) => pipe.cmd("ZADD").arg(keys.group_members(&group)).arg(until).arg(address(&interface, conn)).ignore(),
                        Change::Leave(group, conn) => pipe.cmd("ZREM").arg(keys.group_members(&group)).arg(address(&interface, conn)).ignore(),
                    };
                }
                if let Err(error) = pipe.query_async::<()>(&mut con).await {
                    tracing::debug!(%error, "membership write failed; the next refresh repairs it");
                }
            }
            _ = refresh.tick() => {
                if let Err(error) = refresh_all(&mut con, &keys, &interface, expiry, &groups).await {
                    tracing::debug!(%error, "membership refresh failed");
                }
            }
        }
    }
}

/// Re-adds every local membership with a fresh expiry and drops expired ones.
async fn refresh_all(
    con: &mut ConnectionManager,
    keys: &Keys,
    interface: &str,
    expiry: Duration,
    groups: &Groups,
) -> redis::RedisResult<()> {
    let until = expires_at(expiry);
    let now = expires_at(Duration::ZERO);
    for (group, members) in groups.snapshot() {
        let key = keys.group_members(&group);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE").arg(&key).arg("-inf").arg(now).ignore();
        for chunk in members.chunks(1000) {
            let zadd = pipe.cmd("ZADD").arg(&key);
            for conn in chunk {
                zadd.arg(until).arg(address(interface, *conn));
            }
            zadd.ignore();
        }
        pipe.cmd("PEXPIREAT").arg(&key).arg(until).ignore();
        pipe.query_async::<()>(con).await?;
    }
    Ok(())
}

fn address(interface: &str, conn: u64) -> String {
    ReplyAddress::new(interface, conn).to_string()
}

fn expires_at(after: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now + after.as_millis() as u64
}
