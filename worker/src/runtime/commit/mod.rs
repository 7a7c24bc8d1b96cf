//! Committing handled messages: every effect once, in four slot-local steps.
//!
//! A message's effects live in up to four places: its session, the groups it
//! sends to, its interface (reply, HTTP request body) and its channel shard
//! (the acknowledgement). On a Redis Cluster those are different hash slots,
//! and one atomic step may only touch one slot. So the commit is a sequence of
//! steps, each atomic in its own slot, each safe to run again:
//!
//! 1. **session** (`commit_session.lua`): the session writes and an *outbox*
//!    (the message's sequence number with its reply and group sends), only if
//!    the outbox does not already hold this or a later message of the
//!    connection. If it holds this one, a worker committed it before and died
//!    (or was slow): the stored outcome is finished instead of ours, so the
//!    reply is the one computed from the session before the writes.
//! 2. **groups** (`commit_groups.lua`): each group send, only if the sender's
//!    marker in the group's slot is below the message's sequence number.
//! 3. **reply** (`commit_reply.lua`): the reply with its `done`; the HTTP
//!    request body append, guarded by the interface's sequence table. A reply
//!    appended twice is harmless: the interface applies each `done` once.
//! 4. **ack**: `XACK`, so the message is never handed out again. A message of a
//!    packed entry skips it until its entry's last message is finished
//!    ([`packed`](crate::runtime::packed)): then one `XACK` for the entry.
//!
//! A worker that dies between two steps leaves its message pending; whoever
//! handles it next runs the steps again and each one that already happened is
//! a no-op (docs/protocol.md has the failure analysis step by step). Nothing
//! checks that the entry is still pending to this worker: a slow worker and the
//! one that claimed its message both run the steps, and the guards let each
//! effect happen once.
//!
//! Handlers hand their commits to one batcher task, which runs each step for
//! every message of a batch together: one script call per hash slot (on a
//! single Redis, one per step for the whole batch). On a single Redis the
//! messages that need only steps 1, 3 and 4 (WebSocket, with a session, no
//! group sends) get all three in one call first (`commit_fused.lua`): one
//! round trip instead of three per batch; the steps then find them done. A
//! batch of at least `--commit-watch-min` such messages is offered first to
//! [`watched`]: the same guard made with WATCH/MULTI instead of a script, for
//! less Redis CPU per message at the price of one more round trip; what it does
//! not take, the script does. With `--redis-wait-replicas N` each step waits
//! until N replicas have it before the next one runs, so a failover cannot lose
//! a step whose successor happened.
//!
//! A streamed HTTP response sends its first pieces before that commit, each
//! after checking that the entry is still pending to this worker
//! (`stream_owner.lua`), so a worker that lost its entry to another one stops
//! streaming instead of mixing its output in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::FutureExt;
use redis::{RedisError, RedisResult, Script, ScriptInvocation, Value};
use switchyard_protocol::groups::{publish_command, send_keys, GroupFrame, History};
use switchyard_protocol::redis_conn::{wait_for_replicas, Redis, SlotBatch};
use switchyard_protocol::time;
use switchyard_protocol::{decode, encode, scripts, Keys, Outbox, OutboxSend, WORKER_GROUP};

use crate::api::session::SessionWrite;
use crate::runtime::packed::{Incoming, Part};
use tokio::sync::{mpsc, oneshot, Semaphore};

mod replies;
mod watched;
use replies::number_of;
use watched::{Offer, Verdict};
pub use watched::{Watch, Watched};

/// Most messages committed by one batch.
const MAX_BATCH: usize = 64;
/// Batches under way at once.
pub const BATCHES_IN_FLIGHT: usize = 4;
/// How long an outbox outlives a connection that is gone: longer than any
/// handing-over of its last messages to another worker.
const CLOSING_TTL: Duration = Duration::from_secs(3600);
/// How long a step waits for `--redis-wait-replicas` replicas.
const WAIT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the commit did for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// The message had been committed before (by an earlier attempt, or by
    /// another worker): its stored outcome was finished, ours dropped.
    Repeated,
    /// The entry is no longer pending to this worker (streamed responses
    /// only); nothing was written.
    NotOwned,
}

/// One handled message, ready to commit.
pub struct Commit {
    pub stream: String,
    pub entry_id: String,
    /// Its place in a packed entry: acknowledged with the entry's last message.
    pub part: Option<Part>,
    pub interface: String,
    pub conn: u64,
    pub seq: u64,
    /// Encoded reply; `None` when the connection is gone (disconnect).
    pub reply: Option<Vec<u8>>,
    /// The connection is over (a disconnect, or an HTTP request answered).
    pub forget: bool,
    /// What happens to the HTTP request body stored so far.
    pub body: BodyOp,
    /// The session, when it was used (or must be checked).
    pub session: Option<SessionWrite>,
    pub group_sends: GroupSends,
}

