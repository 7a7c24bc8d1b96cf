//! Channel shards: a channel's stream split so that one busy channel spreads
//! over every master of a Redis Cluster.
//!
//! A connection's messages all go to one shard (`conn % shards`), and the
//! interface appends a connection's next message only after the answer to the
//! previous one, so per-connection order holds whatever the shard count.
//! Interfaces announce the count they use per channel in one hash; workers read
//! every shard up to the largest count announced, so a change of
//! `--channel-shards` (or a cluster that grew) never strands a message. The
//! default count is the number of masters (1 on a single Redis).

use std::collections::HashMap;

use redis::RedisResult;

use crate::redis_conn::Redis;
use crate::Keys;

/// Most shards a channel may have.
pub const MAX_SHARDS: u16 = 1024;

/// The shard a connection's messages go to.
pub fn shard_of(conn: u64, shards: u16) -> u16 {
    (conn % u64::from(shards.max(1))) as u16
}

/// The shard count to use when none is configured (`0`): one per primary of a
/// cluster, one on a single Redis.
pub async fn resolve(configured: u16, con: &mut Redis) -> RedisResult<u16> {
    if configured > 0 {
        return Ok(configured.min(MAX_SHARDS));
    }
    let primaries = con.primaries().await?.len();
    Ok(u16::try_from(primaries).unwrap_or(MAX_SHARDS).clamp(1, MAX_SHARDS))
}

/// Announces that `channel` is appended to over `shards` shards; returns the
/// count workers will read (the largest announced).
pub async fn announce(con: &mut Redis, keys: &Keys, channel: &str, shards: u16) -> RedisResult<u16> {
    redis::Script::new(crate::scripts::ANNOUNCE_SHARDS)
        .key(keys.channel_shards())
        .arg(channel)
        .arg(shards)
        .invoke_async(con)
        .await
}

/// Every channel's announced shard count.
pub async fn announced(con: &mut Redis, keys: &Keys) -> RedisResult<HashMap<String, u16>> {
    let map: HashMap<String, u16> = redis::cmd("HGETALL")
        .arg(keys.channel_shards())
        .query_async(con)
        .await?;
    Ok(map
        .into_iter()
        .map(|(channel, shards)| (channel, shards.clamp(1, MAX_SHARDS)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_stays_on_one_shard_and_shards_fill_evenly() {
        assert_eq!(shard_of(7, 1), 0);
        assert_eq!(shard_of(7, 0), 0);
        assert_eq!(shard_of(7, 3), shard_of(7, 3));
        let mut counts = [0; 3];
        for conn in 1_700_000_000_000_000u64..1_700_000_000_003_000 {
            counts[shard_of(conn, 3) as usize] += 1;
        }
        assert_eq!(counts, [1000, 1000, 1000]);
    }
}
