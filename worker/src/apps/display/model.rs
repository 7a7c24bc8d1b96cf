//! The display data in Redis: schools, screens and their bindings, the
//! sockets each screen holds, and when each screen last polled.
//!
//! Everything of one school lives in one Redis Cluster hash slot (the `{S}`
//! below is a literal hash tag), so every script here touches one slot only.
//! P is the `--prefix`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:display:{S}:school` | hash | `name`, `revision` (bumped by every edit), `schedule` (JSON text) |
//! | `P:display:{S}:screens` | hash | screen token → bound device key (`""` while unbound) |
//! | `P:display:{S}:sockets` | hash | reply address of an open socket → `"<connected ms> <token>"` |
//! | `P:display:{S}:polls` | sorted set | token, scored by its last status poll (ms) |
//! | `P:display:{S}:closed` | sorted set | token, scored by when its last socket closed (ms): tells a reconnect |
//! | `P:display:token:T` | string | the school of screen T (a screen is found by its token alone) |
//! | `P:display:schools` | set | every school id (listing, rollout changes, the census) |
//!
//! The flag and the rollout are in [`super::rollout`]. A screen request
//! therefore costs a token lookup, the config read and one script on the
//! school's slot — never a command across slots.

use redis::aio::ConnectionLike;
use std::sync::LazyLock;

use crate::api::once::OnceScript;
use redis::{RedisResult, Script, Value};
use switchyard_protocol::Keys;

/// Key names of the display app (and the deployment's, for the few
/// Switchyard keys it reads: interface liveness, reply streams).
#[derive(Debug, Clone)]
pub struct DisplayKeys {
    prefix: String,
    pub base: Keys,
}

impl DisplayKeys {
    pub fn new(keys: &Keys) -> DisplayKeys {
        DisplayKeys {
            prefix: format!("{}:display", keys.prefix()),
            base: keys.clone(),
        }
    }

    pub fn school(&self, school: &str) -> String {
        format!("{}:{{{school}}}:school", self.prefix)
    }

    pub fn screens(&self, school: &str) -> String {
        format!("{}:{{{school}}}:screens", self.prefix)
    }

    pub fn sockets(&self, school: &str) -> String {
        format!("{}:{{{school}}}:sockets", self.prefix)
    }

    pub fn polls(&self, school: &str) -> String {
        format!("{}:{{{school}}}:polls", self.prefix)
    }

    pub fn closed(&self, school: &str) -> String {
        format!("{}:{{{school}}}:closed", self.prefix)
    }

    pub fn token(&self, token: &str) -> String {
        format!("{}:token:{token}", self.prefix)
    }

    pub fn schools(&self) -> String {
        format!("{}:schools", self.prefix)
    }

    /// The flag and the rollout (a hash, see [`super::rollout`]).
    pub fn config(&self) -> String {
        format!("{}:config", self.prefix)
    }
}

/// The group every screen of a school joins (edits, rollout changes).
pub fn school_group(school: &str) -> String {
    format!("school:{school}")
}

/// The group every screen joins (the global kill switch).
pub const ALL_GROUP: &str = "display:all";

/// School ids and screen tokens: 1–64 letters, digits, `-`, `_`, `.`. Kept
/// plain so they can sit in a hash tag, a group name and a log line as they are.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A device key (`dk`): any text of 1–128 bytes.
pub fn valid_device(device: &str) -> bool {
    (1..=128).contains(&device.len())
}

pub use switchyard_protocol::time::now_ms;

/// The school a screen token belongs to, if any.
pub async fn school_of<C: ConnectionLike>(con: &mut C, dk: &DisplayKeys, token: &str) -> RedisResult<Option<String>> {
    if !valid_id(token) {
        return Ok(None);
    }
    redis::cmd("GET").arg(dk.token(token)).query_async(con).await
}

/// What a screen sees.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub school: String,
    pub name: String,
    pub revision: u64,
    /// JSON text (`null` for a socket check, which does not need it).
    pub schedule: String,
}

