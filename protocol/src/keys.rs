//! Redis key naming, in one place.
//!
//! Every key starts with a configurable prefix so several deployments can share
//! one Redis. Channel and reply streams carry a hash tag (`{…}`) so that a Redis
//! Cluster spreads channels over nodes while the keys of one channel stay
//! together.

/// Builds every Redis key and pub/sub channel name Switchyard uses.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream a channel's messages are appended to: `P:chan:{chat}`.
    pub fn channel_stream(&self, channel: &str) -> String {
        format!("{}:chan:{{{}}}", self.prefix, channel)
    }

    /// The channel name back from a channel stream key.
    pub fn channel_of_stream<'a>(&self, stream: &'a str) -> Option<&'a str> {
        stream
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":chan:{")?
            .strip_suffix('}')
    }

    /// An interface's reply stream: `P:reply:{if-1a2b}`.
    pub fn reply_stream(&self, interface: &str) -> String {
        format!("{}:reply:{{{}}}", self.prefix, interface)
    }

    /// Last committed sequence number per connection of one interface (a hash).
    pub fn connection_seqs(&self, interface: &str) -> String {
        format!("{}:connseq:{{{}}}", self.prefix, interface)
    }

    /// The request body received so far for an HTTP request (a string that
    /// workers `APPEND` chunks to), in the interface's slot: `P:httpbody:{if-1a2b}:7`.
    pub fn http_body(&self, interface: &str, conn: u64) -> String {
        format!("{}:httpbody:{{{}}}:{}", self.prefix, interface, conn)
    }

    /// A session hash, keyed by `session_uuid` or by reply address.
    pub fn session(&self, id: &str) -> String {
        format!("{}:session:{}", self.prefix, id)
    }

    /// The pub/sub channel a group's broadcasts are published on.
    pub fn group_channel(&self, group: &str) -> String {
        format!("{}:group:{}", self.prefix, group)
    }

    /// Sorted set of a group's members (reply addresses) scored by expiry ms:
    /// presence counts, and cleanup after an interface that died.
    pub fn group_members(&self, group: &str) -> String {
        format!("{}:groupmembers:{}", self.prefix, group)
    }

    /// The group name back from a member-set key.
    pub fn group_of_members_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix(":groupmembers:")
    }

    /// Per-group broadcast sequence counter.
    pub fn group_seq(&self, group: &str) -> String {
        format!("{}:groupseq:{}", self.prefix, group)
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

    /// Lock that lets exactly one worker of the pool run a periodic task per tick.
    pub fn tick_lock(&self, task: &str, tick: u64) -> String {
        format!("{}:tick:{}:{}", self.prefix, task, tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_stream_round_trips() {
        let keys = Keys::new("sy");
        let stream = keys.channel_stream("chat");
        assert_eq!(stream, "sy:chan:{chat}");
        assert_eq!(keys.channel_of_stream(&stream), Some("chat"));
        assert_eq!(keys.channel_of_stream("other:chan:{chat}"), None);
    }
}
