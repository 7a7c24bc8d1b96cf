//! Committing a handled message: all of it or none of it.
//!
//! One Lua script (atomic in Redis) does, for one stream entry:
//! 1. check that the entry is still pending **to this consumer** — if another
//!    worker claimed it meanwhile, this result is dropped (that worker's
//!    counts);
//! 2. check the connection's last committed sequence number — a repeated
//!    message (an interface retry) is only acknowledged;
//! 3. write the session changes, publish the group sends, append (or drop)
//!    the HTTP request body received so far, append the reply with its `done`
//!    marker, record the sequence number, and XACK.
//!
//! A streamed HTTP response sends its first pieces before that commit, each
//! through a smaller script ([`Committer::stream_reply`]) that checks the same
//! ownership and sequence conditions, so a worker that lost its entry to
//! another one stops streaming instead of mixing its output in.
//!
//! So a worker that dies mid-message leaves nothing behind, a slow worker whose
//! message was claimed cannot apply it a second time, and nothing is applied
//! twice. (On Redis Cluster these keys live on different slots; see
//! docs/protocol.md.)

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};
use switchyard_protocol::groups::{group_send_args, GROUP_SEND_LUA};
use switchyard_protocol::stream::StreamEntry;
use switchyard_protocol::{Keys, Payload, WORKER_GROUP};

const COMMIT_LUA: &str = r#"
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local conn, seq = ARGV[4], tonumber(ARGV[5])
local reply, reply_ttl, session_ttl = ARGV[6], ARGV[7], ARGV[8]
local forget, prefix = ARGV[9] == '1', ARGV[10]
local owned = redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer)
if #owned == 0 then return 0 end
local last = tonumber(redis.call('HGET', KEYS[3], conn) or '0')
if seq <= last then
  redis.call('XACK', KEYS[1], group, id)
  return 2
end
local i = 11
local n = tonumber(ARGV[i]); i = i + 1
if n > 0 then
  redis.call('HSET', KEYS[4], unpack(ARGV, i, i + 2 * n - 1))
  i = i + 2 * n
end
n = tonumber(ARGV[i]); i = i + 1
if n > 0 then
  redis.call('HDEL', KEYS[4], unpack(ARGV, i, i + n - 1))
  i = i + n
end
if session_ttl ~= '0' then redis.call('PEXPIRE', KEYS[4], session_ttl) end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  group_send(prefix, ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
local body_op = ARGV[i]
if body_op == 'append' then
  redis.call('APPEND', KEYS[5], ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[5], reply_ttl)
elseif body_op == 'delete' then
  redis.call('DEL', KEYS[5])
end
if reply ~= '' then
  redis.call('XADD', KEYS[2], '*', 'm', reply)
  redis.call('PEXPIRE', KEYS[2], reply_ttl)
end
if forget then
  redis.call('HDEL', KEYS[3], conn)
else
  redis.call('HSET', KEYS[3], conn, seq)
  redis.call('PEXPIRE', KEYS[3], reply_ttl)
end
redis.call('XACK', KEYS[1], group, id)
return 1
"#;

const STREAM_LUA: &str = r#"
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local conn, seq, reply, reply_ttl = ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local owned = redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer)
if #owned == 0 then return 0 end
local last = tonumber(redis.call('HGET', KEYS[3], conn) or '0')
if seq <= last then return 0 end
-- Resets the entry's idle time: a long response is not work left behind.
redis.call('XCLAIM', KEYS[1], group, consumer, 0, id, 'JUSTID')
redis.call('XADD', KEYS[2], '*', 'm', reply)
redis.call('PEXPIRE', KEYS[2], reply_ttl)
return 1
"#;

/// What the commit script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Another consumer owns the entry now; nothing was written.
    NotOwned,
    /// The sequence number was already committed; only acknowledged.
    Repeated,
}

/// A session key, the fields to set and the fields to delete.
pub type SessionWrites<'a> = (String, Vec<(&'a str, &'a str)>, Vec<&'a str>);

