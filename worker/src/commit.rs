//! Committing handled messages: all of each or none of it, many per round trip.
//!
//! One Lua script (atomic in Redis) does, for each stream entry of a batch:
//! 1. check that the entry is still pending **to this consumer** — if another
//!    worker claimed it meanwhile, this result is dropped (that worker's
//!    counts);
//! 2. check the connection's last committed sequence number — a repeated
//!    message (an interface retry) is only acknowledged;
//! 3. write the session changes, publish the group sends, append (or drop)
//!    the HTTP request body received so far, append the reply with its `done`
//!    marker, record the sequence number, and XACK.
//!
//! The XACKs (one per stream) and the PEXPIREs (one per key) come last, once
//! per batch rather than once per message: in a script every `redis.call`
//! costs Redis CPU, and these were three of the eleven commands per message.
//!
//! So a worker that dies mid-message leaves nothing behind, a slow worker whose
//! message was claimed cannot apply it a second time, and nothing is applied
//! twice. Handlers hand their commits to one batcher task, which sends all
//! that are ready in a single script call: the script's fixed cost is paid
//! once per batch, not once per message. (On Redis Cluster these keys live on
//! different slots; see docs/protocol.md.)
//!
//! A streamed HTTP response sends its first pieces before that commit, each
//! through a smaller script ([`Committer::stream_reply`]) that checks the same
//! ownership and sequence conditions, so a worker that lost its entry to
//! another one stops streaming instead of mixing its output in.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{RedisError, RedisResult, Script};
use switchyard_protocol::groups::{group_send_args, GroupFrame, GROUP_SEND_LUA};
use switchyard_protocol::stream::StreamEntry;
use switchyard_protocol::{Keys, WORKER_GROUP};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Commits a batch. KEYS: 5 per message (channel stream, reply stream,
/// sequence table, session, HTTP request body). ARGV: group, consumer, prefix,
/// reply TTL, then per message: id, conn, seq, reply, session TTL (0 = session
/// unused), forget flag, body op (`append`, `delete` or ''), body chunk, number
/// of sets and the pairs, of deletes and the fields, of group sends and the
/// triples.
/// Returns one code per message: 1 committed, 2 repeat, 0 not owned.
const COMMIT_LUA: &str = r#"
local group, consumer, prefix, reply_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local i = 5
local results = {}
-- Once per key per batch, at the end: acks per stream, expiries per key.
local acks, expire = {}, {}
local function ack(stream, id)
  local ids = acks[stream]
  if ids == nil then ids = {}; acks[stream] = ids end
  ids[#ids + 1] = id
end
for m = 1, #KEYS / 5 do
  local stream, reply_stream, seqs, session = KEYS[5*m-4], KEYS[5*m-3], KEYS[5*m-2], KEYS[5*m-1]
  local body = KEYS[5*m]
  local id, conn, seq, reply = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+3]
  local session_ttl, forget = ARGV[i+4], ARGV[i+5] == '1'
  local body_op, chunk = ARGV[i+6], ARGV[i+7]
  local n_set = tonumber(ARGV[i+8])
  local sets = i + 9
  local n_del = tonumber(ARGV[sets + 2*n_set])
  local dels = sets + 2*n_set + 1
  local n_pub = tonumber(ARGV[dels + n_del])
  local pubs = dels + n_del + 1
  i = pubs + 3*n_pub
  local code = 1
  if #redis.call('XPENDING', stream, group, id, id, 1, consumer) == 0 then
    code = 0
  elseif seq <= tonumber(redis.call('HGET', seqs, conn) or '0') then
    ack(stream, id)
    code = 2
  else
    if n_set > 0 then redis.call('HSET', session, unpack(ARGV, sets, sets + 2*n_set - 1)) end
    if n_del > 0 then redis.call('HDEL', session, unpack(ARGV, dels, dels + n_del - 1)) end
    if session_ttl ~= '0' then expire[session] = session_ttl end
    for p = pubs, pubs + 3*(n_pub - 1), 3 do group_send(prefix, ARGV[p], ARGV[p+1], ARGV[p+2]) end
    if body_op == 'append' then
      redis.call('APPEND', body, chunk)
      redis.call('PEXPIRE', body, reply_ttl)
    elseif body_op == 'delete' then
      redis.call('DEL', body)
    end
    if reply ~= '' then
      redis.call('XADD', reply_stream, '*', 'm', reply)
      expire[reply_stream] = reply_ttl
    end
    if forget then
      redis.call('HDEL', seqs, conn)
    else
      redis.call('HSET', seqs, conn, seq)
      expire[seqs] = reply_ttl
    end
    ack(stream, id)
  end
  results[m] = code
end
for stream, ids in pairs(acks) do redis.call('XACK', stream, group, unpack(ids)) end
for key, ttl in pairs(expire) do redis.call('PEXPIRE', key, ttl) end
return results
"#;

/// Appends one early piece of a streamed HTTP response. KEYS: channel stream,
/// reply stream, sequence table. ARGV: group, consumer, id, conn, seq, reply,
/// reply TTL. Returns 1 if appended, 0 if the entry is no longer ours.
const STREAM_LUA: &str = r#"
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local conn, seq, reply, reply_ttl = ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
if #redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer) == 0 then return 0 end
if seq <= tonumber(redis.call('HGET', KEYS[3], conn) or '0') then return 0 end
-- Resets the entry's idle time: a long response is not work left behind.
redis.call('XCLAIM', KEYS[1], group, consumer, 0, id, 'JUSTID')
redis.call('XADD', KEYS[2], '*', 'm', reply)
redis.call('PEXPIRE', KEYS[2], reply_ttl)
return 1
"#;

/// Most messages committed by one script call.
const MAX_BATCH: usize = 64;
/// Script calls under way at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// What the commit script decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Another consumer owns the entry now; nothing was written.
    NotOwned,
    /// The sequence number was already committed; only acknowledged.
    Repeated,
}

