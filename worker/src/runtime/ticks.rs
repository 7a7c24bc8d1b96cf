//! Running the periodic tasks, once per tick for the whole worker pool.
//!
//! Ticks are aligned to the wall clock (tick n covers `[n·every, (n+1)·every)`),
//! so every worker agrees on tick numbers. At each tick every worker tries
//! `SET tick-lock NX`; the one that wins runs the task. Adding workers
//! therefore never multiplies the heartbeat.

use std::sync::Arc;
use std::time::Duration;

use switchyard_protocol::time;

use crate::api::app::Periodic;
use crate::api::periodic::PeriodicContext;
use crate::runtime::Worker;

/// Runs `task` at every tick of its period until the worker stops.
pub async fn run(worker: Arc<Worker>, task: Periodic) {
    let every_ms = task.every.as_millis().max(1) as u64;
    loop {
        let now = time::now_ms();
        let next_tick = now / every_ms + 1;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(next_tick * every_ms - now)) => {}
            () = worker.stopped() => return,
        }
        let mut con = worker.redis.clone();
        let won: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(worker.keys.tick_lock(&task.name, next_tick))
            .arg(&worker.member)
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
                    history: worker.config.history.history(),
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