/// One handled message, ready to commit.
pub struct Commit<'a> {
    pub stream: &'a str,
    pub entry_id: &'a str,
    pub interface: &'a str,
    pub conn: u64,
    pub seq: u64,
    /// Encoded reply; `None` when the connection is gone (disconnect).
    pub reply: Option<Vec<u8>>,
    /// The connection is over (a disconnect, or an HTTP response sent
    /// whole): its sequence record is dropped instead of updated.
    pub forget: bool,
    /// What happens to the HTTP request body stored so far.
    pub body: BodyOp<'a>,
    /// Session key and its changes, when the session was used.
    pub session: Option<SessionWrites<'a>>,
    pub group_sends: &'a [(String, Payload)],
}

/// The HTTP request body kept in Redis between chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOp<'a> {
    Keep,
    /// Append a chunk (the request goes on).
    Append(&'a [u8]),
    /// Drop it (the request is answered or gone).
    Delete,
}

/// The loaded scripts (their SHAs are computed once).
pub struct Committer {
    script: Script,
    stream_script: Script,
    keys: Keys,
    consumer: String,
    reply_ttl_ms: u64,
    session_ttl_ms: u64,
}

impl Committer {
    pub fn new(keys: Keys, consumer: String, reply_ttl_ms: u64, session_ttl_ms: u64) -> Committer {
        Committer {
            script: Script::new(&format!("{GROUP_SEND_LUA}\n{COMMIT_LUA}")),
            stream_script: Script::new(STREAM_LUA),
            keys,
            consumer,
            reply_ttl_ms,
            session_ttl_ms,
        }
    }

    pub async fn commit(&self, con: &mut ConnectionManager, commit: &Commit<'_>) -> RedisResult<Outcome> {
        let session_key = commit.session.as_ref().map(|(key, _, _)| key.clone());
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(commit.stream)
            .key(self.keys.reply_stream(commit.interface))
            .key(self.keys.connection_seqs(commit.interface))
            // An unused session still needs a key in its slot; nothing is written to it.
            .key(session_key.unwrap_or_else(|| self.keys.session("-")))
            .key(self.keys.http_body(commit.interface, commit.conn))
            .arg(WORKER_GROUP)
            .arg(&self.consumer)
            .arg(commit.entry_id)
            .arg(commit.conn)
            .arg(commit.seq)
            .arg(commit.reply.as_deref().unwrap_or(b""))
            .arg(self.reply_ttl_ms)
            .arg(if commit.session.is_some() {
                self.session_ttl_ms
            } else {
                0
            })
            .arg(if commit.forget { "1" } else { "0" })
            .arg(self.keys.prefix());
        let (sets, deletes) = match &commit.session {
            Some((_, sets, deletes)) => (sets.as_slice(), deletes.as_slice()),
            None => (&[][..], &[][..]),
        };
        invocation.arg(sets.len());
        for (field, value) in sets {
            invocation.arg(*field).arg(*value);
        }
        invocation.arg(deletes.len());
        for field in deletes {
            invocation.arg(*field);
        }
        invocation.arg(commit.group_sends.len());
        for (group, payload) in commit.group_sends {
            for arg in group_send_args(group, payload) {
                invocation.arg(arg);
            }
        }
        match commit.body {
            BodyOp::Keep => invocation.arg(""),
            BodyOp::Append(chunk) => invocation.arg("append").arg(chunk),
            BodyOp::Delete => invocation.arg("delete"),
        };
        let code: i64 = invocation.invoke_async(con).await?;
        Ok(match code {
            1 => Outcome::Committed,
            2 => Outcome::Repeated,
            _ => Outcome::NotOwned,
        })
    }

    /// Appends one piece of a streamed HTTP response ahead of the commit;
    /// `false` when the entry is no longer ours (or already committed).
    pub async fn stream_reply(&self, con: &mut ConnectionManager, piece: &StreamPiece<'_>) -> RedisResult<bool> {
        let sent: i64 = self
            .stream_script
            .key(piece.stream)
            .key(self.keys.reply_stream(piece.interface))
            .key(self.keys.connection_seqs(piece.interface))
            .arg(WORKER_GROUP)
            .arg(&self.consumer)
            .arg(piece.entry_id)
            .arg(piece.conn)
            .arg(piece.seq)
            .arg(piece.reply)
            .arg(self.reply_ttl_ms)
            .invoke_async(con)
            .await?;
        Ok(sent == 1)
    }
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