impl Commit {
    fn reply_address(&self) -> String {
        format!("{}!{}", self.interface, self.conn)
    }
}

/// The HTTP request body kept in Redis between chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOp {
    Keep,
    /// Append a chunk (the request goes on).
    Append(Vec<u8>),
    /// Drop it (the request is answered or gone).
    Delete,
}

/// One early reply of a streamed HTTP response.
pub struct StreamPiece<'a> {
    pub stream: &'a str,
    pub entry_id: &'a str,
    pub interface: &'a str,
    pub reply: &'a [u8],
}

/// Handle to the commit batcher (and the early-reply steps).
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Pending>,
    settings: Arc<Settings>,
    scripts: Arc<Scripts>,
}

/// What every batch needs besides the commits.
pub struct Settings {
    pub redis: Redis,
    pub keys: Keys,
    /// This worker's name in the consumer group.
    pub member: String,
    pub reply_ttl: Duration,
    pub session_ttl: Duration,
    /// `--group-history`: what each group send keeps.
    pub history: History,
    /// `--redis-wait-replicas`: replicas each step waits for (0: none).
    pub wait_replicas: u32,
    /// `--commit-watch-min`: large batches committed with WATCH/MULTI
    /// (single Redis only).
    pub watch: Option<Watch>,
}

struct Scripts {
    session: Script,
    groups: Script,
    reply: Script,
    owner: Script,
    /// Steps 1, 3 and 4 in one call: on a single Redis without
    /// `--redis-wait-replicas` only.
    fused: Option<Script>,
}

type Pending = (Commit, oneshot::Sender<RedisResult<Outcome>>);

/// A commit on its way through the steps.
struct Item {
    commit: Commit,
    /// `Err` once a step failed (the handler retries the message).
    state: RedisResult<Outcome>,
    /// Only the acknowledgement is left: a later message of the connection is
    /// committed, so this one was completely before.
    finished: bool,
    /// Acknowledged already (by the fused step), or a message of a packed entry whose
    /// acknowledgement [`ack_step`] decides: nothing is left.
    acked: bool,
    done: oneshot::Sender<RedisResult<Outcome>>,
}

impl Item {
    fn going(&self) -> bool {
        self.state.is_ok()
    }

    /// Still has steps to run (not failed, not found done already).
    fn writing(&self) -> bool {
        matches!(self.state, Ok(Outcome::Committed | Outcome::Repeated)) && !self.finished
    }

    /// Committed whole (written, replied, acknowledged unless packed) by one call: no
    /// step is left but a packed entry's acknowledgement.
    fn done_with(&mut self, outcome: Outcome) {
        self.state = Ok(outcome);
        self.finished = true;
        self.acked = self.commit.part.is_none();
    }
}

