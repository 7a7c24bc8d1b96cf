//! The channel layer on Redis streams: entries, reads, claims and trimming.
//!
//! redis-rs returns stream replies as nested [`redis::Value`]s; this module
//! turns them into [`StreamEntry`]s once, for both sides. Trimming lives here
//! too because its one rule matters to everybody: only entries that every
//! reader has acknowledged may go.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use crate::value::{int_of, into_bytes, into_items, into_text, items, text_of};

/// Name of the stream entry field that carries the msgpack payload.
pub const PAYLOAD_FIELD: &str = "m";

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    pub fn parse(text: &str) -> Option<EntryId> {
        let (ms, seq) = text.split_once('-')?;
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id greater than this one.
    pub fn next(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One stream entry: its id and its raw fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StreamEntry {
    /// The msgpack payload (field `m`), if the entry has one.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payloads().next()
    }

    /// Every msgpack payload (field `m`), in order: a reply stream entry holds
    /// the replies of one commit batch to one interface.
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.fields
            .iter()
            .filter(|(name, _)| name == PAYLOAD_FIELD.as_bytes())
            .map(|(_, value)| value.as_slice())
    }
}

/// Entries read from one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBatch {
    pub stream: String,
    pub entries: Vec<StreamEntry>,
}

/// Parses `[id, [field, value, …]]`; `None` for a deleted entry (nil). The reply is taken
/// apart, not copied: an entry's payload is the bytes redis-rs read.
fn parse_entry(value: Value) -> Option<StreamEntry> {
    let mut parts = into_items(value).into_iter();
    let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let mut fields = into_items(fields).into_iter();
    let mut pairs = Vec::with_capacity(fields.len() / 2);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if let (Some(name), Some(value)) = (into_bytes(name), into_bytes(value)) {
            pairs.push((name, value));
        }
    }
    Some(StreamEntry {
        id: into_text(id)?,
        fields: pairs,
    })
}

/// Parses a list of entries (as in XRANGE, XCLAIM); nil entries are skipped.
pub fn parse_entries(value: Value) -> Vec<StreamEntry> {
    into_items(value).into_iter().filter_map(parse_entry).collect()
}

/// Parses an XREAD / XREADGROUP reply (nil on timeout → empty).
pub fn parse_read_reply(value: Value) -> Vec<StreamBatch> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs,
        other => into_items(other)
            .into_iter()
            .filter_map(|pair| {
                let mut parts = into_items(pair).into_iter();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(stream), Some(entries), None) => Some((stream, entries)),
                    _ => None,
                }
            })
            .collect(),
    };
    pairs
        .into_iter()
        .filter_map(|(stream, entries)| {
            Some(StreamBatch {
                stream: into_text(stream)?,
                entries: parse_entries(entries),
            })
        })
        .collect()
}

/// Parses an XAUTOCLAIM reply: `[next-cursor, [entries…], [deleted ids…]]`.
pub fn parse_autoclaim_reply(value: Value) -> (String, Vec<StreamEntry>) {
    let mut parts = into_items(value).into_iter();
    let cursor = parts.next().and_then(into_text).unwrap_or_else(|| "0-0".into());
    let entries = parts.next().map(parse_entries).unwrap_or_default();
    (cursor, entries)
}

/// How many times an entry was handed out to the group's consumers
/// (`XPENDING` extended form: reads, re-reads of a pending list, claims);
/// `None` when it is not pending (acknowledged, or never delivered).
pub async fn delivery_count<C: ConnectionLike>(
    con: &mut C,
    stream: &str,
    group: &str,
    id: &str,
) -> RedisResult<Option<u64>> {
    let reply: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(id)
        .arg(id)
        .arg(1)
        .query_async(con)
        .await?;
    Ok(parse_delivery_count(&reply))
}

/// The delivery count of the first row of an extended `XPENDING` reply
/// (`[[id, consumer, idle ms, deliveries]]`).
pub fn parse_delivery_count(reply: &Value) -> Option<u64> {
    let row = items(reply).first()?;
    let count = int_of(items(row).get(3)?)?;
    u64::try_from(count).ok()
}

/// Creates the worker group on a channel stream (and the stream), if missing.
pub async fn ensure_group<C: ConnectionLike>(con: &mut C, stream: &str, group: &str) -> RedisResult<()> {
    let result: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(con)
        .await;
    match result {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Trims entries that the group has both delivered and acknowledged.
///
/// The cut is the oldest pending entry, or — with nothing pending — the entry
/// after the group's last delivered one. Entries at or after the cut are never
/// touched, so unacknowledged work survives. Returns the number removed.
pub async fn trim_acked<C: ConnectionLike>(con: &mut C, stream: &str, group: &str) -> RedisResult<u64> {
    let info = crate::xinfo::group(con, stream, group).await?;
    let Some(last_delivered) = info
        .and_then(|info| info.last_delivered)
        .and_then(|id| EntryId::parse(&id))
    else {
        return Ok(0);
    };
    let summary: Value = redis::cmd("XPENDING").arg(stream).arg(group).query_async(con).await?;
    let oldest_pending = items(&summary)
        .get(1)
        .and_then(text_of)
        .and_then(|id| EntryId::parse(&id));
    let cut = oldest_pending
        .unwrap_or(last_delivered.next())
        .min(last_delivered.next());
    if cut == EntryId::ZERO {
        return Ok(0);
    }
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg("~")
        .arg(cut.to_string())
        .query_async(con)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn delivery_count_from_xpending() {
        let row = Value::Array(vec![bulk("5-1"), bulk("worker-a"), Value::Int(1200), Value::Int(6)]);
        assert_eq!(parse_delivery_count(&Value::Array(vec![row])), Some(6));
        assert_eq!(parse_delivery_count(&Value::Array(Vec::new())), None);
        assert_eq!(parse_delivery_count(&Value::Nil), None);
    }

    #[test]
    fn entry_ids_order_and_step() {
        let a = EntryId::parse("5-1").unwrap();
        let b = EntryId::parse("5-2").unwrap();
        let c = EntryId::parse("6-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.next(), b);
        assert_eq!(EntryId::parse("nope"), None);
    }

    #[test]
    fn parses_read_replies() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("sy:chan:{chat}"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("m"), bulk("payload")])]),
                Value::Nil,
                Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("x"), bulk("y")])]),
            ]),
        ])]);
        let batches = parse_read_reply(reply);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].stream, "sy:chan:{chat}");
        assert_eq!(batches[0].entries.len(), 2);
        assert_eq!(batches[0].entries[0].payload(), Some(&b"payload"[..]));
        assert_eq!(batches[0].entries[1].payload(), None);
        assert!(parse_read_reply(Value::Nil).is_empty());
    }
}
