//! `switchyard status`: what an operator needs at a glance.
//!
//! Reads only what interfaces and workers publish about themselves (liveness
//! keys) and what Redis knows about the streams; it changes nothing. Each
//! channel's backlog is shown per shard too, with the Redis node that holds
//! the shard (on a Redis Cluster), and the cluster's shards with their
//! primaries and replicas.

use std::collections::BTreeMap;
use std::process::ExitCode;

use redis::Value;
use serde_json::{json, Value as Json};
use switchyard_protocol::liveness::{self, Role};
use switchyard_protocol::redis_conn::{self, Redis};
use switchyard_protocol::time::now_ms;
use switchyard_protocol::topology::{self, ClusterShard};
use switchyard_protocol::{keys, shards, xinfo, Keys, WORKER_GROUP};

pub async fn run(con: &mut Redis, keys: &Keys, as_json: bool) -> anyhow::Result<ExitCode> {
    let interfaces = live_entries(con, keys, Role::Interface).await?;
    let workers = live_entries(con, keys, Role::Worker).await?;
    let cluster: Option<Vec<ClusterShard>> = if con.is_cluster() {
        Some(topology::cluster_shards(con).await?)
    } else {
        None
    };
    let announced = shards::announced(con, keys).await?;

    let mut channels: BTreeMap<String, Json> = BTreeMap::new();
    let mut routed: Vec<String> = Vec::new();
    for info in interfaces.values() {
        for route in info["routes"].as_array().into_iter().flatten() {
            if let Some(channel) = route.get(1).and_then(Json::as_str) {
                routed.push(channel.to_owned());
            }
        }
    }
    for info in workers.values() {
        for channel in info["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
        {
            routed.push(channel.to_owned());
        }
    }
    routed.sort();
    routed.dedup();
    let mut healthy = true;
    for channel in &routed {
        let mut shard_rows = Vec::new();
        let (mut backlog, mut pending) = (0, 0);
        for stream in keys.channel_streams(channel, announced.get(channel).copied().unwrap_or(1)) {
            let (shard_backlog, shard_pending) = group_figures(con, &stream).await.unwrap_or((0, 0));
            backlog += shard_backlog;
            pending += shard_pending;
            let node = match &cluster {
                Some(shards) => topology::primary_of(shards, keys::slot(stream.as_bytes())).unwrap_or("?"),
                None => "single",
            };
            shard_rows
                .push(json!({"stream": stream, "backlog": shard_backlog, "pending": shard_pending, "node": node}));
        }
        let live: Vec<&String> = workers
            .iter()
            .filter(|(_, info)| {
                info["channels"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|x| x == channel.as_str()))
            })
            .map(|(name, _)| name)
            .collect();
        healthy &= !live.is_empty();
        channels.insert(
            channel.clone(),
            json!({"backlog": backlog, "pending": pending, "workers_alive": live.len(), "workers": live, "shards": shard_rows}),
        );
    }
    let groups = group_sizes(con, keys).await?;
    let redis = match &cluster {
        Some(shards) => json!({
            "topology": "cluster",
            "shards": shards.iter().map(|s| json!({"primary": s.primary, "replicas": s.replicas, "slots": s.slots})).collect::<Vec<_>>(),
        }),
        None => json!({"topology": "single"}),
    };
    let report = json!({"channels": channels, "interfaces": interfaces, "workers": workers, "groups": groups, "redis": redis, "healthy": healthy});
    // One write, errors ignored: `switchyard status | head` must not panic.
    let mut out: Vec<String> = Vec::new();
    if as_json {
        out.push(format!("{report:#}"));
    } else {
        out.push(format!(
            "{:<20} {:>8} {:>8} {:>8}",
            "CHANNEL", "BACKLOG", "PENDING", "WORKERS"
        ));
        for (name, c) in &channels {
            out.push(format!(
                "{:<20} {:>8} {:>8} {:>8}",
                name,
                c["backlog"].to_string(),
                c["pending"].to_string(),
                c["workers_alive"].to_string()
            ));
        }
        out.push(format!(
            "\n{:<28} {:>8} {:>8}  {}",
            "SHARD", "BACKLOG", "PENDING", "NODE"
        ));
        for c in channels.values() {
            for shard in c["shards"].as_array().into_iter().flatten() {
                out.push(format!(
                    "{:<28} {:>8} {:>8}  {}",
                    shard["stream"].as_str().unwrap_or(""),
                    shard["backlog"].to_string(),
                    shard["pending"].to_string(),
                    shard["node"].as_str().unwrap_or("")
                ));
            }
        }
        out.push(format!(
            "\n{:<20} {:>12} {:>10}",
            "INTERFACE", "CONNECTIONS", "DRAINING"
        ));
        for (id, info) in &interfaces {
            out.push(format!(
                "{:<20} {:>12} {:>10}",
                id,
                info["connections"].to_string(),
                info["draining"].to_string()
            ));
        }
        out.push(format!("\n{:<20} {:>8}", "GROUP", "MEMBERS"));
        for (group, members) in &groups {
            out.push(format!("{group:<20} {members:>8}"));
        }
        if let Some(shards) = &cluster {
            out.push(format!("\n{:<22} {:<14} {}", "REDIS PRIMARY", "SLOTS", "REPLICAS"));
            for shard in shards {
                let slots: Vec<String> = shard.slots.iter().map(|(a, b)| format!("{a}-{b}")).collect();
                out.push(format!(
                    "{:<22} {:<14} {}",
                    shard.primary,
                    slots.join(","),
                    shard.replicas.join(",")
                ));
            }
        }
        if !healthy {
            out.push("\nWARNING: a channel has no live worker".to_owned());
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Live (unexpired) members per group, from the member sets.
async fn group_sizes(con: &mut Redis, keys: &Keys) -> anyhow::Result<BTreeMap<String, u64>> {
    let now_ms = now_ms();
    let mut sizes = BTreeMap::new();
    for key in redis_conn::scan_keys(con, &keys.group_members_pattern()).await? {
        let live: u64 = redis::cmd("ZCOUNT")
            .arg(&key)
            .arg(now_ms)
            .arg("+inf")
            .query_async(con)
            .await?;
        if let Some(group) = keys.group_of_members_key(&key) {
            if live > 0 {
                sizes.insert(group.into_owned(), live);
            }
        }
    }
    Ok(sizes)
}

/// Every live process of a role, with its liveness record.
async fn live_entries(con: &Redis, keys: &Keys, role: Role) -> anyhow::Result<BTreeMap<String, Json>> {
    Ok(liveness::live(con, keys, role, None)
        .await?
        .into_iter()
        .map(|(name, info)| (name, serde_json::from_str(&info).unwrap_or(Json::Null)))
        .collect())
}

/// (undelivered, delivered-but-unacknowledged) entries of a channel shard's group.
async fn group_figures(con: &mut Redis, stream: &str) -> anyhow::Result<(i64, i64)> {
    let Some(group) = xinfo::group(con, stream, WORKER_GROUP).await? else {
        return Ok((0, 0));
    };
    let lag = group.lag.map(|lag| lag as i64);
    let backlog = undelivered(con, stream, lag, group.last_delivered.as_deref()).await?;
    Ok((backlog, group.pending as i64))
}

/// Entries past the group's last-delivered id, counted exactly up to
/// [`COUNT_CAP`]. Redis's own `lag` is only a hint: it is missing after some
/// trims and, after restarts from an append-only file, can stay far too high
/// while nothing is left to deliver; it is used only beyond the cap.
async fn undelivered(
    con: &mut Redis,
    stream: &str,
    lag: Option<i64>,
    last_delivered: Option<&str>,
) -> anyhow::Result<i64> {
    let Some(last) = last_delivered else {
        return Ok(lag.unwrap_or(0));
    };
    if lag == Some(0) {
        return Ok(0);
    }
    let after: Vec<Value> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({last}"))
        .arg("+")
        .arg("COUNT")
        .arg(COUNT_CAP)
        .query_async(con)
        .await?;
    let counted = after.len() as i64;
    Ok(if counted < COUNT_CAP {
        counted
    } else {
        lag.unwrap_or(counted).max(counted)
    })
}

/// Most entries `status` reads to count a backlog exactly.
const COUNT_CAP: i64 = 10_000;
