//! Presence: this interface tells Redis it is alive, and learns whether Redis is.
//!
//! Every second the interface writes a liveness key with its figures
//! (connections, routes, groups) for `switchyard status`, refreshes its entry in
//! the interfaces index and the expiry of its reply stream, and records whether the round trip worked — that is
//! what `/readyz` reports as "Redis reachable".

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::state::Shared;

const EVERY: Duration = Duration::from_secs(1);
const TTL: Duration = Duration::from_secs(10);
/// Matches the workers' default `--reply-ttl`.
const REPLY_TTL: Duration = Duration::from_secs(60);

pub async fn run(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ok = beat(&shared).await;
        if ok != shared.redis_ok() {
            if ok {
                tracing::info!("Redis reachable again");
            } else {
                tracing::warn!("Redis unreachable; sockets stay open, messages are held");
            }
        }
        shared.set_redis_ok(ok);
    }
}

async fn beat(shared: &Shared) -> bool {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let info = serde_json::json!({
        "id": shared.id,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "bind": shared.config.bind.to_string(),
        "connections": shared.registry.len(),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "draining": shared.shutdown.is_draining(),
        "routes": shared.routes.iter().map(|t| (t.prefix.to_string(), t.channel.to_string())).collect::<Vec<_>>(),
        "groups": shared.groups.sizes(),
    });
    let mut con = shared.redis.clone();
    let result: redis::RedisResult<()> = redis::pipe()
        .cmd("SET")
        .arg(shared.keys.interface_alive(&shared.id))
        .arg(info.to_string())
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .ignore()
        .cmd("ZADD")
        .arg(shared.keys.interfaces_index())
        .arg(now_ms)
        .arg(&shared.id)
        .ignore()
        // Our reply stream and sequence table live as long as we do.
        .cmd("PEXPIRE")
        .arg(shared.keys.reply_stream(&shared.id))
        .arg(REPLY_TTL.as_millis() as u64)
        .ignore()
        .cmd("PEXPIRE")
        .arg(shared.keys.connection_seqs(&shared.id))
        .arg(REPLY_TTL.as_millis() as u64)
        .ignore()
        .query_async(&mut con)
        .await;
    result.is_ok()
}

/// Removes this interface's liveness key at shutdown.
pub async fn leave(shared: &Shared) {
    let mut con = shared.redis.clone();
    let _: redis::RedisResult<()> = redis::pipe()
        .cmd("DEL")
        .arg(shared.keys.interface_alive(&shared.id))
        .ignore()
        .cmd("ZREM")
        .arg(shared.keys.interfaces_index())
        .arg(&shared.id)
        .ignore()
        .query_async(&mut con)
        .await;
}