/// How a device key compared with the screen's binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The screen was bound to this device already.
    Matched,
    /// The screen was unbound; this device now holds it.
    Bound,
}

impl Binding {
    pub fn label(self) -> &'static str {
        match self {
            Binding::Matched => "matched",
            Binding::Bound => "bound",
        }
    }
}

/// The outcome of presenting a token and a device key.
#[derive(Debug)]
pub enum Bind {
    UnknownToken,
    /// Bound to another device.
    Mismatch {
        school: String,
    },
    Ok {
        snapshot: Snapshot,
        binding: Binding,
        /// Socket binds only: the screen's previous socket closed within
        /// [`RECONNECT_WINDOW_MS`].
        reconnect: bool,
    },
}

/// A socket opened within this long of the screen's previous one closing
/// counts as a reconnect (`switchyard_display_ws_reconnects_total`).
pub const RECONNECT_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Binds the screen to the device if unbound, checks it otherwise, and reads
/// the school — one script, so of two first devices exactly one binds.
/// KEYS: school, screens [, sockets, closed]; ARGV: token, device [, reply
/// address, now ms, reconnect window ms]. With the socket keys it also records
/// the open socket and tells whether it is a reconnect (and skips the schedule).
static BIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local device = redis.call('HGET', KEYS[2], ARGV[1])
if not device then return {0} end
local outcome = 1
if device == '' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  outcome = 3
elseif device ~= ARGV[2] then
  return {2}
end
local reconnect = 0
local schedule = 'null'
if #KEYS == 4 then
  local now = tonumber(ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4] .. ' ' .. ARGV[1])
  local closed = redis.call('ZSCORE', KEYS[4], ARGV[1])
  if closed and tonumber(closed) >= now - tonumber(ARGV[5]) then reconnect = 1 end
else
  schedule = redis.call('HGET', KEYS[1], 'schedule') or 'null'
end
local s = redis.call('HMGET', KEYS[1], 'name', 'revision')
return {outcome, s[1] or '', s[2] or '0', schedule, reconnect}
"#,
    )
});

/// A socket to register while binding: its reply address.
pub struct SocketOpen<'a> {
    pub address: &'a str,
}

/// Binds (or checks) `token` for `device` in `school`; with `socket`, also
/// records the open socket under the school.
pub async fn bind<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    school: &str,
    token: &str,
    device: &str,
    socket: Option<SocketOpen<'_>>,
) -> RedisResult<Bind> {
    let mut script = BIND.prepare_invoke();
    script
        .key(dk.school(school))
        .key(dk.screens(school))
        .arg(token)
        .arg(device);
    if let Some(socket) = &socket {
        script
            .key(dk.sockets(school))
            .key(dk.closed(school))
            .arg(socket.address)
            .arg(now_ms())
            .arg(RECONNECT_WINDOW_MS);
    }
    let reply: Vec<Value> = script.invoke_async(con).await?;
    Ok(match int_at(&reply, 0) {
        1 | 3 => Bind::Ok {
            snapshot: Snapshot {
                school: school.to_owned(),
                name: text_at(&reply, 1),
                revision: text_at(&reply, 2).parse().unwrap_or(0),
                schedule: text_at(&reply, 3),
            },
            binding: if int_at(&reply, 0) == 3 {
                Binding::Bound
            } else {
                Binding::Matched
            },
            reconnect: int_at(&reply, 4) == 1,
        },
        2 => Bind::Mismatch {
            school: school.to_owned(),
        },
        _ => Bind::UnknownToken,
    })
}

/// A status poll: records it (the census counts polling screens) and returns
/// the school's revision; `None` when the screen is not in the school.
/// KEYS: school, screens, polls; ARGV: token, now ms.
static POLL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return -1 end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
"#,
    )
});

pub async fn poll<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    school: &str,
    token: &str,
) -> RedisResult<Option<u64>> {
    let revision: i64 = POLL
        .key(dk.school(school))
        .key(dk.screens(school))
        .key(dk.polls(school))
        .arg(token)
        .arg(now_ms())
        .invoke_async(con)
        .await?;
    Ok(u64::try_from(revision).ok())
}

