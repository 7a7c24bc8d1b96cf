//! Switchyard workers: the consumer API and the worker runtime.
//!
//! Write a consumer ([`WebSocketConsumer`]), register it for a channel in
//! [`Apps`], and run it with [`run`] — that is a worker binary. Reading order:
//!
//! 1. [`api`]: what an application sees — consumers, their context and
//!    session, HTTP apps (`tower::Service`s: an axum `Router`), periodic
//!    tasks, and [`Apps`], which registers them per channel;
//! 2. [`runtime`]: how a message is read ([`runtime`]'s `intake`), handled
//!    (`dispatch`, `http_request`) and committed once (`commit`), and the
//!    pool's upkeep (`maintenance`, `ticks`);
//! 3. [`config`] and [`metrics`]: the flags and what `--metrics-bind` serves;
//! 4. [`apps`]: the built-in apps (echo, chat, rooms, the HTTP example, the
//!    school display);
//! 5. [`faults`]: test-only fault triggers (environment variables) that let the
//!    reliability tests make a consumer panic, fail or abort the process.

pub mod api;
pub mod apps;
pub mod config;
pub mod faults;
pub mod metrics;
pub mod runtime;

pub use api::app::{Apps, ChannelApp};
pub use api::consumer::{ConsumerResult, Message, WebSocketConsumer};
pub use api::context::{Context, Scope};
pub use api::http_app::{HttpApp, RequestBody, RequestInfo, WorkerRedis};
pub use api::once::OnceScript;
pub use api::periodic::PeriodicContext;
pub use api::session::Session;
pub use async_trait::async_trait;
pub use config::WorkerConfig;
pub use runtime::run;
