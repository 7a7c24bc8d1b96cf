//! Counting screens: who holds a socket, who polls, who is silent.
//!
//! No process sees every screen (sockets sit on any interface, messages go to
//! any worker), so the truth is in Redis: each school's open sockets and last
//! polls (see [`super::model`]). A census reads them school by school, one
//! script per school's slot, and classifies each screen:
//!
//! - `ws`: it holds an open socket,
//! - `fallback`: it polled within [`POLL_WINDOW_MS`] although its school has
//!   sockets — the runbook's "polling fallback",
//! - `polling`: it polled recently and its school has no sockets (by design),
//! - `offline`: neither.
//!
//! Every display worker takes one every `DISPLAY_CENSUS_SECONDS` (15) for
//! its gauges; the admin overview takes one per request. A socket entry
//! whose interface is gone (or restarted since) is stale — that interface
//! will never send its disconnect — and the census removes it.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script, Value};
use serde_json::{json, Value as Json};
use switchyard_protocol::ReplyAddress;

use super::metrics::METRICS;
use super::model::{self, text_at, DisplayKeys};
use super::rollout::{self, Config};

/// A screen that polled within this long counts as polling. The client polls
/// at most every 45 s (`poll_max`); the rest is slack for a slow request.
pub const POLL_WINDOW_MS: u64 = 90_000;

/// What a screen is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ws,
    Fallback,
    Polling,
    Offline,
}

impl State {
    pub const ALL: [State; 4] = [State::Ws, State::Fallback, State::Polling, State::Offline];

    pub fn label(self) -> &'static str {
        match self {
            State::Ws => "ws",
            State::Fallback => "fallback",
            State::Polling => "polling",
            State::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScreenState {
    pub token: String,
    /// The bound device key, if any.
    pub device: Option<String>,
    /// Open sockets (more than one: two tabs of the same device).
    pub sockets: usize,
    pub last_poll_ms: Option<u64>,
    pub state: State,
}

#[derive(Debug, Clone)]
pub struct SchoolState {
    pub id: String,
    pub name: String,
    pub revision: u64,
    /// Whether its screens get sockets (switch and rollout).
    pub sockets: bool,
    pub bucket: u8,
    pub screens: Vec<ScreenState>,
}

/// One census of the whole deployment.
#[derive(Debug, Clone)]
pub struct Census {
    pub config: Config,
    pub schools: Vec<SchoolState>,
}

impl Census {
    pub fn count(&self, state: State) -> u64 {
        self.schools
            .iter()
            .flat_map(|s| &s.screens)
            .filter(|s| s.state == state)
            .count() as u64
    }

    /// Screens polling although they should hold a socket, over screens that
    /// should hold one; 0 when there are none.
    pub fn polling_ratio(&self) -> f64 {
        let fallback = self.count(State::Fallback);
        let should = fallback + self.count(State::Ws);
        if should == 0 {
            0.0
        } else {
            fallback as f64 / should as f64
        }
    }

    pub fn to_json(&self) -> Json {
        let schools: Vec<Json> = self
            .schools
            .iter()
            .map(|school| {
                let screens: Vec<Json> = school
                    .screens
                    .iter()
                    .map(|s| {
                        json!({
                            "token": s.token, "device": s.device, "mode": s.state.label(),
                            "sockets": s.sockets, "last_poll_ms": s.last_poll_ms,
                        })
                    })
                    .collect();
                json!({
                    "id": school.id, "name": school.name, "revision": school.revision,
                    "sockets": school.sockets, "bucket": school.bucket, "screens": screens,
                })
            })
            .collect();
        let mut totals = serde_json::Map::new();
        for state in State::ALL {
            totals.insert(state.label().to_owned(), json!(self.count(state)));
        }
        totals.insert("polling_ratio".to_owned(), json!(self.polling_ratio()));
        let mut body = self.config.to_json();
        body["schools"] = Json::Array(schools);
        body["totals"] = Json::Object(totals);
        body
    }
}

/// One school's raw state. KEYS: school, screens, sockets, polls.
static READ_SCHOOL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
return {
  redis.call('HMGET', KEYS[1], 'name', 'revision'),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
  redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES'),
}
"#,
    )
});

