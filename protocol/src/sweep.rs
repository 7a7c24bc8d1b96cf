//! Presence follows liveness: the group members of an interface that died are
//! swept from the member sets.
//!
//! An interface records its memberships in the group member sets
//! (`P:groupmembers:{GROUP}`, written by the interface's `bus/membership.rs`)
//! and, in its own slot, the names of the groups it has members in
//! (`P:ifacegroups:{IFACE}`, written here by [`record_groups`] on joins and
//! [`replace_groups`] on every refresh). A graceful stop removes both. A `kill -9` leaves them
//! behind, and without a sweep its members would be counted until
//! `--group-expiry` (a day by default) — presence would lie.
//!
//! So every live interface and worker calls [`sweep`] once a second. It lists
//! the interfaces the index (`P:interfaces`) has not seen for [`STALE`] —
//! while everyone beats that list is empty, so the usual cost is one small
//! `ZRANGE` — and, for each one whose liveness key is gone
//! ([`liveness::INTERFACE_TTL`] after its last beat), removes its members from
//! every group in its set (`lua/sweep_members.lua`, one script per group, each
//! in the group's slot), then drops the set and its index entry
//! (`lua/forget_interface.lua`: not if it was seen again meanwhile). Whoever
//! notices first does it; every step can be repeated, so two sweepers at once
//! do no harm, and one that dies half way leaves the rest to the next.
//! Members are gone within about `INTERFACE_TTL` + 1 s of the crash.
//! `--group-expiry` stays as the backstop (no process left to sweep, a lost
//! group set).
//!
//! A wrong verdict — an interface alive but unable to beat for longer than its
//! TTL (cut off from Redis, stalled) — costs its members until it beats again:
//! an interface that finds its beats interrupted that long writes its
//! memberships again at once.

use std::time::Duration;

use redis::RedisResult;

use crate::liveness::{self, Role};
use crate::redis_conn::{Redis, SlotBatch};
use crate::scripts::{FORGET_INTERFACE, REPLACE_GROUPS, SWEEP_MEMBERS};
use crate::time::now_ms;
use crate::value::int_of;
use crate::Keys;

/// Interfaces the index has not seen for this long have their liveness key
/// looked up (it expires [`liveness::INTERFACE_TTL`] after their last beat).
pub const STALE: Duration = Duration::from_secs(5);
/// Interfaces looked at per sweep (the rest wait for the next second).
const PER_SWEEP: usize = 64;
/// Group names per `SADD`.
const CHUNK: usize = 1000;

/// One dead interface swept: how many groups it had, how many members went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    pub interface: String,
    pub groups: usize,
    pub members: u64,
}

/// Adds to `batch` the record that `interface` has members in `groups` (on a
/// join), kept for `expiry` (`--group-expiry`) after the last write.
pub fn record_groups<'a>(
    batch: &mut SlotBatch,
    keys: &Keys,
    interface: &str,
    groups: impl IntoIterator<Item = &'a str>,
    expiry: Duration,
) {
    let key = keys.interface_groups(interface);
    let groups: Vec<&str> = groups.into_iter().collect();
    if groups.is_empty() {
        return;
    }
    for chunk in groups.chunks(CHUNK) {
        let mut sadd = redis::cmd("SADD");
        sadd.arg(&key).arg(chunk);
        batch.add(&key, sadd);
    }
    let mut pexpire = redis::cmd("PEXPIRE");
    pexpire.arg(&key).arg(expiry.as_millis() as u64);
    batch.add(&key, pexpire);
}

/// Adds to `batch` the replacement of `interface`'s group set by `groups` (the
/// periodic refresh: groups it no longer has members in drop out), as one
/// script, so that it is one step even where a batch's commands may overtake
/// each other (a cluster).
pub fn replace_groups<'a>(
    batch: &mut SlotBatch,
    keys: &Keys,
    interface: &str,
    groups: impl IntoIterator<Item = &'a str>,
    expiry: Duration,
) {
    let key = keys.interface_groups(interface);
    let mut eval = redis::cmd("EVAL");
    eval.arg(REPLACE_GROUPS).arg(1).arg(&key).arg(expiry.as_millis() as u64);
    for group in groups {
        eval.arg(group);
    }
    batch.add(&key, eval);
}

/// Adds to `batch` the removal of `interface`'s group set (a graceful stop).
pub fn forget_groups(batch: &mut SlotBatch, keys: &Keys, interface: &str) {
    let key = keys.interface_groups(interface);
    let mut del = redis::cmd("DEL");
    del.arg(&key);
    batch.add(&key, del);
}

/// One sweep as a live process runs it each second: what was swept is logged,
/// a failure is left to the next second.
pub async fn sweep_logged(redis: &Redis, keys: &Keys) {
    match sweep(redis, keys).await {
        Ok(swept) => {
            for dead in swept {
                tracing::info!(
                    interface = %dead.interface,
                    groups = dead.groups,
                    members = dead.members,
                    "swept the group members of a dead interface"
                );
            }
        }
        Err(error) => tracing::debug!(%error, "cannot sweep the members of dead interfaces"),
    }
}

/// Sweeps the members of every interface that died; returns what it swept.
pub async fn sweep(redis: &Redis, keys: &Keys) -> RedisResult<Vec<Swept>> {
    let cutoff = now_ms().saturating_sub(STALE.as_millis() as u64);
    let index = keys.interfaces_index();
    let mut con = redis.clone();
    let stale: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg("-inf")
        .arg(cutoff)
        .arg("BYSCORE")
        .arg("LIMIT")
        .arg(0)
        .arg(PER_SWEEP)
        .query_async(&mut con)
        .await?;
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    let alive = liveness::alive(redis, keys, Role::Interface, &stale).await?;
    let mut swept = Vec::new();
    for (interface, alive) in stale.into_iter().zip(alive) {
        if !alive {
            swept.push(sweep_one(redis, keys, interface, cutoff).await?);
        }
    }
    Ok(swept)
}

/// Removes one dead interface's members, its group set and its index entry.
async fn sweep_one(redis: &Redis, keys: &Keys, interface: String, cutoff: u64) -> RedisResult<Swept> {
    let set = keys.interface_groups(&interface);
    let mut con = redis.clone();
    let groups: Vec<String> = redis::cmd("SMEMBERS").arg(&set).query_async(&mut con).await?;
    let prefix = format!("{interface}!");
    let mut batch = SlotBatch::new();
    for group in &groups {
        let key = keys.group_members(group);
        let mut eval = redis::cmd("EVAL");
        eval.arg(SWEEP_MEMBERS).arg(1).arg(&key).arg(&prefix);
        batch.add(&key, eval);
    }
    let mut members = 0;
    for removed in batch.run(redis).await {
        members += int_of(&removed?).and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    }
    let _: () = redis::cmd("DEL").arg(&set).query_async(&mut con).await?;
    let _: i64 = redis::cmd("EVAL")
        .arg(FORGET_INTERFACE)
        .arg(1)
        .arg(keys.interfaces_index())
        .arg(&interface)
        .arg(cutoff)
        .query_async(&mut con)
        .await?;
    Ok(Swept {
        interface,
        groups: groups.len(),
        members,
    })
}