impl Committer {
    /// Starts the batcher task.
    pub fn start(settings: Settings) -> Committer {
        let settings = Arc::new(settings);
        let scripts = Arc::new(Scripts {
            session: Script::new(scripts::COMMIT_SESSION),
            groups: Script::new(&scripts::commit_groups()),
            reply: Script::new(scripts::COMMIT_REPLY),
            owner: Script::new(scripts::STREAM_OWNER),
            fused: (!settings.redis.is_cluster() && settings.wait_replicas == 0)
                .then(|| Script::new(&scripts::commit_fused())),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(settings.clone(), scripts.clone(), rx));
        Committer { tx, settings, scripts }
    }

    /// Commits one message (batched with whatever else is ready).
    pub async fn commit(&self, commit: Commit) -> RedisResult<Outcome> {
        let (done, outcome) = oneshot::channel();
        let closed = || RedisError::from((redis::ErrorKind::Client, "commit batcher stopped"));
        self.tx.send((commit, done)).map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }

    /// The WATCH/MULTI commit, when read batches may use it (`runtime/read_batch/`): on a
    /// single Redis that has not refused it.
    pub fn watch(&self) -> Option<&Watch> {
        self.settings.watch.as_ref().filter(|watch| watch.usable())
    }

    /// Commits a read batch's messages in the `EXEC` of its `watched` read: each one's
    /// outcome (written, replied, acknowledged), or `None` for one left to
    /// [`Committer::commit`].
    pub async fn commit_watched(&self, watched: Watched<'_>, commits: &[Commit]) -> Vec<Option<Outcome>> {
        let settings = &self.settings;
        let (indices, offers): (Vec<usize>, Vec<Offer<'_>>) = commits
            .iter()
            .enumerate()
            .filter_map(|(index, commit)| Some((index, offer_of(&settings.keys, commit)?)))
            .unzip();
        let verdicts = watched.commit(&offers, settings.session_ttl, settings.reply_ttl).await;
        let mut outcomes = vec![None; commits.len()];
        for (index, verdict) in indices.into_iter().zip(verdicts) {
            outcomes[index] = outcome_of(verdict);
        }
        self.ack_packed(commits, &mut outcomes).await;
        outcomes
    }

    /// The `EXEC` of [`Committer::commit_watched`] acknowledges single entries only: here the
    /// packed entries whose last message it committed are. If that fails, those messages are
    /// left to [`Committer::commit`] (which finds them committed and acknowledges again).
    async fn ack_packed(&self, commits: &[Commit], outcomes: &mut [Option<Outcome>]) {
        let finished = commits.iter().zip(outcomes.iter()).map(|(commit, outcome)| {
            let last = outcome.is_some() && commit.part.as_ref().is_some_and(Part::finish);
            (commit, last)
        });
        for (index, _) in acknowledge(&self.settings.redis, finished).await {
            outcomes[index] = None;
        }
    }

    /// Appends one piece of a streamed HTTP response ahead of the commit;
    /// `false` when the entry is no longer ours (or already acknowledged).
    pub async fn stream_reply(&self, piece: &StreamPiece<'_>) -> RedisResult<bool> {
        let settings = &self.settings;
        let mut con = settings.redis.clone();
        let owned: i64 = self
            .scripts
            .owner
            .key(piece.stream)
            .arg(WORKER_GROUP)
            .arg(&settings.member)
            .arg(piece.entry_id)
            .invoke_async(&mut con)
            .await?;
        if owned != 1 {
            return Ok(false);
        }
        let stream = settings.keys.reply_stream(piece.interface);
        redis::pipe()
            .cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(switchyard_protocol::PAYLOAD_FIELD)
            .arg(piece.reply)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&stream)
            .arg(settings.reply_ttl.as_millis() as u64)
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(true)
    }
}

async fn run(settings: Arc<Settings>, scripts: Arc<Scripts>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        // Take a batch slot first, so a busy Redis makes the next batch bigger.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let settings = settings.clone();
        let scripts = scripts.clone();
        tokio::spawn(async move {
            let mut items: Vec<Item> = batch
                .into_iter()
                .map(|(commit, done)| Item {
                    commit,
                    state: Ok(Outcome::Committed),
                    done,
                    finished: false,
                    acked: false,
                })
                .collect();
            commit_batch(&settings, &scripts, &mut items).await;
            for item in items {
                let _ = item.done.send(item.state);
            }
            drop(slot);
        });
    }
}

/// Runs the four steps over a batch; each item ends with its outcome or the
/// first error it met (its handler then runs the message again). On a single
/// Redis the messages that need only steps 1, 3 and 4 get them in one call
/// first; the steps then find nothing left to do for them.
async fn commit_batch(settings: &Settings, scripts: &Scripts, items: &mut [Item]) {
    if let Some(watch) = &settings.watch {
        watched_step(settings, watch, items).await;
    }
    if let Some(fused) = &scripts.fused {
        fused_step(settings, fused, items).await;
    }
    let written = session_step(settings, scripts, items).await;
    wait_replicas(settings, items, &written).await;
    let written = groups_step(settings, scripts, items).await;
    wait_replicas(settings, items, &written).await;
    let written = reply_step(settings, scripts, items).await;
    wait_replicas(settings, items, &written).await;
    ack_step(settings, items).await;
}

/// A WebSocket message with a session, no group sends (step 2), no HTTP body
/// and no ending: steps 1, 3 and 4 commit it whole.
fn plain(commit: &Commit) -> bool {
    commit.session.is_some() && commit.group_sends.is_empty() && commit.body == BodyOp::Keep && !commit.forget
}

/// Whether the fused step can commit a message whole.
fn fusable(item: &Item) -> bool {
    item.writing() && plain(&item.commit)
}

/// Whether the WATCH/MULTI commit may take a message: a plain one that writes its session.
fn offerable(commit: &Commit) -> bool {
    plain(commit) && commit.session.as_ref().is_some_and(SessionWrite::writes)
}

/// What the WATCH/MULTI commit gets for a message it may take.
fn offer_of<'a>(keys: &Keys, commit: &'a Commit) -> Option<Offer<'a>> {
    let session = commit.session.as_ref().filter(|_| offerable(commit))?;
    Some(Offer {
        session: keys.session(&session.id),
        address: commit.reply_address(),
        seq: commit.seq,
        outcome: encode_outbox(commit),
        sets: &session.sets,
        deletes: &session.deletes,
        reply_stream: keys.reply_stream(&commit.interface),
        reply: commit.reply.as_deref(),
        shard: &commit.stream,
        entry_id: commit.part.is_none().then_some(commit.entry_id.as_str()),
    })
}

