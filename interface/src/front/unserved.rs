//! Work for a channel that cannot take it is refused at once: no live worker
//! serves it, or its backlog is past `--max-backlog` (`bus/backlog.rs`).
//!
//! Every interface shares the same workers, so a channel without one is not a
//! reason to take interfaces out of the load balancer (that took *every*
//! interface out, and every other channel with it). Instead the handshake or
//! HTTP request routed to that channel gets 503 with `Retry-After` straight
//! away — not after `--connect-timeout` or `--http-timeout` — while the other
//! channels carry on. `/status`, the `switchyard_channel_unserved` gauge and
//! the `SwitchyardChannelUnserved` alert tell the operator. The presence loop
//! reads the workers every second, so a channel is served again within about
//! a second of its first worker starting. A full backlog is checked here too,
//! once for handshakes and HTTP requests, before anything is appended.

use http::Response;

use crate::bus::backlog;
use crate::front::response::{try_again_later, Body};
use crate::state::Shared;

/// Seconds a client of an unserved channel is told to wait before trying again.
const UNSERVED_RETRY_AFTER_SECONDS: u64 = 2;

/// `Some(503)` when `channel` has no live worker or its backlog is full;
/// counted by `kind` (`websocket` or `http`).
pub fn refusal(shared: &Shared, kind: &'static str, channel: &str) -> Option<Response<Body>> {
    if shared.unserved(channel) {
        shared.metrics.unserved(kind, channel);
        tracing::debug!(channel, kind, "no live worker serves this channel; answered 503");
        let text = format!("no worker serves channel {channel} right now; try again later\n");
        return Some(try_again_later(&text, UNSERVED_RETRY_AFTER_SECONDS));
    }
    if shared.backlogs.is_full(channel) {
        let refused = if kind == "websocket" { "handshake" } else { kind };
        shared.metrics.backlog_refused(channel, refused);
        let text = "this channel's backlog is full; try again later\n";
        return Some(try_again_later(text, backlog::RETRY_AFTER_SECONDS));
    }
    None
}
