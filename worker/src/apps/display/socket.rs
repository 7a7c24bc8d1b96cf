//! `display` on `/ws/display/?token=T&dk=D`: a screen's invalidation socket.
//!
//! The socket carries no data, only "fetch again": on connect the screen
//! joins `school:{id}` (and `display:all`) and gets `{"type": "hello",
//! "revision": n}` so it can tell whether it missed an edit while away; every
//! edit then arrives as `{"type": "invalidate", "revision": n}`.
//! `{"type": "ping"}` → `{"type": "pong"}`.
//!
//! Close codes: 4400 the feature flag is off (accepted first, so browsers see
//! the code), 4404 unknown token, 4408 the screen is bound to another device.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::model::{self, Bind};
use crate::consumer::{ConsumerResult, Message, WebSocketConsumer};
use crate::context::Context;

pub const CHANNEL: &str = "display";

pub struct DisplaySocket;

/// Accepts and closes at once: a browser only sees close codes after the handshake.
fn accept_and_close(ctx: &mut Context, code: u16) {
    ctx.accept();
    ctx.close(code);
}

#[async_trait]
impl WebSocketConsumer for DisplaySocket {
    async fn connect(&self, ctx: &mut Context) -> ConsumerResult {
        let mut redis = ctx.redis();
        let keys = ctx.keys().clone();
        if !model::ws_enabled(&mut redis, &keys).await? {
            accept_and_close(ctx, 4400);
            return Ok(());
        }
        let token = ctx.query_param("token").unwrap_or_default();
        let device = ctx.query_param("dk").unwrap_or_default();
        if device.is_empty() || device.len() > 128 {
            accept_and_close(ctx, 4408);
            return Ok(());
        }
        match model::bind(&mut redis, &keys, &token, &device).await? {
            Bind::UnknownToken => accept_and_close(ctx, 4404),
            Bind::Mismatch => accept_and_close(ctx, 4408),
            Bind::Ok(snapshot) => {
                ctx.accept();
                ctx.group_add(model::school_group(&snapshot.school));
                ctx.group_add(model::ALL_GROUP);
                ctx.send_text(json!({"type": "hello", "revision": snapshot.revision}).to_string());
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
}