fn array(value: Option<&Value>) -> &[Value] {
    match value {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

/// When each interface started (ms): its last refresh (its score in the
/// interface index) minus the uptime it wrote then; `None`: the interface is
/// gone (its liveness key expired, 10 s after its last refresh). Cached for
/// one census.
struct Interfaces(HashMap<String, Option<u64>>);

impl Interfaces {
    async fn started_ms<C: ConnectionLike>(
        &mut self,
        con: &mut C,
        dk: &DisplayKeys,
        interface: &str,
        now: u64,
    ) -> RedisResult<Option<u64>> {
        if let Some(known) = self.0.get(interface) {
            return Ok(*known);
        }
        let alive: Option<String> = redis::cmd("GET")
            .arg(dk.base.interface_alive(interface))
            .query_async(con)
            .await?;
        let started = match alive {
            None => None,
            Some(text) => {
                // Its uptime as of its last refresh, which also stamped the index.
                let uptime = serde_json::from_str::<Json>(&text)
                    .ok()
                    .and_then(|v| v.get("uptime_seconds").and_then(Json::as_u64))
                    .unwrap_or(0);
                let seen: Option<f64> = redis::cmd("ZSCORE")
                    .arg(dk.base.interfaces_index())
                    .arg(interface)
                    .query_async(con)
                    .await?;
                let seen = seen.map_or(now, |ms| ms as u64);
                Some(seen.saturating_sub(uptime * 1000))
            }
        };
        self.0.insert(interface.to_owned(), started);
        Ok(started)
    }
}

/// A socket entry is stale when its interface is gone or started after it
/// (restarted under the same id); 5 s of slack for the uptime's rounding.
async fn socket_is_live<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    interfaces: &mut Interfaces,
    address: &str,
    connected_ms: u64,
    now: u64,
) -> RedisResult<bool> {
    let Some(address) = ReplyAddress::parse(address) else {
        return Ok(false);
    };
    Ok(match interfaces.started_ms(con, dk, &address.interface, now).await? {
        Some(started) => connected_ms + 5_000 >= started,
        None => false,
    })
}

async fn school_state<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    config: &Config,
    school: &str,
    now: u64,
    interfaces: &mut Interfaces,
) -> RedisResult<SchoolState> {
    let reply: Vec<Value> = READ_SCHOOL
        .key(dk.school(school))
        .key(dk.screens(school))
        .key(dk.sockets(school))
        .key(dk.polls(school))
        .invoke_async(con)
        .await?;
    let head = array(reply.first());
    let screens = array(reply.get(1));
    let sockets = array(reply.get(2));
    let polls = array(reply.get(3));

    let mut open: HashMap<String, usize> = HashMap::new();
    let mut stale = Vec::new();
    for pair in sockets.chunks(2) {
        let address = text_at(pair, 0);
        let entry = text_at(pair, 1);
        let (connected, token) = entry.split_once(' ').unwrap_or(("0", ""));
        let connected: u64 = connected.parse().unwrap_or(0);
        if socket_is_live(con, dk, interfaces, &address, connected, now).await? {
            *open.entry(token.to_owned()).or_default() += 1;
        } else {
            stale.push(address);
        }
    }
    if !stale.is_empty() {
        tracing::info!(%school, count = stale.len(), "display: forgetting sockets of interfaces that are gone");
        let _: i64 = redis::cmd("HDEL")
            .arg(dk.sockets(school))
            .arg(&stale)
            .query_async(con)
            .await?;
    }
    let last_polls: HashMap<String, u64> = polls
        .chunks(2)
        .map(|pair| (text_at(pair, 0), text_at(pair, 1).parse::<f64>().unwrap_or(0.0) as u64))
        .collect();

    let sockets_on = config.sockets_for(school);
    let mut states: Vec<ScreenState> = screens
        .chunks(2)
        .map(|pair| {
            let token = text_at(pair, 0);
            let device = Some(text_at(pair, 1)).filter(|d| !d.is_empty());
            let sockets = open.get(&token).copied().unwrap_or(0);
            let last_poll_ms = last_polls.get(&token).copied();
            let polled = last_poll_ms.is_some_and(|at| at + POLL_WINDOW_MS >= now);
            let state = match (sockets > 0, polled, sockets_on) {
                (true, _, _) => State::Ws,
                (false, true, true) => State::Fallback,
                (false, true, false) => State::Polling,
                (false, false, _) => State::Offline,
            };
            ScreenState {
                token,
                device,
                sockets,
                last_poll_ms,
                state,
            }
        })
        .collect();
    states.sort_by(|a, b| a.token.cmp(&b.token));
    Ok(SchoolState {
        id: school.to_owned(),
        name: text_at(head, 0),
        revision: text_at(head, 1).parse().unwrap_or(0),
        sockets: sockets_on,
        bucket: rollout::bucket(school),
        screens: states,
    })
}

/// Counts every school's screens (see the module doc).
pub async fn take<C: ConnectionLike>(con: &mut C, dk: &DisplayKeys) -> RedisResult<Census> {
    let config = rollout::load(con, dk).await?;
    let now = model::now_ms();
    let mut interfaces = Interfaces(HashMap::new());
    let mut schools = Vec::new();
    for school in model::schools(con, dk).await? {
        schools.push(school_state(con, dk, &config, &school, now, &mut interfaces).await?);
    }
    Ok(Census { config, schools })
}

fn publish(census: &Census) {
    for state in State::ALL {
        METRICS.set_screens(state.label(), census.count(state));
    }
    let on = census.schools.iter().filter(|s| s.sockets).count() as u64;
    METRICS.set_schools("on", on);
    METRICS.set_schools("off", census.schools.len() as u64 - on);
    METRICS.polling_ratio.set(census.polling_ratio());
    METRICS.census_timestamp.set(model::now_ms() as f64 / 1000.0);
}

/// `DISPLAY_CENSUS_SECONDS`: how often each display worker counts the screens
/// for its gauges (default 15; an unreadable value is logged and ignored).
pub fn census_every() -> Duration {
    const DEFAULT: u64 = 15;
    let seconds = match std::env::var("DISPLAY_CENSUS_SECONDS") {
        Err(_) => DEFAULT,
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(seconds) if (1..=3600).contains(&seconds) => seconds,
            _ => {
                tracing::warn!(%value, "DISPLAY_CENSUS_SECONDS is not 1..3600; using {DEFAULT}");
                DEFAULT
            }
        },
    };
    Duration::from_secs(seconds)
}

/// Starts this process's census loop, once: the display calls it on every
/// message, so the gauges appear with the first display traffic (a worker
/// that never serves the display takes none).
pub fn ensure_running<C>(con: &C, dk: &DisplayKeys)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let mut con = con.clone();
        let dk = dk.clone();
        let every = census_every();
        tokio::spawn(async move {
            loop {
                match take(&mut con, &dk).await {
                    Ok(census) => publish(&census),
                    Err(error) => tracing::warn!(%error, "display: census failed; gauges keep their last values"),
                }
                tokio::time::sleep(every).await;
            }
        });
    });
}
