//! Group membership records in Redis, for presence counts and cleanup.
//!
//! Fan-out needs only the in-memory table (`groups.rs`); this module mirrors it
//! into one sorted set per group (`P:groupmembers:GROUP`, member = reply
//! address, score = expiry in ms). Joins and leaves are written in batches;
//! every live membership is refreshed at a third of `--group-expiry` (at most
//! every 30 s, so records lost with a Redis restart return soon).
//!
//! Beside them it keeps the names of the groups this interface has members in
//! (`P:ifacegroups:{IFACE}`, `protocol/src/sweep.rs`): when this interface
//! dies, whichever live interface or worker notices first sweeps its members
//! from exactly those sets, within seconds; `--group-expiry` is only the
//! backstop. At shutdown this interface removes its memberships and that set
//! itself.

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard_protocol::redis_conn::{Redis, SlotBatch};
use switchyard_protocol::sweep;
use switchyard_protocol::time::now_ms;
use switchyard_protocol::{Keys, ReplyAddress};
use tokio::sync::{mpsc, oneshot};

const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A join or a leave to record, or the interface's shutdown.
pub enum Change {
    Join(String, u64),
    Leave(String, u64),
    /// Write what is pending and remove every membership still held, then answer:
    /// nothing of this interface may stay in the member sets after it stopped.
    Shutdown(oneshot::Sender<()>),
    /// Rewrite every membership now: this interface could not beat for so long
    /// that another process may have taken it for dead and swept its members.
    Refresh,
}

/// Every group with its local member ids, as the in-memory table has them now.
pub type Snapshot = Box<dyn Fn() -> Vec<(String, Vec<u64>)> + Send + Sync>;

/// Writes membership changes and refreshes; runs for the life of the interface.
/// `members` reads the in-memory table (this module does not know its type).
pub async fn run(
    con: Redis,
    keys: Keys,
    interface: String,
    expiry: Duration,
    members: Snapshot,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    // Not clamped to a second: with `--group-expiry` under 3 s that would let
    // memberships lapse before their refresh.
    // At most every 30 s: records lost with a Redis restart come back quickly.
    let refresh_every = (expiry / 3).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut refresh = tokio::time::interval(refresh_every);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut batch: Vec<Change> = Vec::new();
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(Change::Shutdown(done)) => {
                    // Members still in the table are taken first: a connection that
                    // leaves after this has queued its leave by then, and the drain
                    // below picks it up.
                    let remaining = members();
                    while let Ok(change) = changes.try_recv() {
                        batch.push(change);
                    }
                    for (group, conns) in remaining {
                        batch.extend(conns.into_iter().map(|conn| Change::Leave(group.clone(), conn)));
                    }
                    write(&con, &keys, &interface, expiry, &mut batch).await;
                    let mut forget = SlotBatch::new();
                    sweep::forget_groups(&mut forget, &keys, &interface);
                    if let Err(error) = forget.run_all(&con).await {
                        tracing::debug!(%error, "cannot remove this interface's group set");
                    }
                    let _ = done.send(());
                    return;
                }
                Some(Change::Refresh) => {
                    tracing::info!("rewriting the group memberships after an interruption");
                    write(&con, &keys, &interface, expiry, &mut batch).await;
                    if let Err(error) = refresh_all(&con, &keys, &interface, expiry, &members).await {
                        tracing::debug!(%error, "membership refresh failed");
                    }
                }
                Some(change) => batch.push(change),
                None => return,
            },
            _ = flush.tick(), if !batch.is_empty() => {
                write(&con, &keys, &interface, expiry, &mut batch).await;
            }
            _ = refresh.tick() => {
                if let Err(error) = refresh_all(&con, &keys, &interface, expiry, &members).await {
                    tracing::debug!(%error, "membership refresh failed");
                }
            }
        }
    }
}

/// Writes a batch of joins and leaves in one round trip (one pipeline per
/// slot on a cluster).
async fn write(con: &Redis, keys: &Keys, interface: &str, expiry: Duration, batch: &mut Vec<Change>) {
    let mut writes = SlotBatch::new();
    let until = expires_at(expiry);
    let joined: BTreeSet<String> = batch
        .iter()
        .filter_map(|change| match change {
            Change::Join(group, _) => Some(group.clone()),
            _ => None,
        })
        .collect();
    // The group set first: a member recorded without it would escape the sweep.
    sweep::record_groups(&mut writes, keys, interface, joined.iter().map(String::as_str), expiry);
    for change in batch.drain(..) {
        match change {
            Change::Join(group, conn) => {
                let key = keys.group_members(&group);
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(&key).arg(until).arg(address(interface, conn));
                writes.add(&key, zadd);
            }
            Change::Leave(group, conn) => {
                let key = keys.group_members(&group);
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(&key).arg(address(interface, conn));
                writes.add(&key, zrem);
            }
            Change::Shutdown(done) => {
                let _ = done.send(());
            }
            Change::Refresh => {}
        }
    }
    if writes.is_empty() {
        return;
    }
    if let Err(error) = writes.run_all(con).await {
        tracing::debug!(%error, "membership write failed; the next refresh repairs it");
    }
}

/// Re-adds every local membership with a fresh expiry and drops expired ones.
async fn refresh_all(
    con: &Redis,
    keys: &Keys,
    interface: &str,
    expiry: Duration,
    members: &Snapshot,
) -> redis::RedisResult<()> {
    let until = expires_at(expiry);
    let now = expires_at(Duration::ZERO);
    let mut writes = SlotBatch::new();
    let snapshot = members();
    sweep::replace_groups(
        &mut writes,
        keys,
        interface,
        snapshot.iter().map(|(group, _)| group.as_str()),
        expiry,
    );
    for (group, conns) in snapshot {
        let key = keys.group_members(&group);
        let mut trim = redis::cmd("ZREMRANGEBYSCORE");
        trim.arg(&key).arg("-inf").arg(now);
        writes.add(&key, trim);
        for chunk in conns.chunks(1000) {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&key);
            for conn in chunk {
                zadd.arg(until).arg(address(interface, *conn));
            }
            writes.add(&key, zadd);
        }
        // The set lives as long as its longest-lived member (interfaces may run
        // with different --group-expiry): set a first expiry, then only extend it.
        let mut first = redis::cmd("PEXPIREAT");
        first.arg(&key).arg(until).arg("NX");
        writes.add(&key, first);
        let mut extend = redis::cmd("PEXPIREAT");
        extend.arg(&key).arg(until).arg("GT");
        writes.add(&key, extend);
    }
    writes.run_all(con).await
}

fn address(interface: &str, conn: u64) -> String {
    ReplyAddress::new(interface, conn).to_string()
}

fn expires_at(after: Duration) -> u64 {
    now_ms() + after.as_millis() as u64
}
