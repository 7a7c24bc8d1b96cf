//! Demo data: school `demo` with unbound screens `demo-1`..`demo-3`.
//!
//! `switchyard-worker --seed-display-demo` writes it when the school is
//! missing (so a restart never resets edits or bindings), then serves as usual.

use redis::RedisResult;
use serde_json::json;
use switchyard_protocol::redis_conn::{Redis, SlotBatch};
use switchyard_protocol::Keys;

use super::model;
use crate::config::WorkerConfig;

pub const DEMO_SCHOOL: &str = "demo";
pub const DEMO_SCREENS: [&str; 3] = ["demo-1", "demo-2", "demo-3"];

pub fn demo_schedule() -> serde_json::Value {
    json!({
        "title": "Monday",
        "periods": [
            {"time": "08:00", "subject": "Mathematics", "room": "A1"},
            {"time": "08:50", "subject": "English", "room": "B2"},
            {"time": "09:40", "subject": "Break", "room": ""},
            {"time": "10:00", "subject": "Physics", "room": "Lab 1"}
        ]
    })
}

/// Creates a school (revision 1) and its screens unless the school exists;
/// returns whether it did.
pub async fn seed_school(
    con: &mut Redis,
    keys: &Keys,
    school: &str,
    name: &str,
    screens: &[String],
) -> RedisResult<bool> {
    let created: bool = redis::cmd("HSETNX")
        .arg(model::school_key(keys, school))
        .arg("name")
        .arg(name)
        .query_async(con)
        .await?;
    if !created {
        return Ok(false);
    }
    redis::pipe()
        .hset(model::school_key(keys, school), "revision", 1)
        .hset(model::school_key(keys, school), "schedule", demo_schedule().to_string())
        .query_async::<()>(con)
        .await?;
    // Each screen is a key of its own (its own hash slot on a Redis Cluster).
    let mut screens_batch = SlotBatch::new();
    for token in screens {
        let key = model::screen_key(keys, token);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key).arg("school").arg(school);
        screens_batch.add(&key, hset);
    }
    screens_batch.run_all(con).await?;
    Ok(true)
}

pub async fn seed_demo(con: &mut Redis, keys: &Keys) -> RedisResult<bool> {
    let screens: Vec<String> = DEMO_SCREENS.iter().map(|s| (*s).to_owned()).collect();
    seed_school(con, keys, DEMO_SCHOOL, "Demo School", &screens).await
}

/// `--seed-display-demo`: seeds once at start; a failure is logged, not fatal
/// (the worker still serves, and the next start tries again).
pub async fn seed_at_start(config: &WorkerConfig) {
    let keys = Keys::new(config.prefix.clone());
    let seeded = async {
        let client = config.redis.client()?;
        let mut con = client.shared()?;
        anyhow::Ok(seed_demo(&mut con, &keys).await?)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), seeded).await {
        Ok(Ok(true)) => tracing::info!("display: demo school seeded"),
        Ok(Ok(false)) => tracing::info!("display: demo school already there"),
        Ok(Err(error)) => tracing::warn!(%error, "display: cannot seed the demo"),
        Err(_) => tracing::warn!("display: seeding the demo timed out"),
    }
}
