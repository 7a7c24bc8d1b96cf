//! The commit of a large batch on a single Redis, with WATCH/MULTI instead of a script.
//!
//! Why it exists: the exactly-once guard of the commit is a compare-and-set on the
//! connection's last committed `seq`, and `commit_fused.lua` makes it inside Redis. Calling
//! a script is what costs there: each `redis.call` costs more than the same command sent,
//! and every argument becomes a Lua string (`scripts/bench-redis-floor` measures the guard
//! as Lua at 4.5–9.3 µs of Redis CPU per message over an unguarded write, and as
//! WATCH/MULTI at 0–3.5). Redis's own optimistic lock gives the same guarantee: `WATCH`
//! the sessions, read each connection's `seq` (`HMGET`, as the script does), decide here,
//! then write, reply and acknowledge in one `MULTI … EXEC`, which Redis runs only if no
//! watched session changed in between. That is one round trip more than the script, so
//! only batches of at least `--commit-watch-min` messages take this path (at a fixed rate
//! messages travel alone and the script's single round trip keeps their latency).
//!
//! Only the common case is decided here: a session already written and well within its
//! TTL, nobody gone from it, an outcome kept inline, one message per session in the batch.
//! Everything else — a message committed before (its stored outcome must be finished), a
//! new or ageing session, gone connections to purge, a large outcome, a second message on a
//! session — is left untouched for the script that follows ([`super::fused_step`] and the
//! steps), and so is the whole batch when `EXEC` finds a watched session changed or
//! anything fails: the script's guard then decides as it always did.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redis::{ErrorKind, Pipeline, ServerErrorKind, Value};
use switchyard_protocol::redis_conn::{Redis, RedisClient};
use switchyard_protocol::{time, WORKER_GROUP};
use tokio::sync::Mutex;

use super::{encode_outbox, fusable, reply_commands, Item, Outcome, Settings, BATCHES_IN_FLIGHT};
use crate::faults;
use crate::metrics::Metrics;

/// Largest outcome kept in the session hash itself (`commit_session.lua`'s `INLINE`):
/// a larger one goes to its own key, which only the script writes.
const INLINE_OUTCOME: usize = 1024;

/// What the WATCH/MULTI commit needs: `WATCH` belongs to a connection, so each batch under
/// way gets a connection of its own (never the shared one, where another batch's `EXEC`
/// would end this batch's watch).
pub struct Watch {
    client: RedisClient,
    /// `--commit-watch-min`: fewest plain messages in a batch that take this path.
    min_batch: usize,
    connections: Vec<Mutex<Option<Redis>>>,
    /// Set when Redis refuses the commands themselves (an ACL without `WATCH`,
    /// say): from then on the script commits everything.
    refused: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Watch {
    pub fn new(client: RedisClient, min_batch: usize, metrics: Arc<Metrics>) -> Watch {
        Watch {
            client,
            min_batch: min_batch.max(1),
            connections: (0..BATCHES_IN_FLIGHT).map(|_| Mutex::new(None)).collect(),
            refused: AtomicBool::new(false),
            metrics,
        }
    }
}

/// One message this path may commit: its index in the batch and its session key.
struct Candidate {
    index: usize,
    session: String,
}

/// A connection's `seq`, the session's `~x` and whether `~c` is there.
type Guard = (Option<u64>, Option<u64>, Option<Vec<u8>>);

/// Commits what it can of the batch's plain messages (see the module doc); leaves the rest,
/// untouched, to the script.
pub(super) async fn step(settings: &Settings, watch: &Watch, items: &mut [Item]) {
    let takes = |item: &Item| fusable(item) && item.commit.session.as_ref().is_some_and(|s| s.writes());
    // Counted first: a small batch (every one, at a low rate) costs no more than this.
    if items.iter().filter(|item| takes(item)).count() < watch.min_batch || watch.refused.load(Ordering::Relaxed) {
        return;
    }
    let candidates: Vec<Candidate> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| takes(item))
        .filter_map(|(index, item)| {
            let session = item.commit.session.as_ref()?;
            Some(Candidate {
                index,
                session: settings.keys.session(&session.id),
            })
        })
        .collect();
    // At most BATCHES_IN_FLIGHT batches run at once, so one connection is free.
    let Some(mut slot) = watch.connections.iter().find_map(|slot| slot.try_lock().ok()) else {
        return;
    };
    if slot.is_none() {
        *slot = watch.client.blocking(Duration::ZERO).await.ok();
    }
    let Some(con) = slot.as_mut() else { return };
    let result = match commit(settings, con, items, &candidates).await {
        Ok(result) => result,
        Err(error) => {
            // Its watch (or transaction) is in an unknown state: start afresh next time.
            *slot = None;
            if refusal(&error) && !watch.refused.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %error,
                    "Redis refuses the WATCH/MULTI commit (--commit-watch-min); committing with the script only"
                );
            }
            tracing::debug!(%error, "watched commit failed; the script commits the batch");
            "error"
        }
    };
    watch.metrics.watched_commit(result);
}