/// Offers the batch's plain messages that write their session to the WATCH/MULTI
/// commit ([`watched`]) when there are enough of them; what it commits (or finds
/// committed later) is done and acknowledged, what it leaves goes on to the script.
async fn watched_step(settings: &Settings, watch: &Watch, items: &mut [Item]) {
    // Counted first: a small batch (every one, at a low rate) costs no more than this.
    if !watch.wants(
        items
            .iter()
            .filter(|item| item.writing() && offerable(&item.commit))
            .count(),
    ) {
        return;
    }
    let keys = &settings.keys;
    let (offered, offers): (Vec<usize>, Vec<Offer<'_>>) = items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.writing())
        .filter_map(|(index, item)| Some((index, offer_of(keys, &item.commit)?)))
        .unzip();
    let verdicts = watch.commit(&offers, settings.session_ttl, settings.reply_ttl).await;
    drop(offers);
    for (index, verdict) in offered.into_iter().zip(verdicts) {
        if let Some(outcome) = outcome_of(verdict) {
            items[index].done_with(outcome);
        }
    }
}

/// What a message the WATCH/MULTI commit took ended as (written, replied and
/// acknowledged in its `EXEC`); `None` for one it left to the script.
fn outcome_of(verdict: Verdict) -> Option<Outcome> {
    match verdict {
        Verdict::Committed => Some(Outcome::Committed),
        Verdict::Repeated => Some(Outcome::Repeated),
        Verdict::Left => None,
    }
}

/// Steps 1, 3 and 4 in one call (`commit_fused.lua`, single Redis only) for
/// the fusable messages: one round trip instead of three. What it committed
/// (or found committed later) is done and acknowledged; a message committed
/// before goes on through the steps with its stored outcome.
async fn fused_step(settings: &Settings, script: &Script, items: &mut [Item]) {
    let fused: Vec<usize> = (0..items.len()).filter(|&index| fusable(&items[index])).collect();
    if fused.is_empty() {
        return;
    }
    let keys = &settings.keys;
    let mut invocation = script.prepare_invoke();
    session_header(settings, &mut invocation);
    // Reply streams and shard streams, each numbered once (from 1).
    let mut replies: Vec<String> = Vec::new();
    let mut shards: Vec<&str> = Vec::new();
    let mut numbers = Vec::with_capacity(fused.len());
    for &index in &fused {
        let commit = &items[index].commit;
        if let Some(session) = &commit.session {
            session_message(keys, &mut invocation, &keys.session(&session.id), commit);
        }
        let reply = number_of(&mut replies, keys.reply_stream(&commit.interface));
        // 0: not acknowledged by the script (a message of a packed entry).
        let shard = match commit.part {
            None => number_of(&mut shards, commit.stream.as_str()),
            Some(_) => 0,
        };
        numbers.push((reply, shard));
    }
    invocation
        .arg(settings.reply_ttl.as_millis() as u64)
        .arg(WORKER_GROUP)
        .arg(replies.len())
        .arg(shards.len());
    for (&index, (reply, shard)) in fused.iter().zip(&numbers) {
        let commit = &items[index].commit;
        invocation
            .arg(reply)
            .arg(commit.reply.as_deref().unwrap_or(b""))
            .arg(shard)
            .arg(&commit.entry_id);
    }
    invocation.arg(fused.len());
    for key in &replies {
        invocation.key(key);
    }
    for key in &shards {
        invocation.key(*key);
    }
    let mut con = settings.redis.clone();
    let codes = match invocation.invoke_async::<Vec<Value>>(&mut con).await {
        Ok(codes) => codes,
        Err(error) => {
            for index in fused {
                items[index].state = Err(error.clone());
            }
            return;
        }
    };
    for (index, code) in fused
        .into_iter()
        .zip(codes.into_iter().chain(std::iter::repeat(Value::Nil)))
    {
        let item = &mut items[index];
        match code {
            Value::Int(1) => item.done_with(Outcome::Committed),
            Value::Int(0) => item.done_with(Outcome::Repeated),
            stored => apply_session_result(item, stored),
        }
    }
}

/// Groups the indices of `items` by the slot group of a key.
fn by_slot(
    redis: &Redis,
    items: &[Item],
    key: impl Fn(&Item) -> Option<String>,
) -> BTreeMap<u16, Vec<(usize, String)>> {
    let mut groups: BTreeMap<u16, Vec<(usize, String)>> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        if let Some(key) = key(item) {
            groups
                .entry(redis.slot_group(key.as_bytes()))
                .or_default()
                .push((index, key));
        }
    }
    groups
}

