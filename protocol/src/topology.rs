//! Who serves which hash slots: a Redis Cluster's shards as `CLUSTER SHARDS`
//! tells them.
//!
//! Commits wait for replicas on the masters they wrote to, `switchyard status`
//! shows which node holds each channel shard, and channel shards are counted
//! per primary; all of them read the cluster's layout here.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use crate::value::{fields, int_of, items, text_of};

/// One shard of a cluster as `CLUSTER SHARDS` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterShard {
    /// `host:port` of its primary.
    pub primary: String,
    /// Slot ranges it serves.
    pub slots: Vec<(u16, u16)>,
    /// `host:port` of its replicas.
    pub replicas: Vec<String>,
}

/// The cluster's shards (`CLUSTER SHARDS`, asked of any node).
pub async fn cluster_shards<C: ConnectionLike>(con: &mut C) -> RedisResult<Vec<ClusterShard>> {
    let value: Value = redis::cmd("CLUSTER").arg("SHARDS").query_async(con).await?;
    Ok(parse_cluster_shards(&value))
}

fn parse_cluster_shards(value: &Value) -> Vec<ClusterShard> {
    let mut shards = Vec::new();
    for shard in items(value) {
        let shard_fields = fields(shard);
        let get = |name: &str| shard_fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        let slots: Vec<i64> = get("slots")
            .map(|v| items(v).iter().filter_map(int_of).collect())
            .unwrap_or_default();
        let mut primary = None;
        let mut replicas = Vec::new();
        for node in get("nodes").map(items).unwrap_or_default() {
            let node = fields(node);
            let text = |name: &str| node.iter().find(|(k, _)| k == name).and_then(|(_, v)| text_of(v));
            let port = node.iter().find(|(k, _)| k == "port").and_then(|(_, v)| int_of(v));
            let (Some(ip), Some(port)) = (text("ip").or_else(|| text("endpoint")), port) else {
                continue;
            };
            let address = format!("{ip}:{port}");
            let healthy = text("health").as_deref() != Some("fail");
            match text("role").as_deref() {
                Some("master") if healthy => primary = Some(address),
                Some("replica") if healthy => replicas.push(address),
                _ => {}
            }
        }
        if let Some(primary) = primary {
            let slots = slots
                .chunks(2)
                .filter_map(|pair| match pair {
                    [a, b] => Some((u16::try_from(*a).ok()?, u16::try_from(*b).ok()?)),
                    _ => None,
                })
                .collect();
            shards.push(ClusterShard {
                primary,
                slots,
                replicas,
            });
        }
    }
    shards.sort_by(|a, b| a.slots.first().cmp(&b.slots.first()));
    shards
}

/// The primary (`host:port`) serving a hash slot, from `CLUSTER SHARDS`.
pub fn primary_of(shards: &[ClusterShard], slot: u16) -> Option<&str> {
    shards
        .iter()
        .find(|shard| shard.slots.iter().any(|(from, to)| (*from..=*to).contains(&slot)))
        .map(|shard| shard.primary.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_shards() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node = |port: i64, role: &str, health: &str| {
            Value::Array(vec![
                text("ip"),
                text("127.0.0.1"),
                text("port"),
                Value::Int(port),
                text("role"),
                text(role),
                text("health"),
                text(health),
            ])
        };
        let shard = |from: i64, to: i64, nodes: Vec<Value>| {
            Value::Array(vec![
                text("slots"),
                Value::Array(vec![Value::Int(from), Value::Int(to)]),
                text("nodes"),
                Value::Array(nodes),
            ])
        };
        let reply = Value::Array(vec![
            shard(
                5461,
                10922,
                vec![node(7002, "master", "online"), node(7005, "replica", "online")],
            ),
            shard(
                0,
                5460,
                vec![node(7001, "master", "fail"), node(7004, "master", "online")],
            ),
        ]);
        let shards = parse_cluster_shards(&reply);
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].primary, "127.0.0.1:7004");
        assert_eq!(shards[0].slots, vec![(0, 5460)]);
        assert_eq!(shards[1].replicas, vec!["127.0.0.1:7005".to_owned()]);
    }
}
