//! Who gets sockets: the global kill switch and the staged rollout.
//!
//! The runbook turns sockets on in stages ("5 schools → 20 → 25 % → 50 % →
//! 100 %") and keeps one switch that turns them all off at once. So a school's
//! screens use a socket when the switch is on **and** the school is in the
//! rollout: named in `schools`, or in the first `percent` of all schools. The
//! percentage is taken over a stable hash of the school id (FNV-1a 64 mod
//! 100, its *bucket*), not over a list, so raising 25 % → 50 % keeps every
//! school of the first quarter and only adds new ones.
//!
//! Both live in one hash, `P:display:config` (one slot, one read per request):
//! `ws_enabled` (`1`/`0`; missing → `DISPLAY_WS_ENABLED`, which defaults to
//! off, as the runbook starts) and `rollout` (JSON `{"schools": [...],
//! "percent": N}`; missing → every school, so the switch alone still means
//! "sockets for everyone" on a deployment that does not stage).

use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, OnceLock};

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{self, DisplayKeys};

/// Which schools are in the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Named schools, in whatever the percentage says.
    pub schools: BTreeSet<String>,
    /// 0..=100: schools whose bucket is below it are in.
    pub percent: u8,
}

impl Default for Rollout {
    /// No rollout stored: every school.
    fn default() -> Rollout {
        Rollout {
            schools: BTreeSet::new(),
            percent: 100,
        }
    }
}

impl Rollout {
    pub fn includes(&self, school: &str) -> bool {
        self.schools.contains(school) || bucket(school) < self.percent
    }

    /// Reads `{"schools": [...], "percent": N}` (both required), with a
    /// message an operator can act on when it is wrong. Whether the schools
    /// exist is checked by the caller.
    pub fn parse(body: &[u8]) -> Result<Rollout, String> {
        const SHAPE: &str = "expected {\"schools\": [\"school-id\", …], \"percent\": 0..100}";
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
            return Err(format!("not a JSON object; {SHAPE}"));
        };
        if let Some(unknown) = object.keys().find(|k| *k != "schools" && *k != "percent") {
            return Err(format!("unknown field {unknown:?}; {SHAPE}"));
        }
        let percent = match object.get("percent") {
            Some(Value::Number(n)) => n.as_u64().filter(|p| *p <= 100),
            _ => None,
        }
        .ok_or_else(|| format!("percent must be an integer from 0 to 100; {SHAPE}"))?;
        let Some(Value::Array(list)) = object.get("schools") else {
            return Err(format!("schools must be an array of school ids; {SHAPE}"));
        };
        let mut schools = BTreeSet::new();
        for item in list {
            match item.as_str() {
                Some(id) if model::valid_id(id) => schools.insert(id.to_owned()),
                _ => return Err(format!("not a school id: {item}")),
            };
        }
        Ok(Rollout {
            schools,
            percent: percent as u8,
        })
    }
}

/// A school's place in the percentage rollout: FNV-1a 64 of its id, mod 100.
/// Never change it: it decides which schools keep sockets as the percentage
/// grows.
pub fn bucket(school: &str) -> u8 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in school.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % 100) as u8
}

/// The flag and the rollout as stored (or defaulted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub ws_enabled: bool,
    pub rollout: Rollout,
    /// Whether a rollout was stored (else it is the every-school default).
    pub rollout_stored: bool,
}

impl Config {
    /// Whether the screens of `school` should use a socket.
    pub fn sockets_for(&self, school: &str) -> bool {
        self.ws_enabled && self.rollout.includes(school)
    }

    fn from_fields(fields: &HashMap<String, String>) -> Config {
        let ws_enabled = match fields.get("ws_enabled") {
            Some(value) => value == "1",
            None => ws_enabled_default(),
        };
        let stored = fields
            .get("rollout")
            .and_then(|text| serde_json::from_str::<Rollout>(text).ok());
        if fields.contains_key("rollout") && stored.is_none() {
            tracing::warn!("display: the stored rollout is not valid JSON; using every school");
        }
        Config {
            ws_enabled,
            rollout_stored: stored.is_some(),
            rollout: stored.unwrap_or_default(),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "ws_enabled": self.ws_enabled,
            "rollout": {"schools": self.rollout.schools, "percent": self.rollout.percent},
            "rollout_stored": self.rollout_stored,
        })
    }
}

pub async fn load<C: ConnectionLike>(con: &mut C, dk: &DisplayKeys) -> RedisResult<Config> {
    let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(dk.config()).query_async(con).await?;
    Ok(Config::from_fields(&fields))
}

/// Sets one field of the config hash and returns the config as it was, in
/// one step (so the caller can tell which schools changed). KEYS: config;
/// ARGV: field, value.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local before = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return before
"#,
    )
});

async fn swap<C: ConnectionLike>(con: &mut C, dk: &DisplayKeys, field: &str, value: &str) -> RedisResult<Config> {
    let before: HashMap<String, String> = SWAP.key(dk.config()).arg(field).arg(value).invoke_async(con).await?;
    Ok(Config::from_fields(&before))
}