/// A key of each slot group: what `--redis-wait-replicas` waits on after a step.
fn one_key_per_slot(groups: &BTreeMap<u16, Vec<(usize, String)>>) -> Vec<String> {
    groups
        .values()
        .filter_map(|members| members.first().map(|(_, key)| key.clone()))
        .collect()
}

/// Step 1: session writes and outboxes, once per message. Returns the keys
/// written (one per slot).
async fn session_step(settings: &Settings, scripts: &Scripts, items: &mut [Item]) -> Vec<String> {
    let keys = &settings.keys;
    let groups = by_slot(&settings.redis, items, |item| {
        let session = item.commit.session.as_ref()?;
        item.writing().then(|| keys.session(&session.id))
    });
    let calls = groups.values().map(|members| {
        let mut invocation = scripts.session.prepare_invoke();
        session_header(settings, &mut invocation);
        for (index, session_key) in members {
            session_message(keys, &mut invocation, session_key, &items[*index].commit);
        }
        let mut con = settings.redis.clone();
        async move { invocation.invoke_async::<Vec<Value>>(&mut con).await }
    });
    let results = join_all(calls).await;
    let written = one_key_per_slot(&groups);
    for (members, result) in groups.values().zip(results) {
        match result {
            Ok(codes) => {
                for ((index, _), code) in members
                    .iter()
                    .zip(codes.into_iter().chain(std::iter::repeat(Value::Nil)))
                {
                    apply_session_result(&mut items[*index], code);
                }
            }
            Err(error) => {
                for (index, _) in members {
                    items[*index].state = Err(error.clone());
                }
            }
        }
    }
    written
}

/// `commit_session.lua`'s first arguments: TTLs and the time.
fn session_header(settings: &Settings, invocation: &mut ScriptInvocation<'_>) {
    invocation
        .arg(settings.session_ttl.as_millis() as u64)
        .arg(CLOSING_TTL.min(settings.session_ttl).as_millis() as u64)
        .arg(time::now_ms());
}

/// One message's keys and arguments for `commit_session.lua`.
fn session_message(keys: &Keys, invocation: &mut ScriptInvocation<'_>, session_key: &str, commit: &Commit) {
    let Some(session) = &commit.session else { return };
    let reply_address = commit.reply_address();
    invocation
        .key(session_key)
        .key(keys.outbox(&session.id, &reply_address));
    let outbox = if session.writes() {
        encode_outbox(commit)
    } else {
        Vec::new()
    };
    let own = session.id == reply_address;
    let flags = match (commit.forget, own) {
        (true, true) => "co",
        (true, false) => "c",
        (false, true) => "o",
        (false, false) => "",
    };
    invocation
        .arg(commit.seq)
        .arg(&reply_address)
        .arg(outbox)
        .arg(flags)
        .arg(session.sets.len());
    for (field, value) in &session.sets {
        invocation.arg(field).arg(value);
    }
    invocation.arg(session.deletes.len());
    for field in &session.deletes {
        invocation.arg(field);
    }
}

fn encode_outbox(commit: &Commit) -> Vec<u8> {
    let groups = commit
        .group_sends
        .iter()
        .map(|(group, frame)| {
            let (kind, data) = frame.kind_and_data();
            OutboxSend {
                group: group.clone(),
                kind: kind.to_owned(),
                data: data.to_vec().into(),
            }
        })
        .collect();
    encode(&Outbox {
        v: switchyard_protocol::PROTOCOL_VERSION,
        reply: commit.reply.clone().unwrap_or_default().into(),
        groups,
    })
}

/// A message's group sends: (group, frame).
type GroupSends = Vec<(String, GroupFrame)>;

