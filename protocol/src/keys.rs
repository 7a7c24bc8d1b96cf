//! Redis key naming, in one place.
//!
//! Every key starts with a configurable prefix so several deployments can share
//! one Redis. Keys carry a hash tag (`{…}`) wherever an atomic step touches
//! more than one of them: on a Redis Cluster a Lua script or MULTI/EXEC may
//! only touch keys of one hash slot, and the tag decides the slot. Three
//! placements follow (docs/protocol.md, "Redis keys"):
//!
//! - **per interface** (`{IFACE}`): its reply stream, the sequence table and
//!   stored HTTP bodies of its connections — one slot, one reader;
//! - **per channel shard** (`{CHANNEL:N}`): a channel's stream is split in
//!   shards so a busy channel spreads over the cluster's masters, while one
//!   connection always lands on one shard;
//! - **per group** (`{GROUP}`) and **per session** (`{ID}`): the keys one
//!   group send or one session write touches.
//!
//! On a single Redis the tags are just characters in the names.

use std::borrow::Cow;
use std::sync::Arc;

/// Consumer group that every worker of a channel joins.
pub const WORKER_GROUP: &str = "workers";

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Session fields whose name starts with this are Switchyard's own: a
/// connection's outbox (`~o:IFACE!CONN`), when the key expires (`~x`), the
/// outboxes of connections that are gone (`~c`). Consumers never see them and
/// cannot write them.
pub const SESSION_RESERVED: char = '~';

