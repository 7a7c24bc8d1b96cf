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

/// `group_send(prefix, group, kind, data)`: kind is `t` (text) or `b` (bytes).
/// Publishes a msgpack [`crate::GroupMessage`] and returns its sequence number.
pub const GROUP_SEND_LUA: &str = r#"
local function group_send(prefix, group, kind, data)
  local seq = redis.call('INCR', prefix .. ':groupseq:' .. group)
  local message = {v = 1, group = group, seq = seq}
  if kind == 't' then message['text'] = data else message['bytes'] = data end
  redis.call('PUBLISH', prefix .. ':group:' .. group, cmsgpack.pack(message))
  return seq
end
"#;

/// The arguments that describe one group send to the Lua function.
pub fn group_send_args(group: &str, payload: &Payload) -> [Vec<u8>; 3] {
    let (kind, data) = match (&payload.text, &payload.bytes) {
        (Some(text), _) => ("t", text.as_bytes().to_vec()),
        (None, Some(bytes)) => ("b", bytes.to_vec()),
        (None, None) => ("t", Vec::new()),
    };
    [group.as_bytes().to_vec(), kind.as_bytes().to_vec(), data]
}

/// Sends a frame to every member of a group; returns the broadcast's sequence number.
pub async fn group_send<C: ConnectionLike>(
    con: &mut C,
    keys: &Keys,
    group: &str,
    payload: &Payload,
) -> RedisResult<u64> {
    let script = redis::Script::new(&format!(
        "{GROUP_SEND_LUA}\nreturn group_send(ARGV[1], ARGV[2], ARGV[3], ARGV[4])"
    ));
    let [group, kind, data] = group_send_args(group, payload);
    script
        .arg(keys.prefix())
        .arg(group)
        .arg(kind)
        .arg(data)
        .invoke_async(con)
        .await
}