/// The reply and group sends back from a stored "<seq> <outbox>".
fn decode_outbox(stored: &[u8]) -> Option<(Option<Vec<u8>>, GroupSends)> {
    let space = stored.iter().position(|&b| b == b' ')?;
    let outbox: Outbox = decode(&stored[space + 1..]).ok()?;
    let groups = outbox
        .groups
        .into_iter()
        .map(|send| {
            Some((
                send.group,
                GroupFrame::from_kind_and_data(&send.kind, send.data.into_vec())?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    let reply = outbox.reply.into_vec();
    Some(((!reply.is_empty()).then_some(reply), groups))
}

/// 1 → go on; 0 → a later message is committed (only the ack is left);
/// "<seq> <outbox>" → this message was committed before: finish that.
fn apply_session_result(item: &mut Item, code: Value) {
    match code {
        Value::Int(1) => {}
        Value::Int(0) => {
            item.state = Ok(Outcome::Repeated);
            item.finished = true;
        }
        Value::BulkString(stored) => match decode_outbox(&stored) {
            Some((reply, groups)) => {
                item.commit.reply = reply;
                item.commit.group_sends = groups;
                item.state = Ok(Outcome::Repeated);
            }
            None => {
                item.state = Err(RedisError::from((
                    redis::ErrorKind::Parse,
                    "unreadable outbox in Redis",
                )))
            }
        },
        other => {
            item.state = Err(RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected answer from the session step",
                format!("{other:?}"),
            )))
        }
    }
}

/// Step 2: group sends, once per message and group. Returns the keys written
/// (one per slot).
async fn groups_step(settings: &Settings, scripts: &Scripts, items: &mut [Item]) -> Vec<String> {
    let keys = &settings.keys;
    // One entry per (message, group): the sends of a message to a group stay together.
    let mut sends: BTreeMap<u16, Vec<(usize, &str, &GroupFrame)>> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        if !item.writing() {
            continue;
        }
        for (group, frame) in &item.commit.group_sends {
            let slot = settings.redis.slot_group(keys.group_channel(group).as_bytes());
            sends.entry(slot).or_default().push((index, group, frame));
        }
    }
    if sends.is_empty() {
        return Vec::new();
    }
    let written = sends
        .values()
        .filter_map(|m| m.first().map(|(_, group, _)| keys.group_seq(group)))
        .collect();
    let publish = publish_command(settings.redis.is_cluster());
    let calls = sends.values().map(|members| {
        let mut invocation = scripts.groups.prepare_invoke();
        let (history, history_ttl) = settings.history.args();
        invocation
            .arg(publish)
            .arg(settings.session_ttl.as_millis() as u64)
            .arg(history)
            .arg(history_ttl);
        for (index, group, frame) in members {
            let commit = &items[*index].commit;
            let (kind, data) = frame.kind_and_data();
            for key in send_keys(keys, group) {
                invocation.key(key);
            }
            invocation
                .key(keys.group_sent(group, &commit.reply_address()))
                .arg(commit.seq)
                .arg(*group)
                .arg(kind)
                .arg(data);
        }
        let mut con = settings.redis.clone();
        async move { invocation.invoke_async::<i64>(&mut con).await }
    });
    let results = join_all(calls).await;
    let failed: Vec<(usize, RedisError)> = sends
        .values()
        .zip(results)
        .filter_map(|(members, result)| result.err().map(|e| (members, e)))
        .flat_map(|(members, error)| members.iter().map(move |(index, _, _)| (*index, error.clone())))
        .collect();
    for (index, error) in failed {
        items[index].state = Err(error);
    }
    written
}

/// Step 3: replies and HTTP request bodies. Returns the keys written (one
/// per slot).
async fn reply_step(settings: &Settings, scripts: &Scripts, items: &mut [Item]) -> Vec<String> {
    let keys = &settings.keys;
    let groups = by_slot(&settings.redis, items, |item| {
        item.writing().then(|| keys.reply_stream(&item.commit.interface))
    });
    let calls = groups.values().map(|members| {
        let plain = members.iter().all(|(index, _)| {
            let commit = &items[*index].commit;
            commit.body == BodyOp::Keep && !commit.forget
        });
        if plain {
            // WebSocket replies only: no guard to check, so no script — an
            // XADD per reply stream (an `m` per reply) and its PEXPIRE.
            let batch = plain_replies(settings, items, members);
            let redis = settings.redis.clone();
            return async move { batch.run(&redis).await.into_iter().try_for_each(|r| r.map(drop)) }.boxed();
        }
        let mut invocation = scripts.reply.prepare_invoke();
        invocation.arg(settings.reply_ttl.as_millis() as u64);
        for (index, reply_stream) in members {
            let commit = &items[*index].commit;
            invocation
                .key(reply_stream)
                .key(keys.connection_seqs(&commit.interface))
                .key(keys.http_body(&commit.interface, commit.conn));
            invocation
                .arg(commit.conn)
                .arg(commit.seq)
                .arg(commit.reply.as_deref().unwrap_or(b""));
            match &commit.body {
                BodyOp::Keep => invocation.arg("").arg(""),
                BodyOp::Append(chunk) => invocation.arg("append").arg(chunk.as_slice()),
                BodyOp::Delete => invocation.arg("delete").arg(""),
            };
            invocation.arg(if commit.forget { "1" } else { "0" });
        }
        let mut con = settings.redis.clone();
        async move { invocation.invoke_async::<i64>(&mut con).await.map(drop) }.boxed()
    });
    let results = join_all(calls).await;
    let written = one_key_per_slot(&groups);
    for (members, result) in groups.values().zip(results) {
        if let Err(error) = result {
            for (index, _) in members {
                items[*index].state = Err(error.clone());
            }
        }
    }
    written
}

/// The replies of `members` (none with an HTTP body or a forget) as what
/// `commit_reply.lua` would do for them ([`replies::commands`]).
fn plain_replies(settings: &Settings, items: &[Item], members: &[(usize, String)]) -> SlotBatch {
    let replies = members.iter().filter_map(|(index, stream)| {
        let reply = items[*index].commit.reply.as_deref()?;
        Some((stream.as_str(), reply))
    });
    let mut batch = SlotBatch::new();
    for (stream, cmd) in replies::commands(replies, settings.reply_ttl.as_millis() as u64) {
        batch.add(stream, cmd);
    }
    batch
}

/// Step 4: one `XACK` per stream for everything that got this far (of a packed entry,
/// the message that finishes it).
async fn ack_step(settings: &Settings, items: &mut [Item]) {
    // Short-circuit: only a message that got this far finishes its part.
    let acked = |item: &Item| item.going() && !item.acked && item.commit.part.as_ref().is_none_or(Part::finish);
    let commits = items.iter().map(|item| (&item.commit, acked(item)));
    let failed = acknowledge(&settings.redis, commits).await;
    for (index, error) in failed {
        items[index].state = Err(error);
    }
}

/// `XACK`s, one per stream, for the entries of the commits marked `true`; the index of
/// each whose acknowledgement failed, with the error.
async fn acknowledge<'a>(redis: &Redis, commits: impl Iterator<Item = (&'a Commit, bool)>) -> Vec<(usize, RedisError)> {
    let mut streams: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut ids: Vec<&str> = Vec::new();
    for (index, (commit, acked)) in commits.enumerate() {
        ids.push(&commit.entry_id);
        if acked {
            streams.entry(commit.stream.as_str()).or_default().push(index);
        }
    }
    let mut batch = SlotBatch::new();
    for (stream, members) in &streams {
        let mut xack = redis::cmd("XACK");
        xack.arg(*stream).arg(WORKER_GROUP);
        for index in members {
            xack.arg(ids[*index]);
        }
        batch.add(stream, xack);
    }
    let outcomes = batch.run(redis).await;
    streams
        .into_values()
        .zip(outcomes)
        .filter_map(|(members, outcome)| outcome.err().map(|error| (members, error)))
        .flat_map(|(members, error)| members.into_iter().map(move |index| (index, error.clone())))
        .collect()
}

