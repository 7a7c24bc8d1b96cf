//! Periodic tasks that run once per tick for the whole worker pool.
//!
//! Ticks are aligned to the wall clock (tick n covers `[n·every, (n+1)·every)`),
//! so every worker agrees on tick numbers. At each tick every worker tries
//! `SET tick-lock NX`; the one that wins runs the task. Adding workers
//! therefore never multiplies the heartbeat.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard_protocol::groups::{self, GroupFrame};
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::Keys;

use crate::app::Periodic;
use crate::runtime::Worker;

/// What a periodic task can do.
pub struct PeriodicContext {
    pub redis: Redis,
    pub keys: Keys,
    /// The tick number being run.
    pub tick: u64,
}

impl PeriodicContext {
    /// Sends a text frame to every member of a group.
    pub async fn group_send_text(&mut self, group: &str, text: impl Into<String>) -> redis::RedisResult<u64> {
        groups::group_send(&mut self.redis, &self.keys, group, &GroupFrame::Text(text.into())).await
    }
}

pub async fn run(worker: Arc<Worker>, task: Periodic) {
    let every_ms = task.every.as_millis().max(1) as u64;
    loop {
        let now = now_ms();
        let next_tick = now / every_ms + 1;
        tokio::time::sleep(Duration::from_millis(next_tick * every_ms - now)).await;
        if worker.stopping() {
            return;
        }
        let mut con = worker.redis.clone();
        let won: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(worker.keys.tick_lock(&task.name, next_tick))
            .arg(&worker.consumer)
            .arg("NX")
            .arg("PX")
            .arg(every_ms * 2)
            .query_async(&mut con)
            .await;
        match won {
            Ok(Some(_)) => {
                let ctx = PeriodicContext {
                    redis: worker.redis.clone(),
                    keys: worker.keys.clone(),
                    tick: next_tick,
                };
                if let Err(error) = (task.run)(ctx).await {
                    tracing::warn!(task = %task.name, error = %format!("{error:#}"), "periodic task failed");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(task = %task.name, %error, "cannot take the tick lock"),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