/// Whether Redis refused a command as such (no permission, an unknown or renamed
/// command), which trying again will not change; not a lost connection, a timeout, a
/// failover or a key of the wrong type.
fn refusal(error: &redis::RedisError) -> bool {
    match error.kind() {
        ErrorKind::Server(ServerErrorKind::NoPerm) => true,
        ErrorKind::Server(ServerErrorKind::ResponseError) => error.to_string().contains("unknown command"),
        _ => false,
    }
}

/// Reads the guards under `WATCH`, then writes in one `MULTI … EXEC`. Returns what
/// happened: `committed`, `changed` (a watched session changed: nothing written) or
/// `skipped` (nothing this path could take).
async fn commit(
    settings: &Settings,
    con: &mut Redis,
    items: &mut [Item],
    candidates: &[Candidate],
) -> redis::RedisResult<&'static str> {
    let mut read = redis::pipe();
    read.cmd("WATCH");
    for candidate in candidates {
        read.arg(&candidate.session);
    }
    read.ignore();
    for candidate in candidates {
        read.cmd("HMGET")
            .arg(&candidate.session)
            .arg(format!("~s:{}", items[candidate.index].commit.reply_address()))
            .arg("~x")
            .arg("~c");
    }
    let guards: Vec<Guard> = read.query_async(con).await?;
    let plan = decide(settings, items, candidates, &guards);
    if plan.committed.is_empty() && plan.repeated.is_empty() {
        redis::cmd("UNWATCH").query_async::<()>(con).await?;
        return Ok("skipped");
    }
    let transaction = transaction(settings, items, plan.writes, &plan.committed, &plan.repeated);
    faults::before_watched_exec().await;
    if transaction.query_async::<Value>(con).await? == Value::Nil {
        return Ok("changed");
    }
    for (indices, outcome) in [(plan.committed, Outcome::Committed), (plan.repeated, Outcome::Repeated)] {
        for index in indices {
            let item = &mut items[index];
            item.state = Ok(outcome);
            item.finished = true;
            item.acked = true;
        }
    }
    Ok("committed")
}

/// What the transaction does: the session writes it makes, the messages it commits, and
/// those it only acknowledges (a later message of the connection is committed).
struct Plan {
    writes: Pipeline,
    committed: Vec<usize>,
    repeated: Vec<usize>,
}

/// The guard of `commit_session.lua` for the common case; anything else is left out.
fn decide(settings: &Settings, items: &[Item], candidates: &[Candidate], guards: &[Guard]) -> Plan {
    let now = time::now_ms();
    let fresh_for = settings.session_ttl.as_millis() as u64 * 3 / 4;
    let mut plan = Plan {
        writes: redis::pipe(),
        committed: Vec::new(),
        repeated: Vec::new(),
    };
    plan.writes.atomic();
    let mut written: Vec<&str> = Vec::new();
    for (candidate, (prior, expires, closed)) in candidates.iter().zip(guards) {
        let commit = &items[candidate.index].commit;
        let prior = prior.unwrap_or(0);
        if prior > commit.seq {
            plan.repeated.push(candidate.index);
            continue;
        }
        let fresh = expires.is_some_and(|at| at.saturating_sub(now) >= fresh_for);
        let session_key = candidate.session.as_str();
        if prior == commit.seq || !fresh || closed.is_some() || written.contains(&session_key) {
            continue;
        }
        let Some(session) = &commit.session else { continue };
        let outcome = encode_outbox(commit);
        if outcome.len() > INLINE_OUTCOME {
            continue;
        }
        let address = commit.reply_address();
        plan.writes
            .cmd("HSET")
            .arg(session_key)
            .arg(format!("~s:{address}"))
            .arg(commit.seq)
            .arg(format!("~o:{address}"))
            .arg(outcome);
        for (field, value) in &session.sets {
            plan.writes.arg(field).arg(value);
        }
        plan.writes.ignore();
        if !session.deletes.is_empty() {
            plan.writes.cmd("HDEL").arg(session_key).arg(&session.deletes).ignore();
        }
        written.push(session_key);
        plan.committed.push(candidate.index);
    }
    plan
}

/// The session writes, then what `commit_fused.lua` does after them: the replies (as
/// [`reply_commands`] builds them) and per shard one `XACK`.
fn transaction(
    settings: &Settings,
    items: &[Item],
    mut writes: Pipeline,
    committed: &[usize],
    repeated: &[usize],
) -> Pipeline {
    let replies: Vec<(usize, String)> = committed
        .iter()
        .map(|&index| (index, settings.keys.reply_stream(&items[index].commit.interface)))
        .collect();
    for (_, cmd) in reply_commands(settings, items, &replies) {
        writes.add_command(cmd).ignore();
    }
    let mut acks: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for &index in committed.iter().chain(repeated) {
        let commit = &items[index].commit;
        acks.entry(commit.stream.as_str()).or_default().push(&commit.entry_id);
    }
    for (stream, ids) in acks {
        writes.cmd("XACK").arg(stream).arg(WORKER_GROUP).arg(ids).ignore();
    }
    writes
}