/// With `--redis-wait-replicas N`: waits until N replicas have what the last
/// step wrote (`written`: a key per slot it wrote to); if they do not within
/// the timeout, every item still under way fails (and is handled again: every
/// step is safe to repeat).
async fn wait_replicas(settings: &Settings, items: &mut [Item], written: &[String]) {
    if settings.wait_replicas == 0 || written.is_empty() || !items.iter().any(Item::writing) {
        return;
    }
    let waited = wait_for_replicas(
        &settings.redis,
        written.iter().map(String::as_str),
        settings.wait_replicas,
        WAIT_TIMEOUT,
    )
    .await;
    if let Err(error) = waited {
        for item in items.iter_mut().filter(|item| item.writing()) {
            item.state = Err(error.clone());
        }
    }
}

/// Moves a message that cannot be handled to the dead-letter stream, then
/// acknowledges its entry (a packed one once its last message is finished). Two
/// steps (the dead-letter stream and the channel shard are in different slots):
/// a worker that dies between them leaves the entry pending, and the next one
/// dead-letters it again — a dead letter may appear twice, it is never lost. The
/// dead-letter stream is capped.
pub async fn dead_letter(
    con: &mut Redis,
    keys: &Keys,
    stream: &str,
    incoming: &Incoming,
    consumer: &str,
    error: &str,
) -> RedisResult<()> {
    dead_letter_record(con, keys, stream, incoming, consumer, error, &[]).await?;
    if !incoming.part.as_ref().is_none_or(Part::finish) {
        return Ok(());
    }
    redis::cmd("XACK")
        .arg(stream)
        .arg(WORKER_GROUP)
        .arg(&incoming.entry.id)
        .query_async(con)
        .await
}

