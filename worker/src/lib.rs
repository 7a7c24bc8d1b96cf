//! Switchyard workers: the consumer API and the worker runtime.
//!
//! Write a consumer ([`WebSocketConsumer`]), register it for a channel in
//! [`Apps`], and run it with [`run`] — that is a worker binary. Reading order:
//!
//! 1. [`consumer`], [`context`], [`session`]: the API an application sees;
//!    [`http`]: HTTP consumers are `tower::Service`s (an axum `Router`),
//! 2. [`app`] and [`periodic`]: registering consumers and pool-wide tasks,
//! 3. [`runtime`], [`reader`], [`handler`] (and `http_handler`), [`commit`]: how a message is
//!    read, handled and committed exactly once,
//! 4. [`maintenance`]: liveness, taking over a dead worker's messages, trimming,
//! 5. [`apps`]: the built-in apps (echo, chat, the HTTP example),
//! 6. [`metrics`]: what `--metrics-bind` serves.

pub mod app;
pub mod apps;
pub mod commit;
pub mod config;
pub mod consumer;
pub mod context;
mod handler;
pub mod http;
mod http_handler;
mod maintenance;
pub mod metrics;
pub mod periodic;
mod reader;
pub mod runtime;
pub mod session;

pub use app::{Apps, Consumer};
pub use async_trait::async_trait;
pub use config::WorkerConfig;
pub use consumer::{ConsumerResult, Message, WebSocketConsumer};
pub use context::{Context, Scope};
pub use http::{HttpApp, RequestBody, RequestInfo, WorkerRedis};
pub use periodic::PeriodicContext;
pub use runtime::run;
pub use session::Session;
