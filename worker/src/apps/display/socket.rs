//! `display` on `/ws/display/?token=T&dk=D[&since=S&epoch=E]`: a screen's
//! invalidation socket.
//!
//! The socket carries no data, only "fetch again": on connect the screen
//! joins `school:{id}` (and `display:all`) and gets `{"type": "hello",
//! "revision": n}`; every edit then arrives as `{"type": "invalidate",
//! "revision": n}`, and a switch or rollout change that takes its school's
//! sockets away as `{"type": "config", "ws_enabled": false}`. Broadcasts
//! carry the group's `seq`, `epoch` and `group` (docs/protocol.md, "Group
//! history and recovery"). `{"type": "ping"}` → `{"type": "pong"}`.
//!
//! With `since=S&epoch=E` — the `seq`/`epoch` of the last broadcast of
//! `school:{id}` the screen got, or the position its snapshot was taken at
//! (`meta.seq`/`meta.epoch`) — the screen joins its school's group since that
//! position: what it missed while away comes first, from the group's history,
//! then the live broadcasts; when the history cannot serve the position it
//! gets `{"type": "recover_failed", …}` and refetches its snapshot. So a
//! screen never compares revisions to know whether it missed an edit. Without
//! them (or with malformed ones, logged and ignored) it joins from now on.
//!
//! Close codes (always after accepting, so browsers see them): 4400 sockets
//! are off for this screen (the switch, or its school is not in the rollout),
//! 4404 unknown token, 4408 the screen is bound to another device — also sent
//! to open sockets when an operator unbinds their screen.
//!
//! Each accepted socket is recorded under its school (reply address → token)
//! until its disconnect: that is how an unbind finds the sockets to close and
//! how the census counts screens on sockets. Log lines: `WS connected`,
//! `WS disconnected`, `WS refused`, `device_binding_reject` (with
//! `detail=screen_bound`).

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use serde_json::{json, Value};
use switchyard_protocol::{encode, Action, Reply, ReplyAddress};

use super::census;
use super::metrics::METRICS;
use super::model::{self, Bind, DisplayKeys, SocketOpen};
use super::rollout;
use crate::api::consumer::{ConsumerResult, Message, WebSocketConsumer};
use crate::api::context::Context;

pub const CHANNEL: &str = "display";

/// Sockets are off for this screen: the switch, or the rollout.
pub const CLOSE_DISABLED: u16 = 4400;
pub const CLOSE_UNKNOWN_TOKEN: u16 = 4404;
/// Bound to another device (or unbound by an operator while open).
pub const CLOSE_SCREEN_BOUND: u16 = 4408;

pub struct DisplaySocket;

/// Accepts and closes at once: a browser only sees close codes after the handshake.
fn refuse(ctx: &mut Context, code: u16, outcome: &'static str, reason: &str, token: &str) {
    METRICS.ws_connect(outcome);
    tracing::info!(code, reason, %token, "WS refused");
    ctx.accept();
    ctx.close(code);
}

#[async_trait]
impl WebSocketConsumer for DisplaySocket {
    async fn connect(&self, ctx: &mut Context) -> ConsumerResult {
        let mut redis = ctx.redis();
        let dk = DisplayKeys::new(ctx.keys());
        census::ensure_running(&redis, &dk);
        let token = ctx.query_param("token").unwrap_or_default();
        let device = ctx.query_param("dk").unwrap_or_default();
        let config = rollout::load(&mut redis, &dk).await?;
        if !config.ws_enabled {
            refuse(ctx, CLOSE_DISABLED, "disabled", "switch_off", &token);
            return Ok(());
        }
        let Some(school) = model::school_of(&mut redis, &dk, &token).await? else {
            refuse(ctx, CLOSE_UNKNOWN_TOKEN, "unknown_token", "unknown_token", &token);
            return Ok(());
        };
        if !config.rollout.includes(&school) {
            refuse(ctx, CLOSE_DISABLED, "disabled", "not_in_rollout", &token);
            return Ok(());
        }
        if !model::valid_device(&device) {
            refuse(ctx, CLOSE_SCREEN_BOUND, "screen_bound", "no_device_key", &token);
            return Ok(());
        }
        let address = ctx.scope().reply.to_string();
        let socket = SocketOpen { address: &address };
        match model::bind(&mut redis, &dk, &school, &token, &device, Some(socket)).await? {
            Bind::UnknownToken => refuse(ctx, CLOSE_UNKNOWN_TOKEN, "unknown_token", "unknown_token", &token),
            Bind::Mismatch { school } => {
                METRICS.binding_check("socket", "rejected");
                tracing::warn!(%token, %school, %device, via = "socket", detail = "screen_bound", "device_binding_reject");
                refuse(ctx, CLOSE_SCREEN_BOUND, "screen_bound", "screen_bound", &token);
            }
            Bind::Ok {
                snapshot,
                binding,
                reconnect,
            } => {
                METRICS.binding_check("socket", binding.label());
                METRICS.ws_connect("accepted");
                if reconnect {
                    METRICS.ws_reconnects.inc();
                }
                if binding == model::Binding::Bound {
                    tracing::info!(%token, school = %snapshot.school, %device, via = "socket", "device bound");
                }
                let group = model::school_group(&snapshot.school);
                let since = match since(ctx) {
                    Ok(since) => since,
                    Err(detail) => {
                        tracing::warn!(%token, detail, "display: malformed since/epoch ignored; joining from now");
                        None
                    }
                };
                ctx.accept();
                let recovering = since.is_some();
                match since {
                    Some((seq, epoch)) => ctx.group_add_since(group.clone(), seq, epoch),
                    None => ctx.group_add(group.clone()),
                }
                ctx.group_add(model::ALL_GROUP);
                ctx.send_text(json!({"type": "hello", "revision": snapshot.revision}).to_string());
                tracing::info!(%group, %token, revision = snapshot.revision, reconnect, recovering, "WS connected");
            }
        }
        Ok(())
    }

