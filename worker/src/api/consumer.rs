//! The consumer API: what an application implements.
//!
//! A WebSocket consumer reacts to four events of a connection. Unlike an
//! in-process server, consecutive events of one connection may run on
//! different worker processes, so a consumer keeps no per-connection state in
//! memory: what must survive goes into the [`Session`](crate::Session), which
//! is committed atomically with the replies.

use async_trait::async_trait;

use crate::api::context::Context;

/// A complete client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// Errors a consumer may return. A Redis error is retried (the message is
/// handled again); any other error is logged and the connection is closed
/// with 1011.
pub type ConsumerResult = anyhow::Result<()>;

#[async_trait]
pub trait WebSocketConsumer: Send + Sync + 'static {
    /// A client asks to connect. Call [`Context::accept`] to let it in; without
    /// it (or with [`Context::close`]) the handshake is refused with 403.
    async fn connect(&self, ctx: &mut Context) -> ConsumerResult {
        ctx.accept();
        Ok(())
    }

    /// The client sent a message.
    async fn receive(&self, ctx: &mut Context, message: Message) -> ConsumerResult;

    /// The socket is gone (`code` is the close code; 1006 if it just dropped).
    async fn disconnect(&self, _ctx: &mut Context, _code: u16) -> ConsumerResult {
        Ok(())
    }

    /// Whether [`receive`](Self::receive) always reads the session ([`Context::session`]).
    /// Then a worker that reads many client messages at once reads their sessions together,
    /// with the guard of their commit: one round trip per batch instead of one per message,
    /// and less Redis work. A consumer that says so but does not read its session only costs
    /// Redis a read per message it did not need.
    fn reads_session(&self) -> bool {
        false
    }

    /// The interface is shutting down; a last chance to send a goodbye before
    /// it closes the socket with 1001.
    async fn drain(&self, _ctx: &mut Context) -> ConsumerResult {
        Ok(())
    }
}