/// Appends a message to the dead-letter stream (capped at ~100,000) with why,
/// who gave up on it, `extra` fields (the delivery count of a poison
/// message), its index in a packed entry (`part`) and its own fields as
/// `field:<name>`; does not acknowledge it.
pub async fn dead_letter_record(
    con: &mut Redis,
    keys: &Keys,
    stream: &str,
    incoming: &Incoming,
    consumer: &str,
    error: &str,
    extra: &[(&str, String)],
) -> RedisResult<()> {
    let mut add = redis::cmd("XADD");
    add.arg(keys.dead_letter())
        .arg("MAXLEN")
        .arg("~")
        .arg(100_000)
        .arg("*")
        .arg("stream")
        .arg(stream)
        .arg("id")
        .arg(&incoming.entry.id)
        .arg("error")
        .arg(error)
        .arg("consumer")
        .arg(consumer);
    for (name, value) in extra {
        add.arg(*name).arg(value);
    }
    if let Some(part) = &incoming.part {
        add.arg("part").arg(part.index);
    }
    for (name, value) in &incoming.entry.fields {
        let mut field = b"field:".to_vec();
        field.extend_from_slice(name);
        add.arg(field).arg(value);
    }
    add.query_async::<()>(con).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(reply: Option<Vec<u8>>, group_sends: GroupSends) -> Commit {
        Commit {
            stream: "chan".into(),
            entry_id: "1-0".into(),
            part: None,
            interface: "iface".into(),
            conn: 7,
            seq: 3,
            reply,
            forget: false,
            body: BodyOp::Keep,
            session: None,
            group_sends,
        }
    }

    fn item(commit: Commit) -> (Item, oneshot::Receiver<RedisResult<Outcome>>) {
        let (done, rx) = oneshot::channel();
        let item = Item {
            commit,
            state: Ok(Outcome::Committed),
            finished: false,
            acked: false,
            done,
        };
        (item, rx)
    }

    /// What the session step stores: "<seq> <outbox>".
    fn stored(commit: &Commit) -> Vec<u8> {
        let mut stored = format!("{} ", commit.seq).into_bytes();
        stored.extend(encode_outbox(commit));
        stored
    }

    fn text_frame(text: &str) -> GroupFrame {
        GroupFrame::Text(text.into())
    }

    #[test]
    fn the_outbox_keeps_the_reply_and_the_group_sends() {
        let original = commit(Some(b"reply".to_vec()), vec![("lobby".into(), text_frame("hi"))]);
        let (reply, groups) = decode_outbox(&stored(&original)).expect("decodes");
        assert_eq!(reply.as_deref(), Some(&b"reply"[..]));
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].0, "lobby");
        assert_eq!(groups[0].1, text_frame("hi"));
        // No reply (the connection was gone) stays no reply.
        let (reply, groups) = decode_outbox(&stored(&commit(None, Vec::new()))).expect("decodes");
        assert_eq!(reply, None);
        assert!(groups.is_empty());
        assert!(decode_outbox(b"no-space-here").is_none());
        assert!(decode_outbox(b"3 not msgpack").is_none());
    }

    #[test]
    fn a_message_committed_before_finishes_with_the_stored_outcome() {
        let earlier = commit(Some(b"first".to_vec()), vec![("g".into(), text_frame("x"))]);
        let (mut item, _rx) = item(commit(Some(b"second".to_vec()), Vec::new()));
        apply_session_result(&mut item, Value::BulkString(stored(&earlier)));
        assert!(matches!(item.state, Ok(Outcome::Repeated)));
        assert!(item.writing(), "its group sends and reply still run (idempotently)");
        assert_eq!(
            item.commit.reply.as_deref(),
            Some(&b"first"[..]),
            "the stored reply wins"
        );
        assert_eq!(item.commit.group_sends.len(), 1);
    }

    #[test]
    fn a_later_message_committed_leaves_only_the_ack() {
        let (mut item, _rx) = item(commit(Some(b"r".to_vec()), Vec::new()));
        apply_session_result(&mut item, Value::Int(0));
        assert!(matches!(item.state, Ok(Outcome::Repeated)));
        assert!(item.finished);
        assert!(!item.writing());
        assert!(item.going(), "the ack still runs");
    }

    #[test]
    fn a_first_commit_goes_on_and_garbage_is_an_error() {
        let (mut fresh, _rx) = item(commit(Some(b"r".to_vec()), Vec::new()));
        apply_session_result(&mut fresh, Value::Int(1));
        assert!(matches!(fresh.state, Ok(Outcome::Committed)));
        assert!(fresh.writing());

        let (mut unreadable, _rx) = item(commit(None, Vec::new()));
        apply_session_result(&mut unreadable, Value::BulkString(b"5 garbage".to_vec()));
        assert!(!unreadable.going(), "the handler retries rather than guess");

        let (mut strange, _rx) = item(commit(None, Vec::new()));
        apply_session_result(&mut strange, Value::Okay);
        assert!(!strange.going());
    }

    #[test]
    fn the_reply_address_names_interface_and_connection() {
        assert_eq!(commit(None, Vec::new()).reply_address(), "iface!7");
    }
}
