//! What an application sees: the consumer API.
//!
//! A WebSocket consumer implements [`consumer::WebSocketConsumer`] and works
//! through a [`context::Context`] (replies, group changes, group sends and
//! [`session::Session`] writes, all committed together); an HTTP app is any
//! `tower::Service` ([`http_app`]); periodic tasks get a
//! [`periodic::PeriodicContext`]. Writes an app makes to Redis itself are at
//! least once; [`once`] makes one exactly once per message. [`app::Apps`] registers them per channel.
//! Nothing here talks to Redis on its own: the runtime (`crate::runtime`)
//! reads messages, calls these and commits what they collected.

pub mod app;
pub mod consumer;
pub mod context;
pub mod http_app;
pub mod once;
pub mod periodic;
pub mod session;
