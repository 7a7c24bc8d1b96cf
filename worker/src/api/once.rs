//! Effects outside the commit, made once per message.
//!
//! Everything a consumer collects in its [`Context`](crate::Context) is
//! committed exactly once. Writes it makes itself through `ctx.redis()` or an
//! HTTP app's `WorkerRedis` are not: they happen when they are made, and a
//! message can be handled more than once — its worker died (or was killed,
//! or stalled past `--claim-idle`) after the write and before the commit, and
//! another worker runs it again. **Such writes are at least once.** That is
//! harmless for idempotent ones (setting a value, adding to a set) and wrong
//! for the rest (an increment, an append, a revision bump).
//!
//! For those, [`OnceScript`] runs a Lua script at most once per message: it
//! keeps a guard key, named after the message ([`message_id`]: the reply
//! address and sequence number, the same on every delivery of the message)
//! in the hash slot of the data it writes, and checks it in the same atomic
//! script as the write. The first run stores its result there; a repeat finds
//! it and returns the stored result without writing again — so the retried
//! message answers what the first run computed.
//!
//! Checking the guard in a separate call before the write would not do: a
//! worker dying between the two would leave the guard set and the write
//! undone (at most once), or the other way round.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult, Script, ToRedisArgs};

/// How long a guard outlives its message's first run: far longer than any
/// redelivery (a few `--claim-idle` periods).
pub const GUARD_TTL: Duration = Duration::from_secs(3600);

/// The id of a message that every delivery of it shares:
/// `<interface>!<connection>#<sequence number>`. Connection ids are unique
/// across interface restarts, so two messages never share one.
pub fn message_id(reply: &str, seq: u64) -> String {
    format!("{reply}#{seq}")
}

/// A Lua script run at most once per message and guard key.
pub struct OnceScript {
    script: Script,
}

impl OnceScript {
    /// `body` is ordinary script code (using `KEYS[1..]`, `ARGV[1..]` and
    /// `return`); its result, a string or a number, is stored and returned
    /// again on a repeat (as a string: read numbers with `i64`/`u64`, which
    /// parse both). A body that returns nothing (or an error) stores nothing,
    /// and runs again on a repeat.
    pub fn new(body: &str) -> OnceScript {
        let wrapped = format!(
            r#"
local guard = KEYS[#KEYS]
local ttl = ARGV[#ARGV]
local done = redis.call('GET', guard)
if done then return done end
local result = (function()
{body}
end)()
if type(result) == 'number' or type(result) == 'string' then
  redis.call('SET', guard, tostring(result), 'PX', ttl)
end
return result
"#
        );
        OnceScript {
            script: Script::new(&wrapped),
        }
    }

    /// Runs the script with `keys` and `args` unless the message `message`
    /// (a [`message_id`]) ran it before. `keys` must all be in one hash slot
    /// (the first one's: the guard key is named after it, inheriting its
    /// hash tag).
    pub async fn invoke<C, T>(
        &self,
        con: &mut C,
        keys: &[String],
        args: &[&dyn ToRedisArgsDyn],
        message: &str,
    ) -> RedisResult<T>
    where
        C: ConnectionLike,
        T: FromRedisValue,
    {
        let mut invocation = self.script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        let first = keys.first().map(String::as_str).unwrap_or("once");
        invocation.key(guard_key(first, message));
        for arg in args {
            invocation.arg(arg.to_args());
        }
        invocation.arg(GUARD_TTL.as_millis() as u64);
        invocation.invoke_async(con).await
    }
}

/// The guard key of a message beside `key`: `<key>:once:<message>`, in the
/// same hash slot (the hash tag is the first `{…}`, and message ids hold none).
pub fn guard_key(key: &str, message: &str) -> String {
    format!("{key}:once:{message}")
}

/// An argument of any type, for [`OnceScript::invoke`]'s list.
pub trait ToRedisArgsDyn: Sync {
    fn to_args(&self) -> Vec<Vec<u8>>;
}

impl<T: ToRedisArgs + Sync> ToRedisArgsDyn for T {
    fn to_args(&self) -> Vec<Vec<u8>> {
        self.to_redis_args()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_shares_the_data_slot() {
        let data = "switchyard:display:{demo}:school";
        let guard = guard_key(data, &message_id("iface-1!1700000000000001", 1));
        assert_eq!(
            guard,
            "switchyard:display:{demo}:school:once:iface-1!1700000000000001#1"
        );
        assert_eq!(
            switchyard_protocol::keys::slot(guard.as_bytes()),
            switchyard_protocol::keys::slot(data.as_bytes())
        );
    }
}
