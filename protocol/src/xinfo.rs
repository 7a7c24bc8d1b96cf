//! What Redis says about a stream's consumer groups and their consumers
//! (`XINFO GROUPS`, `XINFO CONSUMERS`), parsed once.
//!
//! Trimming needs a group's last-delivered id, the worker's backstop needs
//! each consumer's pending count and idle time, `switchyard status` and the
//! chaos test need a group's lag and pending count. The replies are maps (RESP3)
//! or flat name/value arrays (RESP2) whose fields vary with the Redis version;
//! this module reads them into plain structs so nobody else does.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use crate::value::{fields, items, text_of};

/// One consumer group of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    /// Delivered to a consumer and not yet acknowledged.
    pub pending: u64,
    /// The last entry handed to a consumer (`0-0` before the first).
    pub last_delivered: Option<String>,
    /// Entries not yet delivered, as Redis counts them (`None` when it cannot
    /// tell, e.g. after some trims, and absent before Redis 7).
    pub lag: Option<u64>,
}

/// One consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    /// Entries it holds, not yet acknowledged.
    pub pending: u64,
    /// Milliseconds since it last read or claimed.
    pub idle_ms: u64,
}

/// Parses an `XINFO GROUPS` reply; malformed groups are skipped.
pub fn parse_groups(reply: &Value) -> Vec<GroupInfo> {
    items(reply)
        .iter()
        .filter_map(|group| {
            let fields = fields(group);
            let text = |name: &str| fields.iter().find(|(k, _)| k == name).and_then(|(_, v)| text_of(v));
            let number = |name: &str| text(name).and_then(|t| t.parse::<u64>().ok());
            Some(GroupInfo {
                name: text("name")?,
                pending: number("pending").unwrap_or(0),
                last_delivered: text("last-delivered-id"),
                lag: number("lag"),
            })
        })
        .collect()
}

/// Parses an `XINFO CONSUMERS` reply; malformed consumers are skipped.
pub fn parse_consumers(reply: &Value) -> Vec<ConsumerInfo> {
    items(reply)
        .iter()
        .filter_map(|consumer| {
            let fields = fields(consumer);
            let text = |name: &str| fields.iter().find(|(k, _)| k == name).and_then(|(_, v)| text_of(v));
            let number = |name: &str| text(name).and_then(|t| t.parse::<u64>().ok());
            Some(ConsumerInfo {
                name: text("name")?,
                pending: number("pending")?,
                idle_ms: number("idle")?,
            })
        })
        .collect()
}

/// The consumer groups of `stream` (an error if the stream does not exist).
pub async fn groups<C: ConnectionLike>(con: &mut C, stream: &str) -> RedisResult<Vec<GroupInfo>> {
    let reply: Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(con).await?;
    Ok(parse_groups(&reply))
}

/// One consumer group of `stream`, if it exists.
pub async fn group<C: ConnectionLike>(con: &mut C, stream: &str, name: &str) -> RedisResult<Option<GroupInfo>> {
    Ok(groups(con, stream).await?.into_iter().find(|g| g.name == name))
}

/// The consumers of `group` on `stream`.
pub async fn consumers<C: ConnectionLike>(con: &mut C, stream: &str, group: &str) -> RedisResult<Vec<ConsumerInfo>> {
    let reply: Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(con)
        .await?;
    Ok(parse_consumers(&reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn reads_groups_in_both_spellings() {
        let flat = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("workers"),
            bulk("pending"),
            Value::Int(2),
            bulk("last-delivered-id"),
            bulk("7-3"),
            bulk("lag"),
            Value::Nil,
        ])]);
        let map = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("workers")),
            (bulk("pending"), Value::Int(2)),
            (bulk("last-delivered-id"), bulk("7-3")),
            (bulk("lag"), Value::Int(5)),
        ])]);
        let expected = GroupInfo {
            name: "workers".into(),
            pending: 2,
            last_delivered: Some("7-3".into()),
            lag: None,
        };
        assert_eq!(parse_groups(&flat), vec![expected.clone()]);
        assert_eq!(
            parse_groups(&map),
            vec![GroupInfo {
                lag: Some(5),
                ..expected
            }]
        );
        assert!(parse_groups(&Value::Nil).is_empty());
    }

    #[test]
    fn reads_consumers_and_skips_garbage() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("name"),
                bulk("w-1"),
                bulk("pending"),
                Value::Int(0),
                bulk("idle"),
                Value::Int(12_000),
            ]),
            Value::Array(vec![bulk("name"), bulk("half")]),
        ]);
        assert_eq!(
            parse_consumers(&reply),
            vec![ConsumerInfo {
                name: "w-1".into(),
                pending: 0,
                idle_ms: 12_000
            }]
        );
    }
}
