//! Group sends: one publish per broadcast, whatever the group's size, and the
//! group's history, so that no broadcast is lost without someone knowing.
//!
//! Each broadcast carries a per-group sequence number and the group's *epoch*
//! (which changes whenever the numbering starts again), taken in the same
//! atomic step that appends it to the group's capped history and publishes it.
//! Pub/sub alone is fire-and-forget: an interface re-subscribing after a Redis
//! blip, or a client reconnecting, would miss what was published meanwhile.
//! With the history an interface reads what it missed ([`read_history`]), and
//! a connection can join "since seq S of epoch E"; a position the history can
//! no longer serve is reported, never silently skipped.
//!
//! Every key of a group shares the group's hash slot (`{GROUP}`), so the send
//! is one script on one node even on a Redis Cluster, where the publish is a
//! sharded one (`SPUBLISH`: only the node owning the slot and its replicas
//! carry it; a plain `PUBLISH` would go through every node of the cluster).
//!
//! The Lua function (`protocol/lua/group_send.lua`) is shared by the worker's
//! commit (group sends that take effect when a message is committed, each once
//! per message, see `worker/src/commit.rs`) and by standalone sends (periodic
//! tasks, `switchyard send-group`).

use std::sync::OnceLock;
use std::time::Duration;

use redis::{RedisResult, Script, Value};

use crate::redis_conn::Redis;
use crate::{Keys, Payload};

/// How much of each group's broadcasts a send keeps (`--group-history`,
/// `--group-history-ttl`). A sender's setting: senders with different
/// settings are safe (a reader checks that the entries it needs are all there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Most broadcasts kept per group; 0: none (pub/sub only).
    pub length: u64,
    /// Broadcasts older than this are dropped at the next send, and the whole
    /// history expires this long after the group's last send; zero: no limit.
    pub ttl: Duration,
}

impl Default for History {
    fn default() -> History {
        History {
            length: 100,
            ttl: Duration::from_secs(300),
        }
    }
}

impl History {
    /// No history: every broadcast is pub/sub only.
    pub const OFF: History = History {
        length: 0,
        ttl: Duration::ZERO,
    };

    /// The `history` and `history_ttl` arguments of the Lua function.
    pub fn args(&self) -> (u64, u64) {
        (self.length, self.ttl.as_millis() as u64)
    }
}

/// A place in a group's numbering: broadcast `seq` of `epoch`. `("", 0)` is
/// "before the first broadcast of whatever epoch comes".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
}

impl Position {
    pub fn new(epoch: impl Into<String>, seq: u64) -> Position {
        Position {
            epoch: epoch.into(),
            seq,
        }
    }
}

/// Why a position cannot be recovered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecoverable {
    /// The group's epoch is another one: its history was lost or reset.
    Epoch,
    /// The history no longer holds every broadcast after the position.
    Trimmed,
    /// The position is beyond the group's last broadcast.
    Ahead,
}

impl Unrecoverable {
    /// The `reason` of a `recover_failed` frame.
    pub fn as_str(self) -> &'static str {
        match self {
            Unrecoverable::Epoch => "epoch",
            Unrecoverable::Trimmed => "trimmed",
            Unrecoverable::Ahead => "ahead",
        }
    }
}

/// What [`read_history`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Where the group's numbering stands (its epoch and last `seq`).
    pub now: Position,
    /// The broadcasts after the position asked for (msgpack, as published),
    /// in order; or why they cannot be had.
    pub broadcasts: Result<Vec<Vec<u8>>, Unrecoverable>,
}

fn history_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(crate::scripts::GROUP_HISTORY))
}

fn send_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&crate::scripts::group_send()))
}

/// Reads where a group stands and, with `entries`, its broadcasts after
/// `since` (one script in the group's slot, `protocol/lua/group_history.lua`).
pub async fn read_history(
    con: &mut Redis,
    keys: &Keys,
    group: &str,
    since: &Position,
    entries: bool,
) -> RedisResult<Recovery> {
    let answer: Value = history_script()
        .key(keys.group_seq(group))
        .key(keys.group_epoch(group))
        .key(keys.group_history(group))
        .arg(&since.epoch)
        .arg(since.seq)
        .arg(if entries { "1" } else { "0" })
        .invoke_async(con)
        .await?;
    parse_history(answer)
}