/// Builds every Redis key and pub/sub channel name Switchyard uses.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Shared: every message's context holds a copy.
    prefix: Arc<str>,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into().into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One shard of a channel's stream: `P:chan:{chat:0}`.
    pub fn channel_stream(&self, channel: &str, shard: u16) -> String {
        format!("{}:chan:{{{}:{}}}", self.prefix, channel, shard)
    }

    /// Every shard stream of a channel with `shards` shards.
    pub fn channel_streams(&self, channel: &str, shards: u16) -> Vec<String> {
        (0..shards.max(1)).map(|s| self.channel_stream(channel, s)).collect()
    }

    /// The entry of a shard stream that a worker handles alone after a crash
    /// (the one that may have killed the previous worker), in the stream's
    /// slot: `P:suspect:{CHANNEL:N}`, a string with the entry id.
    pub fn suspect(&self, stream: &str) -> String {
        let tagged = stream
            .strip_prefix(&*self.prefix)
            .and_then(|rest| rest.strip_prefix(":chan:"))
            .unwrap_or(stream);
        format!("{}:suspect:{}", self.prefix, tagged)
    }

    /// The channel and shard back from a shard stream key.
    pub fn channel_of_stream<'a>(&self, stream: &'a str) -> Option<(&'a str, u16)> {
        let inner = stream
            .strip_prefix(&*self.prefix)?
            .strip_prefix(":chan:{")?
            .strip_suffix('}')?;
        let (channel, shard) = inner.rsplit_once(':')?;
        Some((channel, shard.parse().ok()?))
    }

    /// The number of shards interfaces append to, per channel (a hash); workers
    /// read every shard up to the largest number announced.
    pub fn channel_shards(&self) -> String {
        format!("{}:channelshards", self.prefix)
    }

    /// An interface's reply stream: `P:reply:{if-1a2b}`.
    pub fn reply_stream(&self, interface: &str) -> String {
        // Joined at the right size: the hot keys are made for every message, and
        // `format!` grows its string several times.
        [&self.prefix, ":reply:{", interface, "}"].concat()
    }

    /// Last committed sequence number per HTTP request of one interface (a
    /// hash): guards the appends to stored request bodies.
    pub fn connection_seqs(&self, interface: &str) -> String {
        format!("{}:connseq:{{{}}}", self.prefix, interface)
    }

    /// The request body received so far for an HTTP request (a string that
    /// workers `APPEND` chunks to), in the interface's slot: `P:httpbody:{if-1a2b}:7`.
    pub fn http_body(&self, interface: &str, conn: u64) -> String {
        format!("{}:httpbody:{{{}}}:{}", self.prefix, interface, conn)
    }

    /// A session hash, keyed by `session_uuid` or by reply address: `P:session:{ID}`.
    /// Its fields starting with [`SESSION_RESERVED`] are Switchyard's (the
    /// outboxes, the expiry; `commit_session.lua`), hidden from consumers.
    pub fn session(&self, id: &str) -> String {
        [&self.prefix, ":session:{", &tag(id), "}"].concat()
    }

    /// The outcome of a connection's last message that wrote its session, when
    /// it is too large to keep in the session hash (field `~o:IFACE!CONN`), in
    /// the session's slot: `P:outbox:{ID}:IFACE!CONN`. Written in the same
    /// atomic step as the session, it makes that step happen once and lets a
    /// worker that takes over finish the message with the original reply.
    pub fn outbox(&self, session_id: &str, reply: &str) -> String {
        format!("{}:outbox:{{{}}}:{}", self.prefix, tag(session_id), reply)
    }

    /// The pub/sub channel a group's broadcasts are published on: `P:group:{lobby}`
    /// (sharded pub/sub on a cluster).
    pub fn group_channel(&self, group: &str) -> String {
        format!("{}:group:{{{}}}", self.prefix, tag(group))
    }

    /// Sorted set of a group's members (reply addresses) scored by expiry ms:
    /// presence counts, and cleanup after an interface that died.
    pub fn group_members(&self, group: &str) -> String {
        format!("{}:groupmembers:{{{}}}", self.prefix, tag(group))
    }

    /// The pattern `SCAN` matches member sets with.
    pub fn group_members_pattern(&self) -> String {
        format!("{}:groupmembers:*", self.prefix)
    }

    /// The group name back from a member-set key.
    pub fn group_of_members_key<'a>(&self, key: &'a str) -> Option<Cow<'a, str>> {
        let tagged = key.strip_prefix(&*self.prefix)?.strip_prefix(":groupmembers:")?;
        untag(tagged)
    }

    /// Per-group broadcast sequence counter.
    pub fn group_seq(&self, group: &str) -> String {
        format!("{}:groupseq:{{{}}}", self.prefix, tag(group))
    }

    /// The group's epoch: names its numbering, made anew whenever the counter
    /// starts again (docs/protocol.md, "Group history and recovery").
    pub fn group_epoch(&self, group: &str) -> String {
        format!("{}:groupepoch:{{{}}}", self.prefix, tag(group))
    }

    /// The group's capped history: a stream of its last broadcasts, fields `s`
    /// (sequence number) and `m` (the msgpack published).
    pub fn group_history(&self, group: &str) -> String {
        format!("{}:grouphistory:{{{}}}", self.prefix, tag(group))
    }

    /// The last sequence number of connection `reply` whose sends to `group`
    /// went out: makes a committed message's group sends happen once.
    pub fn group_sent(&self, group: &str, reply: &str) -> String {
        format!("{}:groupsent:{{{}}}:{}", self.prefix, tag(group), reply)
    }

    /// Entries that could not be decoded end up here, with the reason.
    pub fn dead_letter(&self) -> String {
        format!("{}:deadletter", self.prefix)
    }

    /// A worker's liveness key (expires when the worker stops refreshing it).
    pub fn worker_alive(&self, consumer: &str) -> String {
        format!("{}:worker:{}", self.prefix, consumer)
    }

    /// Sorted set of worker consumer names, scored by last-seen milliseconds.
    pub fn workers_index(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// An interface's liveness key with its live figures.
    pub fn interface_alive(&self, interface: &str) -> String {
        format!("{}:interface:{}", self.prefix, interface)
    }

    /// Sorted set of interface ids, scored by last-seen milliseconds.
    pub fn interfaces_index(&self) -> String {
        format!("{}:interfaces", self.prefix)
    }

    /// The groups an interface has members in (a set of group names), in the
    /// interface's own slot: `P:ifacegroups:{IFACE}`. It tells whoever sweeps up
    /// after the interface died which member sets to clean (`sweep.rs`).
    pub fn interface_groups(&self, interface: &str) -> String {
        format!("{}:ifacegroups:{{{}}}", self.prefix, tag(interface))
    }

    /// Lock that lets exactly one worker of the pool run a periodic task per tick.
    pub fn tick_lock(&self, task: &str, tick: u64) -> String {
        format!("{}:tick:{}:{}", self.prefix, task, tick)
    }
}

