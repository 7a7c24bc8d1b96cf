//! Work for a channel that no live worker serves is refused at once.
//!
//! Every interface shares the same workers, so a channel without one is not a
//! reason to take interfaces out of the load balancer (that took *every*
//! interface out, and every other channel with it). Instead the handshake or
//! HTTP request routed to that channel gets 503 with `Retry-After` straight
//! away — not after `--connect-timeout` or `--http-timeout` — while the other
//! channels carry on. `/status`, the `switchyard_channel_unserved` gauge and
//! the `SwitchyardChannelUnserved` alert tell the operator. The presence loop
//! reads the workers every second, so a channel is served again within about
//! a second of its first worker starting.

use http::{header, HeaderValue, Response, StatusCode};

use crate::front::response::{text_response, Body};
use crate::state::Shared;

/// Seconds the client is told to wait before trying again.
const RETRY_AFTER_SECONDS: &str = "2";

/// `Some(503)` when `channel` has no live worker; counted by `kind`
/// (`websocket` or `http`).
pub fn refusal(shared: &Shared, kind: &'static str, channel: &str) -> Option<Response<Body>> {
    if !shared.unserved(channel) {
        return None;
    }
    shared.metrics.unserved(kind, channel);
    tracing::debug!(channel, kind, "no live worker serves this channel; answered 503");
    let mut response = text_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("no worker serves channel {channel} right now; try again later\n"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    Some(response)
}
