//! Stalled messages: is anyone still going to answer this one?
//!
//! A connection releases its next message only when the one in flight is
//! answered, so a message that nobody will ever answer would silence the
//! connection for good while heartbeats keep the socket alive. That happens
//! when Redis loses data (restarted empty, or a failover that lost
//! acknowledged writes): the entry, or the reply to it, is gone. When a
//! message has waited `--redeliver-after`, the connection asks this module
//! what became of its entry:
//!
//! - pending to a worker whose liveness key exists: a slow consumer; wait;
//! - pending to a dead worker: a live worker takes it over within seconds
//!   (worker maintenance); if none does, sending it again is what helps;
//! - not pending and after the group's last-delivered id: still queued; wait
//!   (the channel's workers are stopped or behind: the backlog limit's job);
//! - not pending and delivered, or not in the stream at all: lost (handled
//!   but its reply lost, or lost with Redis's data): send it again.
//!
//! Sending again is safe under the same sequence number: a worker that sees
//! a sequence number already committed finishes the stored outcome (session
//! step), and the interface applies each `done` once (docs/protocol.md).

use redis::{RedisResult, Value};
use switchyard_protocol::liveness::{self, Role};
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::stream::EntryId;
use switchyard_protocol::value::{items, text_of};
use switchyard_protocol::{xinfo, Keys, WORKER_GROUP};

/// What became of a message's stream entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Queued, or in the hands of a live worker: an answer will come.
    Waiting,
    /// Nobody will answer it: append it again.
    Lost,
}

/// Looks up entry `id` of `stream` (see the module doc for the rules).
pub async fn entry_state(redis: &Redis, keys: &Keys, stream: &str, entry: EntryId) -> RedisResult<EntryState> {
    let id = entry.to_string();
    let mut con = redis.clone();
    let pending: RedisResult<Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(WORKER_GROUP)
        .arg(&id)
        .arg(&id)
        .arg(1)
        .query_async(&mut con)
        .await;
    let pending = match pending {
        Ok(pending) => pending,
        // No group (or no stream): Redis lost them with the entry.
        Err(error) if error.code() == Some("NOGROUP") => return Ok(EntryState::Lost),
        Err(error) => return Err(error),
    };
    if let Some(owner) = pending_owner(&pending) {
        let alive = liveness::alive(redis, keys, Role::Worker, std::slice::from_ref(&owner)).await?;
        return Ok(if alive.first().copied().unwrap_or(false) {
            EntryState::Waiting
        } else {
            EntryState::Lost
        });
    }
    let found: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(&id)
        .arg(&id)
        .query_async(&mut con)
        .await?;
    if items(&found).is_empty() {
        return Ok(EntryState::Lost);
    }
    let group = xinfo::group(&mut con, stream, WORKER_GROUP).await?;
    let delivered_up_to = group
        .and_then(|group| group.last_delivered)
        .and_then(|last| EntryId::parse(&last));
    Ok(state_of_unpending(entry, delivered_up_to))
}

/// The consumer an `XPENDING stream group id id 1` reply names, if any.
fn pending_owner(reply: &Value) -> Option<String> {
    let [entry] = items(reply) else {
        return None;
    };
    items(entry).get(1).and_then(text_of)
}

/// An entry in the stream and pending to nobody: queued if the group has not
/// reached it yet, else handled (acknowledged) with its reply lost.
fn state_of_unpending(entry: EntryId, delivered_up_to: Option<EntryId>) -> EntryState {
    match delivered_up_to {
        Some(delivered) if entry <= delivered => EntryState::Lost,
        _ => EntryState::Waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn the_owner_of_a_pending_entry() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("5-0"),
            bulk("worker-a"),
            Value::Int(31_000),
            Value::Int(1),
        ])]);
        assert_eq!(pending_owner(&reply).as_deref(), Some("worker-a"));
        assert_eq!(pending_owner(&Value::Array(Vec::new())), None);
    }

    #[test]
    fn queued_entries_wait_delivered_ones_were_lost() {
        let id = |text: &str| EntryId::parse(text);
        let at = |text: &str| EntryId::parse(text).expect("an entry id");
        assert_eq!(
            state_of_unpending(at("7-0"), id("5-0")),
            EntryState::Waiting,
            "not reached yet"
        );
        assert_eq!(
            state_of_unpending(at("5-0"), id("5-0")),
            EntryState::Lost,
            "acknowledged"
        );
        assert_eq!(state_of_unpending(at("3-1"), id("5-0")), EntryState::Lost);
        assert_eq!(
            state_of_unpending(at("3-1"), None),
            EntryState::Waiting,
            "no reader yet"
        );
    }
}
