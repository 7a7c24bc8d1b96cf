//! Apps: what a worker binary can serve, by channel.
//!
//! A worker binary registers its consumers (one channel each) and periodic
//! tasks, then runs. `--only-channels` / `--exclude-channels` pick which of
//! them a given process serves, so each channel can have its own worker count.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::consumer::WebSocketConsumer;
use crate::http::{HttpApp, RequestBody, ServiceApp};
use crate::periodic::PeriodicContext;

pub type PeriodicFn =
    Arc<dyn Fn(PeriodicContext) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// A task that runs once per tick across the whole worker pool.
#[derive(Clone)]
pub struct Periodic {
    /// Unique name; also names the tick lock.
    pub name: String,
    /// The channel whose workers run it (it runs where that channel is served).
    pub channel: String,
    pub every: Duration,
    pub run: PeriodicFn,
}

/// What serves one channel.
#[derive(Clone)]
pub enum Consumer {
    WebSocket(Arc<dyn WebSocketConsumer>),
    Http(Arc<dyn HttpApp>),
}

impl Consumer {
    /// `websocket` or `http`: the kind of events the channel expects.
    pub fn kind(&self) -> &'static str {
        match self {
            Consumer::WebSocket(_) => "websocket",
            Consumer::Http(_) => "http",
        }
    }
}

/// Everything one worker binary can serve.
#[derive(Clone, Default)]
pub struct Apps {
    pub(crate) consumers: Vec<(String, Consumer)>,
    pub(crate) periodic: Vec<Periodic>,
}

impl Apps {
    pub fn new() -> Apps {
        Apps::default()
    }

    /// Serves WebSocket connections routed to `channel` with `consumer`.
    pub fn websocket(mut self, channel: impl Into<String>, consumer: impl WebSocketConsumer) -> Apps {
        self.consumers
            .push((channel.into(), Consumer::WebSocket(Arc::new(consumer))));
        self
    }

    /// Serves HTTP requests routed to `channel` with a `tower::Service` — an
    /// axum `Router`, say. See [`crate::http`].
    pub fn http<S, B>(mut self, channel: impl Into<String>, service: S) -> Apps
    where
        S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<crate::http::BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::http::BoxError>,
    {
        self.consumers
            .push((channel.into(), Consumer::Http(Arc::new(ServiceApp(service)))));
        self
    }

    /// Runs `run` every `every`, once per tick for the whole pool, on the
    /// workers that serve `channel`.
    pub fn periodic<F, Fut>(mut self, name: &str, channel: &str, every: Duration, run: F) -> Apps
    where
        F: Fn(PeriodicContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.periodic.push(Periodic {
            name: name.to_owned(),
            channel: channel.to_owned(),
            every,
            run: Arc::new(move |ctx| Box::pin(run(ctx))),
        });
        self
    }

    /// Merges another set of apps into this one.
    pub fn with(mut self, other: Apps) -> Apps {
        self.consumers.extend(other.consumers);
        self.periodic.extend(other.periodic);
        self
    }

    pub fn channels(&self) -> Vec<String> {
        self.consumers.iter().map(|(c, _)| c.clone()).collect()
    }
}
