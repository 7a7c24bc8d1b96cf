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
//! session — is left untouched for the script that follows (`commit_fused.lua` and the
//! steps), and so is the whole batch when `EXEC` finds a watched session changed or
//! anything fails: the script's guard then decides as it always did.
//!
//! A read batch can go one better ([`Watch::read`], used by `runtime/read_batch/`): its
//! sessions are read under `WATCH` when the batch is read, on the connection that will
//! commit it, so the handlers' session read (`HGETALL`) is also the guard's read: no `HMGET`,
//! and one round trip per batch instead of one per message for the sessions.
//!
//! It knows nothing of the batcher: the commit module hands it [`Offer`]s (a message's
//! keys, outcome and reply) and gets a [`Verdict`] for each.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, Pipeline, ServerErrorKind, Value};
use switchyard_protocol::redis_conn::{Redis, RedisClient};
use switchyard_protocol::{time, WORKER_GROUP};
use tokio::sync::{Mutex, MutexGuard};

use super::replies;
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

/// One message offered to the commit: what `commit_fused.lua` would get for it.
pub struct Offer<'a> {
    /// Its session's key.
    pub session: String,
    /// Its connection's reply address (`IFACE!CONN`).
    pub address: String,
    pub seq: u64,
    /// The encoded outcome (reply and group sends), kept as `~o:` with the session.
    pub outcome: Vec<u8>,
    pub sets: &'a [(String, String)],
    pub deletes: &'a [String],
    /// Its interface's reply stream, and its reply.
    pub reply_stream: String,
    pub reply: Option<&'a [u8]>,
    /// Its channel shard stream, and its entry there (`None`: a message of a packed entry,
    /// not acknowledged by the `EXEC`).
    pub shard: &'a str,
    pub entry_id: Option<&'a str>,
}

/// What became of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Session written, reply sent, entry acknowledged.
    Committed,
    /// A later message of the connection was committed: only acknowledged.
    Repeated,
    /// Not taken: the script decides.
    Left,
}

/// A connection's `seq`, the session's `~x` and whether `~c` is there.
type Guard = (Option<u64>, Option<u64>, Option<Vec<u8>>);

/// A session hash's fields, as `HGETALL` gives them.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A read batch's sessions, read under `WATCH` on a connection of the pool that stays
/// theirs until [`Watched::commit`]. Dropped without it, the connection is let go (its
/// watch would spoil the next batch's `EXEC`).
pub struct Watched<'a> {
    watch: &'a Watch,
    con: MutexGuard<'a, Option<Redis>>,
    /// Each message's guard as its session was read: by session key, then reply address
    /// (a session shared by several connections has one per address).
    guards: HashMap<String, Vec<(String, Guard)>>,
    finished: bool,
}

impl Watch {
    /// `connections`: how many batches may be under way at once.
    pub fn new(client: RedisClient, min_batch: usize, connections: usize, metrics: Arc<Metrics>) -> Watch {
        Watch {
            client,
            min_batch: min_batch.max(1),
            connections: (0..connections).map(|_| Mutex::new(None)).collect(),
            refused: AtomicBool::new(false),
            metrics,
        }
    }

    /// Whether a batch of `offers` plain messages is worth offering.
    pub fn wants(&self, offers: usize) -> bool {
        offers >= self.min_batch && self.usable()
    }

    /// Whether Redis has not refused the commands.
    pub fn usable(&self) -> bool {
        !self.refused.load(Ordering::Relaxed)
    }

