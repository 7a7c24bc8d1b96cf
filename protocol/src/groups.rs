//! Group sends: one PUBLISH per broadcast, whatever the group's size.
//!
//! Each broadcast carries a per-group sequence number taken from a Redis
//! counter in the same atomic step, so a member can notice a gap. The Lua
//! function below is shared by the worker's commit script (group sends that
//! take effect only when a message is committed) and by standalone sends
//! (periodic tasks, `switchyard send-group`).

use redis::aio::ConnectionLike;
use redis::RedisResult;

use crate::{Keys, Payload};

/// `group_send(prefix, group, kind, data)`: kind is `t` (text), `b` (bytes) or
/// `j` (a JSON object sent as text, with the sequence number added as `seq`).
/// Publishes a msgpack [`crate::GroupMessage`] and returns its sequence number.
pub const GROUP_SEND_LUA: &str = r#"
local function group_send(prefix, group, kind, data)
  local seq = redis.call('INCR', prefix .. ':groupseq:' .. group)
  local message = {v = 1, group = group, seq = seq}
  if kind == 'j' then
    local ok, object = pcall(cjson.decode, data)
    if ok and type(object) == 'table' then
      object['seq'] = seq
      data = cjson.encode(object)
    end
    kind = 't'
  end
  if kind == 't' then message['text'] = data else message['bytes'] = data end
  redis.call('PUBLISH', prefix .. ':group:' .. group, cmsgpack.pack(message))
  return seq
end
"#;

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

/// The arguments that describe one group send to the Lua function.
pub fn group_send_args(group: &str, frame: &GroupFrame) -> [Vec<u8>; 3] {
    let (kind, data) = match frame {
        GroupFrame::Text(text) => ("t", text.as_bytes()),
        GroupFrame::Bytes(bytes) => ("b", bytes.as_slice()),
        GroupFrame::JsonWithSeq(json) => ("j", json.as_bytes()),
    };
    [group.as_bytes().to_vec(), kind.as_bytes().to_vec(), data.to_vec()]
}

/// Sends a frame to every member of a group; returns the broadcast's sequence number.
pub async fn group_send<C: ConnectionLike>(
    con: &mut C,
    keys: &Keys,
    group: &str,
    frame: &GroupFrame,
) -> RedisResult<u64> {
    let script = redis::Script::new(&format!(
        "{GROUP_SEND_LUA}\nreturn group_send(ARGV[1], ARGV[2], ARGV[3], ARGV[4])"
    ));
    let [group, kind, data] = group_send_args(group, frame);
    script
        .arg(keys.prefix())
        .arg(group)
        .arg(kind)
        .arg(data)
        .invoke_async(con)
        .await
}
