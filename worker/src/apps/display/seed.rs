//! Demo data: school `demo` with unbound screens `demo-1`..`demo-3`.
//!
//! `switchyard-worker --seed-display-demo` writes it when the school is
//! missing (so a restart never resets edits or bindings), then serves as usual.

use redis::aio::ConnectionLike;
use redis::RedisResult;
use serde_json::json;
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

/// Writes the demo school and its screens unless the school exists (so a
/// restart never resets edits or bindings); returns whether it did.
pub async fn seed_demo<C: ConnectionLike>(con: &mut C, keys: &Keys) -> RedisResult<bool> {
    let dk = model::DisplayKeys::new(keys);
    let exists: bool = redis::cmd("EXISTS")
        .arg(dk.school(DEMO_SCHOOL))
        .query_async(con)
        .await?;
    if exists {
        return Ok(false);
    }
    let screens: Vec<String> = DEMO_SCREENS.iter().map(|s| (*s).to_owned()).collect();
    let schedule = demo_schedule().to_string();
    match model::create_school(con, &dk, DEMO_SCHOOL, "Demo School", &schedule, &screens).await? {
        Ok(created) => Ok(created),
        Err(model::CreateError::TokenTaken { token, school }) => {
            tracing::warn!(%token, %school, "display: a demo token belongs to another school; demo not seeded");
            Ok(false)
        }
    }
}

/// `--seed-display-demo`: seeds once at start; a failure is logged, not fatal
/// (the worker still serves, and the next start tries again).
pub async fn seed_at_start(config: &WorkerConfig) {
    let keys = Keys::new(config.prefix.clone());
    let seeded = async {
        let client = config.redis.client()?;
        // The same kind of connection the worker's runtime opens.
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
