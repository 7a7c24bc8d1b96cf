//! The Lua scripts of the protocol, one file each in `protocol/lua/`.
//!
//! They are part of the contract, not of one binary: a worker written in
//! another language runs the same files (docs/protocol.md describes each
//! step). Every script touches the keys of one hash slot only, so each runs
//! on a Redis Cluster as on a single Redis — except [`commit_fused`], which a
//! worker uses on a single Redis only.

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

/// The last line of `commit_session.lua`, which runs its function over every message.
const COMMIT_SESSION_RETURN: &str = "return (commit_sessions(#KEYS / 2))";

/// Commit steps 1, 3 and 4 in one call, for a single Redis: the session
/// step's function, then the replies and acks of what it committed.
/// (This one script spans hash slots: never on a Redis Cluster.)
pub fn commit_fused() -> String {
    let session = COMMIT_SESSION.trim_end();
    // Fixed at build time, and `commit_session_ends_with_its_return` checks it.
    let function = session
        .strip_suffix(COMMIT_SESSION_RETURN)
        .expect("commit_session.lua ends with its return line");
    format!("{function}\n{}", include_str!("../lua/commit_fused.lua"))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_session_ends_with_its_return() {
        assert!(COMMIT_SESSION.trim_end().ends_with(COMMIT_SESSION_RETURN));
        let fused = commit_fused();
        assert!(
            !fused.contains(COMMIT_SESSION_RETURN),
            "the session step must not return early"
        );
        assert!(fused.contains("local function commit_sessions(count)"));
        assert!(fused.trim_end().ends_with("return results"));
    }
}
