//! Committing a handled message: all of it or none of it.
//!
//! One Lua script (atomic in Redis) does, for one stream entry:
//! 1. check that the entry is still pending **to this consumer** — if another
//!    worker claimed it meanwhile, this result is dropped (that worker's
//!    counts);
//! 2. check the connection's last committed sequence number — a repeated
//!    message (an interface retry) is only acknowledged;
//! 3. write the session changes, publish the group sends, append the reply
//!    with its `done` marker, record the sequence number, and XACK.
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
local disconnect, prefix = ARGV[9] == '1', ARGV[10]
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
if reply ~= '' then
  redis.call('XADD', KEYS[2], '*', 'm', reply)
  redis.call('PEXPIRE', KEYS[2], reply_ttl)
end
if disconnect then
  redis.call('HDEL', KEYS[3], conn)
else
  redis.call('HSET', KEYS[3], conn, seq)
  redis.call('PEXPIRE', KEYS[3], reply_ttl)
end
redis.call('XACK', KEYS[1], group, id)
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

/// One handled message, ready to commit.
pub struct Commit<'a> {
    pub stream: &'a str,
    pub entry_id: &'a str,
    pub interface: &'a str,
    pub conn: u64,
    pub seq: u64,
    /// Encoded reply; `None` when the connection is gone (disconnect).
    pub reply: Option<Vec<u8>>,
    pub disconnect: bool,
    /// Session key and its changes, when the session was used.
    pub session: Option<(String, Vec<(&'a str, &'a str)>, Vec<&'a str>)>,
    pub group_sends: &'a [(String, Payload)],
}

/// The loaded script (its SHA is computed once).
pub struct Committer {
    script: Script,
    keys: Keys,
    consumer: String,
    reply_ttl_ms: u64,
    session_ttl_ms: u64,
}

impl Committer {
    pub fn new(keys: Keys, consumer: String, reply_ttl_ms: u64, session_ttl_ms: u64) -> Committer {
        Committer {
            script: Script::new(&format!("{GROUP_SEND_LUA}\n{COMMIT_LUA}")),
            keys,
            consumer,
            reply_ttl_ms,
            session_ttl_ms,
        }
    }

    pub async fn commit(
        &self,
        con: &mut ConnectionManager,
        commit: &Commit<'_>,
    ) -> RedisResult<Outcome> {
        let session_key = commit.session.as_ref().map(|(key, _, _)| key.clone());
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(commit.stream)
            .key(self.keys.reply_stream(commit.interface))
            .key(self.keys.connection_seqs(commit.interface))
            // An unused session still needs a key in its slot; nothing is written to it.
            .key(session_key.unwrap_or_else(|| self.keys.session("-")))
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
            .arg(if commit.disconnect { "1" } else { "0" })
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
        let code: i64 = invocation.invoke_async(con).await?;
        Ok(match code {
            1 => Outcome::Committed,
            2 => Outcome::Repeated,
            _ => Outcome::NotOwned,
        })
    }
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
    pipe.cmd("XACK")
        .arg(stream)
        .arg(WORKER_GROUP)
        .arg(&entry.id)
        .ignore();
    pipe.query_async(con).await
}
