//! The Lua scripts of the protocol, one file each in `protocol/lua/`.
//!
//! They are part of the contract, not of one binary: a worker written in
//! another language runs the same files (docs/protocol.md describes each
//! step). Every script touches the keys of one hash slot only, so each runs
//! on a Redis Cluster as on a single Redis.

/// The `group_send(seq_key, channel, epoch_key, history_key, publish, group,
/// kind, data, history, history_ttl)` function.
pub const GROUP_SEND_FUNCTION: &str = include_str!("../lua/group_send.lua");

/// A standalone group send (periodic tasks, `switchyard send-group`).
/// KEYS: group counter, channel, epoch, history. ARGV: publish command, group,
/// kind, data, history length, history TTL ms.
pub fn group_send() -> String {
    format!(
        "{GROUP_SEND_FUNCTION}\nreturn group_send(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])"
    )
}

/// Where a group's numbering stands and the broadcasts after a position
/// (interfaces: their own recovery and a connection's join "since").
pub const GROUP_HISTORY: &str = include_str!("../lua/group_history.lua");

/// Commit step 1: a message's session writes, once, with its outbox.
pub const COMMIT_SESSION: &str = include_str!("../lua/commit_session.lua");

/// Commit step 2: a message's group sends, once.
pub fn commit_groups() -> String {
    format!("{GROUP_SEND_FUNCTION}\n{}", include_str!("../lua/commit_groups.lua"))
}

/// Commit step 3: replies, and the HTTP request body kept between chunks.
pub const COMMIT_REPLY: &str = include_str!("../lua/commit_reply.lua");

/// Before each early piece of a streamed response: is the entry still ours?
pub const STREAM_OWNER: &str = include_str!("../lua/stream_owner.lua");

/// Records a channel's shard count (the largest announced wins).
pub const ANNOUNCE_SHARDS: &str = include_str!("../lua/announce_shards.lua");

/// Removes one interface's members from a group's member set (the sweep after it died).
/// KEYS: the member set. ARGV: `IFACE!`.
pub const SWEEP_MEMBERS: &str = include_str!("../lua/sweep_members.lua");

/// Drops a swept interface from the interfaces index unless it was seen again.
/// KEYS: the index. ARGV: interface id, the cutoff (ms) it was swept at.
pub const FORGET_INTERFACE: &str = include_str!("../lua/forget_interface.lua");

/// Replaces an interface's group set in one step (its membership refresh).
/// KEYS: the set. ARGV: expiry ms, the group names.
pub const REPLACE_GROUPS: &str = include_str!("../lua/replace_groups.lua");