/// Where a group's numbering stands: its epoch and last `seq` (a worker
/// commits a plain join with it, so the member misses nothing sent after).
pub async fn position(con: &mut Redis, keys: &Keys, group: &str) -> RedisResult<Position> {
    Ok(read_history(con, keys, group, &Position::default(), false).await?.now)
}

/// The script's answer `[status, epoch, top, m…]`.
fn parse_history(answer: Value) -> RedisResult<Recovery> {
    let bad = |what: &str| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected group history answer",
            what.to_owned(),
        ))
    };
    let bytes = |value: Value| match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        other => Err(bad(&format!("{other:?}"))),
    };
    let Value::Array(items) = answer else {
        return Err(bad("not an array"));
    };
    let mut items = items.into_iter();
    let mut next = |what: &str| items.next().ok_or_else(|| bad(what));
    let status = bytes(next("no status")?)?;
    let epoch = String::from_utf8(bytes(next("no epoch")?)?).map_err(|_| bad("epoch is not UTF-8"))?;
    let top = match next("no top")? {
        Value::Int(n) if n >= 0 => n as u64,
        other => return Err(bad(&format!("top: {other:?}"))),
    };
    let broadcasts = match status.as_slice() {
        b"ok" => Ok(items.map(bytes).collect::<RedisResult<Vec<Vec<u8>>>>()?),
        b"epoch" => Err(Unrecoverable::Epoch),
        b"trimmed" => Err(Unrecoverable::Trimmed),
        b"ahead" => Err(Unrecoverable::Ahead),
        other => return Err(bad(&String::from_utf8_lossy(other))),
    };
    Ok(Recovery {
        now: Position::new(epoch, top),
        broadcasts,
    })
}

/// What a broadcast delivers to each member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupFrame {
    Text(String),
    Bytes(Vec<u8>),
    /// A JSON object, delivered as text with the broadcast's sequence number
    /// added as `"seq"` — so a client can notice that it missed one.
    JsonWithSeq(String),
}

impl From<Payload> for GroupFrame {
    fn from(payload: Payload) -> GroupFrame {
        match (payload.text, payload.bytes) {
            (Some(text), _) => GroupFrame::Text(text),
            (None, Some(bytes)) => GroupFrame::Bytes(bytes.into_vec()),
            (None, None) => GroupFrame::Text(String::new()),
        }
    }
}

impl GroupFrame {
    /// The `kind` and `data` arguments of the Lua function.
    pub fn kind_and_data(&self) -> (&'static str, &[u8]) {
        match self {
            GroupFrame::Text(text) => ("t", text.as_bytes()),
            GroupFrame::Bytes(bytes) => ("b", bytes.as_slice()),
            GroupFrame::JsonWithSeq(json) => ("j", json.as_bytes()),
        }
    }
}

impl GroupFrame {
    /// Back from the script's `kind` and `data`; `None` for an unknown kind.
    pub fn from_kind_and_data(kind: &str, data: Vec<u8>) -> Option<GroupFrame> {
        let text = || String::from_utf8(data.clone()).ok();
        Some(match kind {
            "t" => GroupFrame::Text(text()?),
            "b" => GroupFrame::Bytes(data),
            "j" => GroupFrame::JsonWithSeq(text()?),
            _ => return None,
        })
    }
}

/// The publish command for a topology: sharded pub/sub on a cluster.
pub fn publish_command(cluster: bool) -> &'static str {
    if cluster {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}

/// The keys of a group send, in the order `group_send.lua` takes them: counter,
/// channel (declared as a key too: a cluster checks that a script stays within
/// one slot), epoch, history.
pub fn send_keys(keys: &Keys, group: &str) -> [String; 4] {
    [
        keys.group_seq(group),
        keys.group_channel(group),
        keys.group_epoch(group),
        keys.group_history(group),
    ]
}

/// Sends a frame to every member of a group, keeping it in the group's
/// history; returns the broadcast's sequence number.
pub async fn group_send(
    con: &mut Redis,
    keys: &Keys,
    history: History,
    group: &str,
    frame: &GroupFrame,
) -> RedisResult<u64> {
    let (kind, data) = frame.kind_and_data();
    let (length, ttl) = history.args();
    let mut invocation = send_script().prepare_invoke();
    for key in send_keys(keys, group) {
        invocation.key(key);
    }
    invocation
        .arg(publish_command(con.is_cluster()))
        .arg(group)
        .arg(kind)
        .arg(data)
        .arg(length)
        .arg(ttl)
        .invoke_async(con)
        .await
}