/// Stores the switch; returns the config before.
pub async fn set_ws_enabled<C: ConnectionLike>(con: &mut C, dk: &DisplayKeys, enabled: bool) -> RedisResult<Config> {
    swap(con, dk, "ws_enabled", if enabled { "1" } else { "0" }).await
}

/// Stores the rollout; returns the config before.
pub async fn set_rollout<C: ConnectionLike>(con: &mut C, dk: &DisplayKeys, rollout: &Rollout) -> RedisResult<Config> {
    let json = serde_json::to_string(rollout).unwrap_or_default();
    swap(con, dk, "rollout", &json).await
}

/// Schools whose screens gain or lose sockets between two configs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Switched {
    pub on: Vec<String>,
    pub off: Vec<String>,
}

pub fn switched(schools: &[String], before: &Config, after: &Config) -> Switched {
    let mut result = Switched::default();
    for school in schools {
        match (before.sockets_for(school), after.sockets_for(school)) {
            (false, true) => result.on.push(school.clone()),
            (true, false) => result.off.push(school.clone()),
            _ => {}
        }
    }
    result
}

/// Parses an on/off environment variable: `1`/`true`/`yes`/`on` and
/// `0`/`false`/`no`/`off`/empty; anything else is `None`.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// `DISPLAY_WS_ENABLED`: the switch while none is stored in Redis. Off when
/// unset — sockets exist but stay unused until an operator turns them on.
/// An unreadable value is logged once and counts as off.
pub fn ws_enabled_default() -> bool {
    static DEFAULT: OnceLock<bool> = OnceLock::new();
    *DEFAULT.get_or_init(|| match std::env::var("DISPLAY_WS_ENABLED") {
        Err(_) => false,
        Ok(value) => parse_bool(&value).unwrap_or_else(|| {
            tracing::warn!(%value, "DISPLAY_WS_ENABLED is not true/false; sockets stay off");
            false
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ws_enabled: bool, schools: &[&str], percent: u8) -> Config {
        Config {
            ws_enabled,
            rollout: Rollout {
                schools: schools.iter().map(|s| (*s).to_owned()).collect(),
                percent,
            },
            rollout_stored: true,
        }
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Fixed values: a change here would reshuffle a running rollout.
        assert_eq!(
            [bucket("demo"), bucket("school-0"), bucket("school-1"), bucket("a")],
            [18, 72, 83, 96]
        );
        let ids: Vec<String> = (0..1000).map(|i| format!("school-{i}")).collect();
        let in_quarter = ids.iter().filter(|s| bucket(s) < 25).count();
        assert!((200..300).contains(&in_quarter), "{in_quarter} of 1000 in 25 %");
    }

    #[test]
    fn raising_the_percentage_keeps_every_school_already_in() {
        let ids: Vec<String> = (0..500).map(|i| format!("s{i}")).collect();
        for (low, high) in [(5, 20), (20, 25), (25, 50), (50, 100)] {
            let before = config(true, &[], low);
            let after = config(true, &[], high);
            let moved = switched(&ids, &before, &after);
            assert!(moved.off.is_empty(), "{low}→{high} dropped {:?}", moved.off);
            assert!(!moved.on.is_empty(), "{low}→{high} added nobody");
        }
    }

    #[test]
    fn the_switch_overrides_the_rollout_and_named_schools_are_in() {
        let on = config(true, &["named"], 0);
        assert!(on.sockets_for("named"));
        assert!(!on.sockets_for("other"));
        let off = config(false, &["named"], 100);
        assert!(!off.sockets_for("named"));
        assert!(config(true, &[], 100).sockets_for("anything"));
    }

    #[test]
    fn bad_rollouts_say_what_is_wrong() {
        let ok = Rollout::parse(br#"{"schools": ["demo"], "percent": 25}"#).unwrap();
        assert_eq!(ok.percent, 25);
        assert!(ok.schools.contains("demo"));
        for (body, needle) in [
            (&br#"{"schools": [], "percent": 101}"#[..], "percent"),
            (br#"{"schools": [], "percent": -1}"#, "percent"),
            (br#"{"schools": [], "percent": 2.5}"#, "percent"),
            (br#"{"schools": []}"#, "percent"),
            (br#"{"percent": 5}"#, "schools"),
            (br#"{"schools": "demo", "percent": 5}"#, "schools"),
            (br#"{"schools": ["a b"], "percent": 5}"#, "not a school id"),
            (br#"{"schools": [], "percent": 5, "precent": 1}"#, "unknown field"),
            (b"[1]", "JSON object"),
            (b"nope", "JSON object"),
        ] {
            let error = Rollout::parse(body).unwrap_err();
            assert!(error.contains(needle), "{}: {error}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn booleans_from_the_environment() {
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool(" off "), Some(false));
        assert_eq!(parse_bool(""), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