    /// A free connection of the pool, connected; `None` when every one is busy or Redis
    /// cannot be reached (the script commits then).
    async fn connection(&self) -> Option<MutexGuard<'_, Option<Redis>>> {
        // At most as many batches as connections run at once, so one is usually free.
        let mut slot = self.connections.iter().find_map(|slot| slot.try_lock().ok())?;
        if slot.is_none() {
            *slot = self.client.blocking(Duration::ZERO).await.ok();
        }
        slot.is_some().then_some(slot)
    }

    /// Commits what it can of `offers` (see the module doc); a verdict per offer.
    pub async fn commit(&self, offers: &[Offer<'_>], session_ttl: Duration, reply_ttl: Duration) -> Vec<Verdict> {
        let mut verdicts = vec![Verdict::Left; offers.len()];
        let Some(mut slot) = self.connection().await else {
            return verdicts;
        };
        let Some(con) = slot.as_mut() else { return verdicts };
        let result = match transact(con, offers, session_ttl, reply_ttl, &mut verdicts).await {
            Ok(result) => result,
            Err(error) => {
                *slot = None;
                self.failed(&error)
            }
        };
        self.metrics.watched_commit(result);
        verdicts
    }

    /// Reads a read batch's sessions under `WATCH`, one per message (its session key and
    /// reply address; a key may repeat): each one's fields, in order, and the [`Watched`] that
    /// commits them. `None` when no connection is free or the read failed.
    pub async fn read(&self, messages: Vec<(String, String)>) -> Option<(Watched<'_>, Vec<Fields>)> {
        let mut slot = self.connection().await?;
        let con = slot.as_mut()?;
        let mut read = redis::pipe();
        let mut watch = redis::cmd("WATCH");
        for (session, _) in &messages {
            watch.arg(session);
        }
        read.add_command(watch).ignore();
        for (session, _) in &messages {
            let mut hgetall = redis::Cmd::with_capacity(2, "HGETALL".len() + session.len());
            hgetall.arg("HGETALL").arg(session);
            read.add_command(hgetall);
        }
        match read.query_async::<Vec<Fields>>(con).await {
            Ok(fields) => {
                let mut guards: HashMap<String, Vec<(String, Guard)>> = HashMap::with_capacity(messages.len());
                for ((session, address), fields) in messages.into_iter().zip(&fields) {
                    let guard = guard_of(fields, &address);
                    guards.entry(session).or_default().push((address, guard));
                }
                let watched = Watched {
                    watch: self,
                    con: slot,
                    guards,
                    finished: false,
                };
                Some((watched, fields))
            }
            Err(error) => {
                *slot = None;
                let result = self.failed(&error);
                self.metrics.watched_commit(result);
                None
            }
        }
    }

    /// After a failed call: its watch (or transaction) is in an unknown state, so the
    /// connection is started afresh; a refusal turns the path off for good.
    fn failed(&self, error: &redis::RedisError) -> &'static str {
        if refusal(error) && !self.refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                "Redis refuses the WATCH/MULTI commit (--commit-watch-min); committing with the script only"
            );
        }
        tracing::debug!(%error, "watched commit failed; the script commits the batch");
        "error"
    }
}

impl Watched<'_> {
    /// Commits what it can of `offers` in one `MULTI … EXEC`, deciding on the sessions as
    /// they were read (the watch makes sure they still are); a verdict per offer. A session
    /// that was not read is left to the script.
    pub async fn commit(mut self, offers: &[Offer<'_>], session_ttl: Duration, reply_ttl: Duration) -> Vec<Verdict> {
        let mut verdicts = vec![Verdict::Left; offers.len()];
        let guards: Vec<Guard> = offers
            .iter()
            .map(|offer| {
                let mut read = self.guards.get(&offer.session).into_iter().flatten();
                let found = read.find(|(address, _)| *address == offer.address);
                found.map_or((None, None, None), |(_, guard)| guard.clone())
            })
            .collect();
        let Some(con) = self.con.as_mut() else { return verdicts };
        let result = match write(con, offers, &guards, session_ttl, reply_ttl, &mut verdicts).await {
            Ok(result) => {
                self.finished = true;
                result
            }
            Err(error) => self.watch.failed(&error),
        };
        self.watch.metrics.watched_commit(result);
        verdicts
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        if !self.finished {
            *self.con = None;
        }
    }
}

