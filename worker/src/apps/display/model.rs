//! The display data in Redis: schools, screens, schedules and the flag.
//!
//! Everything lives under `P:display:` so one Redis serves several
//! deployments (P is the `--prefix`):
//! - `P:display:school:{id}` — hash: `name`, `revision`, `schedule` (JSON text),
//! - `P:display:screen:{token}` — hash: `school`, `device` (set on first use),
//! - `P:display:ws_enabled` — `1` / `0`; missing → `DISPLAY_WS_ENABLED`.
//!
//! Binding and revision bumps are Lua scripts, so two requests at once never
//! both bind a screen and never read a half-written schedule.

use redis::RedisResult;
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::Keys;

/// Key names of the display app.
pub fn school_key(keys: &Keys, school: &str) -> String {
    format!("{}:display:school:{school}", keys.prefix())
}

pub fn screen_key(keys: &Keys, token: &str) -> String {
    format!("{}:display:screen:{token}", keys.prefix())
}

pub fn flag_key(keys: &Keys) -> String {
    format!("{}:display:ws_enabled", keys.prefix())
}

/// The group every screen of a school joins.
pub fn school_group(school: &str) -> String {
    format!("school:{school}")
}

/// The group every screen joins (flag changes).
pub const ALL_GROUP: &str = "display:all";

/// What a screen sees.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub school: String,
    pub name: String,
    pub revision: u64,
    /// JSON text.
    pub schedule: String,
}

/// The outcome of presenting a token and a device key.
#[derive(Debug)]
pub enum Bind {
    UnknownToken,
    /// Bound to another device.
    Mismatch,
    Ok(Snapshot),
}

/// Binds the screen to `device` if unbound (HSETNX) and checks it otherwise,
/// in one script, so exactly one first device wins. The school is read next,
/// on its own: its key is in another hash slot (on a Redis Cluster one script
/// touches one slot), and a snapshot read a moment later is as good.
const BIND_LUA: &str = r#"
local school = redis.call('HGET', KEYS[1], 'school')
if not school then return {0} end
redis.call('HSETNX', KEYS[1], 'device', ARGV[1])
if redis.call('HGET', KEYS[1], 'device') ~= ARGV[1] then return {2} end
return {1, school}
"#;

pub async fn bind(con: &mut Redis, keys: &Keys, token: &str, device: &str) -> RedisResult<Bind> {
    let reply: Vec<redis::Value> = redis::Script::new(BIND_LUA)
        .key(screen_key(keys, token))
        .arg(device)
        .invoke_async(con)
        .await?;
    let school = match (reply.first(), reply.get(1)) {
        (Some(redis::Value::Int(1)), Some(redis::Value::BulkString(school))) => {
            String::from_utf8_lossy(school).into_owned()
        }
        (Some(redis::Value::Int(2)), _) => return Ok(Bind::Mismatch),
        _ => return Ok(Bind::UnknownToken),
    };
    let (name, revision, schedule): (Option<String>, Option<u64>, Option<String>) = redis::cmd("HMGET")
        .arg(school_key(keys, &school))
        .arg("name")
        .arg("revision")
        .arg("schedule")
        .query_async(con)
        .await?;
    Ok(Bind::Ok(Snapshot {
        school,
        name: name.unwrap_or_default(),
        revision: revision.unwrap_or(0),
        schedule: schedule.unwrap_or_else(|| "null".to_owned()),
    }))
}

/// The school and revision of a screen, without binding it.
pub async fn revision_of_screen(con: &mut Redis, keys: &Keys, token: &str) -> RedisResult<Option<u64>> {
    let school: Option<String> = redis::cmd("HGET")
        .arg(screen_key(keys, token))
        .arg("school")
        .query_async(con)
        .await?;
    let Some(school) = school else { return Ok(None) };
    let revision: Option<u64> = redis::cmd("HGET")
        .arg(school_key(keys, &school))
        .arg("revision")
        .query_async(con)
        .await?;
    Ok(Some(revision.unwrap_or(0)))
}

/// Replaces a school's schedule and bumps its revision; `None` if the school
/// does not exist.
const PUT_SCHEDULE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'schedule', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'revision', 1)
"#;

pub async fn put_schedule(con: &mut Redis, keys: &Keys, school: &str, schedule: &str) -> RedisResult<Option<u64>> {
    let revision: i64 = redis::Script::new(PUT_SCHEDULE_LUA)
        .key(school_key(keys, school))
        .arg(schedule)
        .invoke_async(con)
        .await?;
    Ok(u64::try_from(revision).ok())
}

/// Whether screens should use the WebSocket: Redis first, then the env default.
pub async fn ws_enabled(con: &mut Redis, keys: &Keys) -> RedisResult<bool> {
    let stored: Option<String> = redis::cmd("GET").arg(flag_key(keys)).query_async(con).await?;
    Ok(match stored {
        Some(value) => value == "1",
        None => ws_enabled_default(),
    })
}

pub async fn set_ws_enabled(con: &mut Redis, keys: &Keys, enabled: bool) -> RedisResult<()> {
    redis::cmd("SET")
        .arg(flag_key(keys))
        .arg(if enabled { "1" } else { "0" })
        .query_async(con)
        .await
}

/// `DISPLAY_WS_ENABLED` (`true`/`1`/`yes`/`on`); on when unset.
pub fn ws_enabled_default() -> bool {
    match std::env::var("DISPLAY_WS_ENABLED") {
        Ok(value) => matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"),
        Err(_) => true,
    }
}
