//! Group sends: one publish per broadcast, whatever the group's size.
//!
//! Each broadcast carries a per-group sequence number taken from a Redis
//! counter in the same atomic step, so a member can notice a gap. Every key of
//! a group shares the group's hash slot (`{GROUP}`), so that step is one script
//! on one node even on a Redis Cluster, where the publish is a sharded one
//! (`SPUBLISH`: only the node owning the slot and its replicas carry it; a plain
//! `PUBLISH` would go through every node of the cluster).
//!
//! The Lua function (`protocol/lua/group_send.lua`) is shared by the worker's
//! commit (group sends that take effect when a message is committed, each once
//! per message, see `worker/src/commit.rs`) and by standalone sends (periodic
//! tasks, `switchyard send-group`).

use redis::RedisResult;

use crate::redis_conn::Redis;
use crate::{Keys, Payload};

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

/// Sends a frame to every member of a group; returns the broadcast's sequence
/// number.
pub async fn group_send(con: &mut Redis, keys: &Keys, group: &str, frame: &GroupFrame) -> RedisResult<u64> {
    let script = redis::Script::new(&crate::scripts::group_send());
    let (kind, data) = frame.kind_and_data();
    script
        // The channel is declared as a key too: it shares the counter's slot,
        // and a cluster checks that a script stays within one slot.
        .key(keys.group_seq(group))
        .key(keys.group_channel(group))
        .arg(publish_command(con.is_cluster()))
        .arg(group)
        .arg(kind)
        .arg(data)
        .invoke_async(con)
        .await
}