/// A connection's guard from its session's fields (what `transact`'s `HMGET` reads).
fn guard_of(fields: &Fields, address: &str) -> Guard {
    let field = |name: &[u8]| fields.iter().find(|(f, _)| f == name).map(|(_, v)| v);
    let number = |value: Option<&Vec<u8>>| value.and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    (
        number(field(format!("~s:{address}").as_bytes())),
        number(field(b"~x")),
        field(b"~c").cloned(),
    )
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

/// Reads the guards under `WATCH`, then writes in one `MULTI … EXEC`, filling `verdicts`
/// once it ran. Returns what happened: `committed`, `changed` (a watched session changed:
/// nothing written) or `skipped` (nothing this path could take).
async fn transact(
    con: &mut Redis,
    offers: &[Offer<'_>],
    session_ttl: Duration,
    reply_ttl: Duration,
    verdicts: &mut [Verdict],
) -> redis::RedisResult<&'static str> {
    let mut read = redis::pipe();
    read.cmd("WATCH");
    for offer in offers {
        read.arg(&offer.session);
    }
    read.ignore();
    for offer in offers {
        read.cmd("HMGET")
            .arg(&offer.session)
            .arg(format!("~s:{}", offer.address))
            .arg("~x")
            .arg("~c");
    }
    let guards: Vec<Guard> = read.query_async(con).await?;
    write(con, offers, &guards, session_ttl, reply_ttl, verdicts).await
}

/// Decides on `guards` (read under the connection's watch), then writes in one `MULTI …
/// EXEC` (or lets the watch go when nothing can be taken), filling `verdicts` once it ran.
async fn write(
    con: &mut Redis,
    offers: &[Offer<'_>],
    guards: &[Guard],
    session_ttl: Duration,
    reply_ttl: Duration,
    verdicts: &mut [Verdict],
) -> redis::RedisResult<&'static str> {
    let planned = decide(offers, guards, session_ttl);
    if planned.iter().all(|verdict| *verdict == Verdict::Left) {
        redis::cmd("UNWATCH").query_async::<()>(con).await?;
        return Ok("skipped");
    }
    let transaction = transaction(offers, &planned, reply_ttl);
    faults::before_watched_exec().await;
    if transaction.query_async::<Value>(con).await? == Value::Nil {
        return Ok("changed");
    }
    verdicts.copy_from_slice(&planned);
    Ok("committed")
}

/// The guard of `commit_session.lua` for the common case; anything else is left.
fn decide(offers: &[Offer<'_>], guards: &[Guard], session_ttl: Duration) -> Vec<Verdict> {
    let now = time::now_ms();
    let fresh_for = session_ttl.as_millis() as u64 * 3 / 4;
    let mut written: Vec<&str> = Vec::new();
    offers
        .iter()
        .zip(guards)
        .map(|(offer, (prior, expires, closed))| {
            let prior = prior.unwrap_or(0);
            if prior > offer.seq {
                return Verdict::Repeated;
            }
            let fresh = expires.is_some_and(|at| at.saturating_sub(now) >= fresh_for);
            let session = offer.session.as_str();
            if prior == offer.seq
                || !fresh
                || closed.is_some()
                || offer.outcome.len() > INLINE_OUTCOME
                || written.contains(&session)
            {
                return Verdict::Left;
            }
            written.push(session);
            Verdict::Committed
        })
        .collect()
}

/// `MULTI`, the session writes, then what `commit_fused.lua` does after them: the
/// replies ([`replies::commands`]) and per shard one `XACK`; `EXEC`.
fn transaction(offers: &[Offer<'_>], planned: &[Verdict], reply_ttl: Duration) -> Pipeline {
    let mut writes = redis::pipe();
    writes.atomic();
    let committed = || {
        offers
            .iter()
            .zip(planned)
            .filter(|(_, verdict)| **verdict == Verdict::Committed)
            .map(|(offer, _)| offer)
    };
    for offer in committed() {
        // Sized up front: built from empty, its buffers were reallocated several times.
        let sets: usize = offer.sets.iter().map(|(field, value)| field.len() + value.len()).sum();
        let size = offer.session.len() + 2 * (offer.address.len() + 3) + 20 + offer.outcome.len() + sets;
        let mut hset = redis::Cmd::with_capacity(6 + 2 * offer.sets.len(), "HSET".len() + size);
        hset.arg("HSET")
            .arg(&offer.session)
            .arg(format!("~s:{}", offer.address))
            .arg(offer.seq)
            .arg(format!("~o:{}", offer.address))
            .arg(&offer.outcome);
        for (field, value) in offer.sets {
            hset.arg(field).arg(value);
        }
        writes.add_command(hset).ignore();
        if !offer.deletes.is_empty() {
            writes.cmd("HDEL").arg(&offer.session).arg(offer.deletes).ignore();
        }
    }
    let replies = committed().filter_map(|offer| Some((offer.reply_stream.as_str(), offer.reply?)));
    for (_, cmd) in replies::commands(replies, reply_ttl.as_millis() as u64) {
        writes.add_command(cmd).ignore();
    }
    let mut acks: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (offer, verdict) in offers.iter().zip(planned) {
        // A message of a packed entry: acknowledged when the entry's last one is finished.
        let Some(entry_id) = offer.entry_id else { continue };
        if *verdict != Verdict::Left {
            acks.entry(offer.shard).or_default().push(entry_id);
        }
    }
    for (shard, ids) in acks {
        writes.cmd("XACK").arg(shard).arg(WORKER_GROUP).arg(ids).ignore();
    }
    writes
}