/// A session's key with the fields to set and the fields to delete.
pub struct SessionWrite {
    pub key: String,
    pub sets: Vec<(String, String)>,
    pub deletes: Vec<String>,
}

/// One handled message, ready to commit.
pub struct Commit {
    pub stream: String,
    pub entry_id: String,
    pub interface: String,
    pub conn: u64,
    pub seq: u64,
    /// Encoded reply; `None` when the connection is gone (disconnect).
    pub reply: Option<Vec<u8>>,
    /// The connection is over (a disconnect, or an HTTP request answered):
    /// its sequence record is dropped instead of updated.
    pub forget: bool,
    /// What happens to the HTTP request body stored so far.
    pub body: BodyOp,
    /// The session's changes, when the session was used.
    pub session: Option<SessionWrite>,
    pub group_sends: Vec<(String, GroupFrame)>,
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
    pub conn: u64,
    pub seq: u64,
    pub reply: &'a [u8],
}

type Pending = (Commit, oneshot::Sender<RedisResult<Outcome>>);

/// Handle to the commit batcher (and the early-reply script).
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Pending>,
    redis: ConnectionManager,
    settings: Arc<Settings>,
}

/// What every batch needs besides the commits.
struct Settings {
    script: Script,
    stream_script: Script,
    keys: Keys,
    consumer: String,
    reply_ttl_ms: u64,
    session_ttl_ms: u64,
}

impl Committer {
    /// Starts the batcher task on `redis`.
    pub fn start(
        redis: ConnectionManager,
        keys: Keys,
        consumer: String,
        reply_ttl_ms: u64,
        session_ttl_ms: u64,
    ) -> Committer {
        let settings = Settings {
            script: Script::new(&format!("{GROUP_SEND_LUA}\n{COMMIT_LUA}")),
            stream_script: Script::new(STREAM_LUA),
            keys,
            consumer,
            reply_ttl_ms,
            session_ttl_ms,
        };
        let settings = Arc::new(settings);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(redis.clone(), settings.clone(), rx));
        Committer { tx, redis, settings }
    }

    /// Commits one message (batched with whatever else is ready).
    pub async fn commit(&self, commit: Commit) -> RedisResult<Outcome> {
        let (done, outcome) = oneshot::channel();
        let closed = || RedisError::from((redis::ErrorKind::Client, "commit batcher stopped"));
        self.tx.send((commit, done)).map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }

    /// Appends one piece of a streamed HTTP response ahead of the commit;
    /// `false` when the entry is no longer ours (or already committed).
    pub async fn stream_reply(&self, piece: &StreamPiece<'_>) -> RedisResult<bool> {
        let settings = &self.settings;
        let sent: i64 = settings
            .stream_script
            .key(piece.stream)
            .key(settings.keys.reply_stream(piece.interface))
            .key(settings.keys.connection_seqs(piece.interface))
            .arg(WORKER_GROUP)
            .arg(&settings.consumer)
            .arg(piece.entry_id)
            .arg(piece.conn)
            .arg(piece.seq)
            .arg(piece.reply)
            .arg(settings.reply_ttl_ms)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(sent == 1)
    }
}