/// The text inside a key's `{…}`: the name itself when it can serve as a hash
/// tag, else `~` + a hash of it followed by `}` and the name (so the key stays
/// unique while every key of the name still lands in one slot). Names that
/// cannot serve are empty or hold a brace.
fn tag(name: &str) -> Cow<'_, str> {
    if is_plain(name) {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("~{:016x}}}{name}", fnv1a(name.as_bytes())))
    }
}

/// The name back from `tag(name)` followed by the closing brace.
fn untag(tagged: &str) -> Option<Cow<'_, str>> {
    let inner = tagged.strip_prefix('{')?;
    if let Some(rest) = inner.strip_prefix('~') {
        // `~HASH}NAME}`: the name is what follows the first brace.
        let (_, name) = rest.split_once('}')?;
        return Some(Cow::Owned(name.strip_suffix('}')?.to_owned()));
    }
    Some(Cow::Borrowed(inner.strip_suffix('}')?))
}

/// Whether a name can sit between braces as a hash tag as it is.
pub fn is_plain(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('~') && !name.contains(['{', '}'])
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The hash slot of a key, as Redis Cluster computes it: CRC16 (XMODEM) of the
/// hash tag (the text between the first `{` and the next `}`, if not empty)
/// or of the whole key, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % SLOTS
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suspect_key_shares_its_stream_slot() {
        let keys = Keys::new("sy");
        let stream = keys.channel_stream("chat", 3);
        assert_eq!(keys.suspect(&stream), "sy:suspect:{chat:3}");
        assert_eq!(slot(keys.suspect(&stream).as_bytes()), slot(stream.as_bytes()));
    }

    #[test]
    fn channel_streams_round_trip() {
        let keys = Keys::new("sy");
        let stream = keys.channel_stream("chat", 2);
        assert_eq!(stream, "sy:chan:{chat:2}");
        assert_eq!(keys.channel_of_stream(&stream), Some(("chat", 2)));
        assert_eq!(
            keys.channel_of_stream("sy:chan:{http.example:0}"),
            Some(("http.example", 0))
        );
        assert_eq!(keys.channel_of_stream("other:chan:{chat:0}"), None);
        assert_eq!(keys.channel_of_stream("sy:chan:{chat}"), None);
        assert_eq!(keys.channel_streams("echo", 0), vec!["sy:chan:{echo:0}".to_owned()]);
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on a real Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"sw:group:{g1}"), 13519);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"123456789"), 0x31c3 % SLOTS);
        assert_eq!(slot(b"somekey"), 11058);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn a_group_keeps_its_keys_in_one_slot_whatever_its_name() {
        let keys = Keys::new("sy");
        for group in ["lobby", "", "a{b", "}x", "{y}", "~sneaky", "room:1"] {
            let channel = keys.group_channel(group);
            let slots = [
                slot(channel.as_bytes()),
                slot(keys.group_seq(group).as_bytes()),
                slot(keys.group_epoch(group).as_bytes()),
                slot(keys.group_history(group).as_bytes()),
                slot(keys.group_members(group).as_bytes()),
                slot(keys.group_sent(group, "if!1").as_bytes()),
            ];
            assert!(slots.iter().all(|s| *s == slots[0]), "{group:?}: {slots:?}");
            let members = keys.group_members(group);
            assert_eq!(keys.group_of_members_key(&members).as_deref(), Some(group), "{members}");
        }
        assert_ne!(keys.group_channel("a{b"), keys.group_channel("a{c"));
        assert_eq!(keys.group_channel("lobby"), "sy:group:{lobby}");
    }

    #[test]
    fn a_session_and_its_outboxes_share_a_slot() {
        let keys = Keys::new("sy");
        for id in ["abc-123", "if-1!42"] {
            assert_eq!(
                slot(keys.session(id).as_bytes()),
                slot(keys.outbox(id, "if-2!7").as_bytes())
            );
        }
        assert_eq!(keys.session("abc"), "sy:session:{abc}");
    }
}
