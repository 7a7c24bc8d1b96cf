//! Who is alive: the liveness records of workers and interfaces.
//!
//! Each process keeps a short-lived key with its figures as JSON
//! (`P:worker:NAME`, `P:interface:ID`) and its name in an index scored by the
//! time it was last seen (`P:workers`, `P:interfaces`). The key's expiry is the
//! verdict: a worker whose key is gone is dead and its messages are taken over;
//! the index only says where to look, so nobody has to scan keys. Workers,
//! interfaces and `switchyard status` all read and write these records through
//! this module.

use std::time::Duration;

use redis::{RedisResult, Value};

use crate::redis_conn::{Redis, SlotBatch};
use crate::time::now_ms;
use crate::value::text_of;
use crate::Keys;

/// How long an interface's record outlives its last beat (it beats every
/// second): after that it is dead, and its group members are swept (`sweep`).
pub const INTERFACE_TTL: Duration = Duration::from_secs(10);

/// Which kind of process a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Interface,
}

impl Role {
    fn key(self, keys: &Keys, name: &str) -> String {
        match self {
            Role::Worker => keys.worker_alive(name),
            Role::Interface => keys.interface_alive(name),
        }
    }

    fn index(self, keys: &Keys) -> String {
        match self {
            Role::Worker => keys.workers_index(),
            Role::Interface => keys.interfaces_index(),
        }
    }
}

/// Adds to `batch` the writes of one beat: the record with `info`, alive for
/// `ttl`, and the index entry saying it was seen now.
pub fn beat(batch: &mut SlotBatch, keys: &Keys, role: Role, name: &str, info: &str, ttl: Duration) {
    let key = role.key(keys, name);
    let mut set = redis::cmd("SET");
    set.arg(&key).arg(info).arg("PX").arg(ttl.as_millis() as u64);
    batch.add(&key, set);
    let index = role.index(keys);
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(&index).arg(now_ms()).arg(name);
    batch.add(&index, zadd);
}

/// Removes a process's record and index entry (after a graceful stop).
pub async fn leave(redis: &Redis, keys: &Keys, role: Role, name: &str) -> RedisResult<()> {
    let mut batch = SlotBatch::new();
    let key = role.key(keys, name);
    let mut del = redis::cmd("DEL");
    del.arg(&key);
    batch.add(&key, del);
    let index = role.index(keys);
    let mut zrem = redis::cmd("ZREM");
    zrem.arg(&index).arg(name);
    batch.add(&index, zrem);
    batch.run_all(redis).await
}

/// Every live process of a role with its record (JSON text), by name. With
/// `seen_within`, names the index has not seen for that long are not even
/// looked up (their records expired long ago).
pub async fn live(
    redis: &Redis,
    keys: &Keys,
    role: Role,
    seen_within: Option<Duration>,
) -> RedisResult<Vec<(String, String)>> {
    let since = match seen_within {
        Some(within) => now_ms().saturating_sub(within.as_millis() as u64).to_string(),
        None => "-inf".to_owned(),
    };
    let mut con = redis.clone();
    let names: Vec<String> = redis::cmd("ZRANGE")
        .arg(role.index(keys))
        .arg(since)
        .arg("+inf")
        .arg("BYSCORE")
        .query_async(&mut con)
        .await?;
    let mut batch = SlotBatch::new();
    for name in &names {
        let key = role.key(keys, name);
        let mut get = redis::cmd("GET");
        get.arg(&key);
        batch.add(&key, get);
    }
    let records = batch.run(redis).await;
    let mut live = Vec::new();
    for (name, record) in names.into_iter().zip(records) {
        if let Some(info) = text_of(&record?) {
            live.push((name, info));
        }
    }
    Ok(live)
}

/// Whether each named process's record still exists.
pub async fn alive(redis: &Redis, keys: &Keys, role: Role, names: &[String]) -> RedisResult<Vec<bool>> {
    let mut batch = SlotBatch::new();
    for name in names {
        let key = role.key(keys, name);
        let mut exists = redis::cmd("EXISTS");
        exists.arg(&key);
        batch.add(&key, exists);
    }
    batch
        .run(redis)
        .await
        .into_iter()
        .map(|outcome| Ok(matches!(outcome?, Value::Int(n) if n > 0)))
        .collect()
}