    async fn receive(&self, ctx: &mut Context, message: Message) -> ConsumerResult {
        let Message::Text(text) = message else {
            return Ok(());
        };
        let kind = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
        match kind.as_deref() {
            Some("ping") => ctx.send_text(json!({"type": "pong"}).to_string()),
            _ => ctx.send_text(json!({"type": "error", "detail": "expected {\"type\": \"ping\"}"}).to_string()),
        }
        Ok(())
    }

    /// Forgets the socket; counted and logged only if it had been accepted
    /// as a screen's socket (refused ones were never recorded).
    async fn disconnect(&self, ctx: &mut Context, code: u16) -> ConsumerResult {
        let mut redis = ctx.redis();
        let dk = DisplayKeys::new(ctx.keys());
        let token = ctx.query_param("token").unwrap_or_default();
        let Some(school) = model::school_of(&mut redis, &dk, &token).await? else {
            return Ok(());
        };
        let address = ctx.scope().reply.to_string();
        if model::socket_closed(&mut redis, &dk, &school, &token, &address).await? {
            METRICS.ws_disconnect(code);
            tracing::info!(group = %model::school_group(&school), %token, code, "WS disconnected");
        }
        Ok(())
    }
}

/// The position a screen joins its school's group since: `since` (a whole
/// number, the `seq` of its last broadcast) with its `epoch` (digits; may be
/// left out with since 0, "from the start"). `None` without `since`.
fn since(ctx: &Context) -> Result<Option<(u64, String)>, &'static str> {
    parse_since(ctx.query_param("since").as_deref(), ctx.query_param("epoch").as_deref())
}

fn parse_since(since: Option<&str>, epoch: Option<&str>) -> Result<Option<(u64, String)>, &'static str> {
    let Some(since) = since else {
        return Ok(None);
    };
    let Ok(seq) = since.parse::<u64>() else {
        return Err("since is not a whole number >= 0");
    };
    match epoch.unwrap_or_default() {
        "" if seq == 0 => Ok(Some((0, String::new()))),
        epoch if (1..=32).contains(&epoch.len()) && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some((seq, epoch.to_owned())))
        }
        _ => Err("epoch is not the epoch of a broadcast"),
    }
}

/// Appends an unsolicited reply to an interface's reply stream, only if the
/// stream exists (an interface that is gone must not get a stream without
/// TTL). KEYS: reply stream; ARGV: msgpack reply.
static SEND_TO_CONNECTION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1])
return 1
"#,
    )
});

/// Closes open sockets by reply address with `code` (one reply each, on
/// their interface's stream; the interface applies it like any other reply).
/// Returns how many were sent; addresses of interfaces that are gone are
/// skipped.
pub async fn close_sockets<C: ConnectionLike>(
    con: &mut C,
    dk: &DisplayKeys,
    addresses: &[String],
    code: u16,
    reason: &str,
) -> RedisResult<usize> {
    let mut sent = 0;
    for text in addresses {
        let Some(address) = ReplyAddress::parse(text) else {
            continue;
        };
        let close = Action::Close {
            code,
            reason: reason.to_owned(),
        };
        let reply = encode(&Reply::new(address.conn, None, vec![close]));
        let appended: i64 = SEND_TO_CONNECTION
            .key(dk.base.reply_stream(&address.interface))
            .arg(reply)
            .invoke_async(con)
            .await?;
        sent += appended as usize;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn a_position_is_a_whole_seq_with_its_epoch() {
        assert_eq!(parse_since(None, None), Ok(None));
        assert_eq!(parse_since(None, Some("17")), Ok(None));
        assert_eq!(parse_since(Some("4"), Some("17")), Ok(Some((4, "17".to_owned()))));
        assert_eq!(parse_since(Some("0"), None), Ok(Some((0, String::new()))));
        assert_eq!(parse_since(Some("0"), Some("")), Ok(Some((0, String::new()))));
        assert!(parse_since(Some("4"), None).is_err());
        assert!(parse_since(Some("-1"), Some("17")).is_err());
        assert!(parse_since(Some("1.5"), Some("17")).is_err());
        assert!(parse_since(Some(""), Some("17")).is_err());
        assert!(parse_since(Some("4"), Some("x17")).is_err());
        assert!(parse_since(Some("4"), Some(&"1".repeat(33))).is_err());
    }
}