async fn run(redis: ConnectionManager, settings: Arc<Settings>, mut rx: mpsc::UnboundedReceiver<Pending>) {
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
        let mut redis = redis.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let result = commit_batch(&mut redis, &settings, &batch).await;
            answer(batch, result);
            drop(slot);
        });
    }
}

/// Tells every handler of a batch how its commit went.
fn answer(batch: Vec<Pending>, result: RedisResult<Vec<i64>>) {
    match result {
        Ok(codes) => {
            for ((_, done), code) in batch.into_iter().zip(codes.into_iter().chain(std::iter::repeat(0))) {
                let outcome = match code {
                    1 => Outcome::Committed,
                    2 => Outcome::Repeated,
                    _ => Outcome::NotOwned,
                };
                let _ = done.send(Ok(outcome));
            }
        }
        Err(error) => {
            // Each handler retries; messages committed before the error are
            // found acknowledged (not owned) on the retry.
            for (_, done) in batch {
                let _ = done.send(Err(error.clone()));
            }
        }
    }
}

async fn commit_batch(redis: &mut ConnectionManager, settings: &Settings, batch: &[Pending]) -> RedisResult<Vec<i64>> {
    let keys = &settings.keys;
    let mut invocation = settings.script.prepare_invoke();
    invocation
        .arg(WORKER_GROUP)
        .arg(&settings.consumer)
        .arg(keys.prefix())
        .arg(settings.reply_ttl_ms);
    for (commit, _) in batch {
        invocation
            .key(&commit.stream)
            .key(keys.reply_stream(&commit.interface))
            .key(keys.connection_seqs(&commit.interface))
            // An unused session still needs a key; nothing is written to it.
            .key(
                commit
                    .session
                    .as_ref()
                    .map_or_else(|| keys.session("-"), |s| s.key.clone()),
            )
            .key(keys.http_body(&commit.interface, commit.conn));
        invocation
            .arg(&commit.entry_id)
            .arg(commit.conn)
            .arg(commit.seq)
            .arg(commit.reply.as_deref().unwrap_or(b""))
            .arg(if commit.session.is_some() {
                settings.session_ttl_ms
            } else {
                0
            })
            .arg(if commit.forget { "1" } else { "0" });
        match &commit.body {
            BodyOp::Keep => invocation.arg("").arg(""),
            BodyOp::Append(chunk) => invocation.arg("append").arg(chunk.as_slice()),
            BodyOp::Delete => invocation.arg("delete").arg(""),
        };
        let (sets, deletes) = match &commit.session {
            Some(session) => (session.sets.as_slice(), session.deletes.as_slice()),
            None => (&[][..], &[][..]),
        };
        invocation.arg(sets.len());
        for (field, value) in sets {
            invocation.arg(field).arg(value);
        }
        invocation.arg(deletes.len());
        for field in deletes {
            invocation.arg(field);
        }
        invocation.arg(commit.group_sends.len());
        for (group, frame) in &commit.group_sends {
            for arg in group_send_args(group, frame) {
                invocation.arg(arg);
            }
        }
    }
    invocation.invoke_async(redis).await
}

/// Moves an entry that cannot be handled to the dead-letter stream and
/// acknowledges it, in one MULTI/EXEC. The dead-letter stream is capped.
pub async fn dead_letter(
    con: &mut ConnectionManager,
    keys: &Keys,
    stream: &str,
    entry: &StreamEntry,
    consumer: &str,
    error: &str,
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    let add = pipe
        .cmd("XADD")
        .arg(keys.dead_letter())
        .arg("MAXLEN")
        .arg("~")
        .arg(100_000)
        .arg("*")
        .arg("stream")
        .arg(stream)
        .arg("id")
        .arg(&entry.id)
        .arg("error")
        .arg(error)
        .arg("consumer")
        .arg(consumer);
    for (name, value) in &entry.fields {
        let mut field = b"field:".to_vec();
        field.extend_from_slice(name);
        add.arg(field).arg(value);
    }
    pipe.ignore();
    pipe.cmd("XACK").arg(stream).arg(WORKER_GROUP).arg(&entry.id).ignore();
    pipe.query_async(con).await
}
