//! `chat` on `/ws/chat/`: the message counter service.
//!
//! Every text message is answered with `{"count": n}`. The count lives in the
//! session, so with `?session_uuid=…` it survives reconnects — and worker
//! restarts, since no worker holds it. Every connection joins group `chat`,
//! which gets a heartbeat `{"ts": "<ISO-8601 UTC>"}` every
//! `CHAT_HEARTBEAT_SECONDS` (default 30) from exactly one worker of the pool.
//! When the interface shuts down, each client gets `{"bye": true, "total": n}`.

use std::time::Duration;

use async_trait::async_trait;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::api::app::Apps;
use crate::api::consumer::{ConsumerResult, Message, WebSocketConsumer};
use crate::api::context::Context;
use crate::api::periodic::PeriodicContext;

pub const GROUP: &str = "chat";
const COUNT: &str = "count";

pub struct Chat;

#[async_trait]
impl WebSocketConsumer for Chat {
    async fn connect(&self, ctx: &mut Context) -> ConsumerResult {
        ctx.accept();
        ctx.group_add(GROUP);
        Ok(())
    }

    async fn receive(&self, ctx: &mut Context, message: Message) -> ConsumerResult {
        if let Message::Binary(_) = message {
            return Ok(());
        }
        let session = ctx.session().await?;
        let count = session.get_u64(COUNT) + 1;
        session.set(COUNT, count);
        ctx.send_text(serde_json::json!({ "count": count }).to_string());
        Ok(())
    }

    fn reads_session(&self) -> bool {
        true
    }

    async fn drain(&self, ctx: &mut Context) -> ConsumerResult {
        let total = ctx.session().await?.get_u64(COUNT);
        ctx.send_text(serde_json::json!({ "bye": true, "total": total }).to_string());
        Ok(())
    }
}

/// Seconds between heartbeats, from `CHAT_HEARTBEAT_SECONDS`.
pub fn heartbeat_every() -> anyhow::Result<Duration> {
    match std::env::var("CHAT_HEARTBEAT_SECONDS") {
        Err(_) => Ok(Duration::from_secs(30)),
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(seconds) if seconds > 0.0 && seconds <= 86_400.0 => Ok(Duration::from_secs_f64(seconds)),
            _ => anyhow::bail!("CHAT_HEARTBEAT_SECONDS: `{text}` must be a number of seconds in (0, 86400]"),
        },
    }
}

async fn heartbeat(mut ctx: PeriodicContext) -> anyhow::Result<()> {
    let ts = OffsetDateTime::now_utc().format(&Rfc3339)?;
    ctx.group_send_text(GROUP, serde_json::json!({ "ts": ts }).to_string())
        .await?;
    Ok(())
}

pub fn app() -> Apps {
    // An invalid value is reported by `main` before this runs.
    let every = heartbeat_every().unwrap_or(Duration::from_secs(30));
    let mut apps = Apps::new()
        .websocket("chat", Chat)
        .periodic("chat.heartbeat", "chat", every, heartbeat);
    for channel in extra_channels() {
        apps = apps.websocket(channel, Chat);
    }
    apps
}

/// `CHAT_CHANNELS`: more channels served by the same counter (comma
/// separated, e.g. `chat.b,chat.c`), so a load test can spread traffic over
/// several channels (`scripts/bench-cluster`). Their connections join group
/// `chat` too.
fn extra_channels() -> Vec<String> {
    std::env::var("CHAT_CHANNELS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "chat")
        .map(str::to_owned)
        .collect()
}