/// A socket closed: forgets it; true if it was registered (an accepted
/// screen socket, not a refused one). KEYS: sockets, closed; ARGV: address,
/// now ms, token.
static SOCKET_CLOSED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"#,
    )
});

pub async fn socket_closed<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    school: &str,
    token: &str,
    address: &str,
) -> RedisResult<bool> {
    let removed: i64 = SOCKET_CLOSED
        .key(dk.sockets(school))
        .key(dk.closed(school))
        .arg(address)
        .arg(now_ms())
        .arg(token)
        .invoke_async(con)
        .await?;
    Ok(removed == 1)
}

/// Replaces a school's schedule and bumps its revision; `None` if the school
/// does not exist. Once per request (`message`: its
/// [`RequestInfo::message_id`](crate::RequestInfo::message_id)): a request
/// handled again after its worker died answers the revision of the first run
/// instead of bumping it a second time.
static PUT_SCHEDULE: LazyLock<OnceScript> = LazyLock::new(|| {
    OnceScript::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'schedule', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'revision', 1)
"#,
    )
});

pub async fn put_schedule<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    school: &str,
    schedule: &str,
    message: &str,
) -> RedisResult<Option<u64>> {
    let revision: i64 = PUT_SCHEDULE
        .invoke(con, &[dk.school(school)], &[&schedule], message)
        .await?;
    Ok(u64::try_from(revision).ok())
}

/// A school's revision and schedule (JSON text); `None` if it does not exist.
pub async fn schedule<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    school: &str,
) -> RedisResult<Option<(u64, String)>> {
    let (revision, schedule): (Option<u64>, Option<String>) = redis::cmd("HMGET")
        .arg(dk.school(school))
        .arg("revision")
        .arg("schedule")
        .query_async(con)
        .await?;
    Ok(revision.map(|r| (r, schedule.unwrap_or_else(|| "null".to_owned()))))
}

/// Unbinds one screen (ARGV[1] = its token) or every screen of the school
/// (ARGV[1] = ''), and returns `{screens unbound, reply addresses of their
/// open sockets…}`, or `{-1}` for a token the school does not have.
/// KEYS: screens, sockets. The socket entries stay until their disconnect.
static UNBIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local wanted = {}
local unbound = 0
if ARGV[1] ~= '' then
  local device = redis.call('HGET', KEYS[1], ARGV[1])
  if not device then return {-1} end
  wanted[ARGV[1]] = true
  if device ~= '' then unbound = 1 end
  redis.call('HSET', KEYS[1], ARGV[1], '')
else
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    wanted[all[i]] = true
    if all[i + 1] ~= '' then
      unbound = unbound + 1
      redis.call('HSET', KEYS[1], all[i], '')
    end
  end
end
local result = {unbound}
local sockets = redis.call('HGETALL', KEYS[2])
for i = 1, #sockets, 2 do
  local token = string.match(sockets[i + 1], '^%d+ (.*)$')
  if token and wanted[token] then table.insert(result, sockets[i]) end
end
return result
"#,
    )
});

/// What an unbind did.
#[derive(Debug, Default)]
pub struct Unbound {
    /// Screens that had a device and now have none.
    pub screens: u64,
    /// Reply addresses of the sockets those screens held (to be closed 4408).
    pub sockets: Vec<String>,
}

/// Unbinds `token` (or, with `None`, every screen) of `school`; `None` when
/// the school has no such screen.
pub async fn unbind<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    school: &str,
    token: Option<&str>,
) -> RedisResult<Option<Unbound>> {
    let reply: Vec<Value> = UNBIND
        .key(dk.screens(school))
        .key(dk.sockets(school))
        .arg(token.unwrap_or(""))
        .invoke_async(con)
        .await?;
    let screens = int_at(&reply, 0);
    if screens < 0 {
        return Ok(None);
    }
    Ok(Some(Unbound {
        screens: screens as u64,
        sockets: (1..reply.len()).map(|i| text_at(&reply, i)).collect(),
    }))
}

