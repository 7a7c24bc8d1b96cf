//! `echo` on `/ws/echo/`: sends every message back unchanged (text stays
//! text, binary stays binary). Used for RFC 6455 conformance runs, and by the
//! reliability tests through the test-only [`faults`] triggers.

use async_trait::async_trait;

use crate::api::app::Apps;
use crate::api::consumer::{ConsumerResult, Message, WebSocketConsumer};
use crate::api::context::Context;
use crate::faults;

pub struct Echo;

#[async_trait]
impl WebSocketConsumer for Echo {
    async fn receive(&self, ctx: &mut Context, message: Message) -> ConsumerResult {
        let bytes: &[u8] = match &message {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
        };
        faults::trip(bytes).map_err(anyhow::Error::msg)?;
        match message {
            Message::Text(text) => ctx.send_text(text),
            Message::Binary(bytes) => ctx.send_bytes(bytes),
        }
        Ok(())
    }
}

pub fn app() -> Apps {
    Apps::new().websocket("echo", Echo)
}
