//! `echo` on `/ws/echo/`: sends every message back unchanged (text stays
//! text, binary stays binary). Used for RFC 6455 conformance runs.

use async_trait::async_trait;

use crate::api::app::Apps;
use crate::api::consumer::{ConsumerResult, Message, WebSocketConsumer};
use crate::api::context::Context;

pub struct Echo;

#[async_trait]
impl WebSocketConsumer for Echo {
    async fn receive(&self, ctx: &mut Context, message: Message) -> ConsumerResult {
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