/// Creates a school (revision 1, `schedule`) unless it exists, and adds the
/// screens it does not have yet (unbound); returns whether it created the
/// school. KEYS: school, screens; ARGV: name, schedule, tokens…
static CREATE_SCHOOL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local created = redis.call('HSETNX', KEYS[1], 'revision', 1)
if created == 1 then
  redis.call('HSET', KEYS[1], 'schedule', ARGV[2], 'name', ARGV[1])
elseif ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'name', ARGV[1])
end
for i = 3, #ARGV do redis.call('HSETNX', KEYS[2], ARGV[i], '') end
return created
"#,
    )
});

/// Why a school could not be created.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateError {
    /// The token already belongs to another school.
    TokenTaken { token: String, school: String },
}

/// Creates school `school` (or renames it, when `name` is not empty) and adds
/// `screens` to it. Steps, each on one slot: every token is checked free
/// first, the school's keys are written, then the token index and the school
/// list — so a failure half way leaves at worst screens nobody can find yet.
pub async fn create_school<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    school: &str,
    name: &str,
    schedule: &str,
    screens: &[String],
) -> RedisResult<Result<bool, CreateError>> {
    for token in screens {
        if let Some(owner) = school_of(con, dk, token).await? {
            if owner != school {
                return Ok(Err(CreateError::TokenTaken {
                    token: token.clone(),
                    school: owner,
                }));
            }
        }
    }
    let mut script = CREATE_SCHOOL.prepare_invoke();
    script
        .key(dk.school(school))
        .key(dk.screens(school))
        .arg(name)
        .arg(schedule);
    for token in screens {
        script.arg(token);
    }
    let created: i64 = script.invoke_async(con).await?;
    for token in screens {
        let _: () = redis::cmd("SET")
            .arg(dk.token(token))
            .arg(school)
            .query_async(con)
            .await?;
    }
    let _: () = redis::cmd("SADD")
        .arg(dk.schools())
        .arg(school)
        .query_async(con)
        .await?;
    Ok(Ok(created == 1))
}

/// Every school id, sorted.
pub async fn schools<C: ConnectionLike>(con: &mut C, dk: &DisplayKeys) -> RedisResult<Vec<String>> {
    let mut schools: Vec<String> = redis::cmd("SMEMBERS").arg(dk.schools()).query_async(con).await?;
    schools.sort();
    Ok(schools)
}

pub async fn school_exists<C: ConnectionLike>(con: &mut C, dk: &DisplayKeys, school: &str) -> RedisResult<bool> {
    if !valid_id(school) {
        return Ok(false);
    }
    redis::cmd("SISMEMBER")
        .arg(dk.schools())
        .arg(school)
        .query_async(con)
        .await
}

/// The integer at `i` of a script's array reply (0 if absent or not one).
pub(super) fn int_at(reply: &[Value], i: usize) -> i64 {
    match reply.get(i) {
        Some(Value::Int(n)) => *n,
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).parse().unwrap_or(0),
        _ => 0,
    }
}

/// The text at `i` of a script's array reply (empty if absent).
pub(super) fn text_at(reply: &[Value], i: usize) -> String {
    match reply.get(i) {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(n)) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_school_shares_its_hash_tag() {
        let dk = DisplayKeys::new(&Keys::new("sy"));
        for key in [
            dk.school("a-1"),
            dk.screens("a-1"),
            dk.sockets("a-1"),
            dk.polls("a-1"),
            dk.closed("a-1"),
        ] {
            assert!(key.starts_with("sy:display:{a-1}:"), "{key}");
        }
        assert_eq!(dk.token("t"), "sy:display:token:t");
    }

    #[test]
    fn ids_are_plain() {
        assert!(valid_id("demo-1"));
        assert!(valid_id("School_2.b"));
        for bad in ["", "a b", "a{b}", "a:b", "é", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(valid_device("dk-1"));
        assert!(!valid_device(""));
        assert!(!valid_device(&"d".repeat(129)));
    }
}
