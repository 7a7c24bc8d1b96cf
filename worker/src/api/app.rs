//! Apps: what a worker binary can serve, by channel.
//!
//! A worker binary registers its consumers (one channel each) and periodic
//! tasks, then runs. `--only-channels` / `--exclude-channels` pick which of
//! them a given process serves, so each channel can have its own worker count.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::api::consumer::WebSocketConsumer;
use crate::api::http_app::{HttpApp, RequestBody, ServiceApp};
use crate::api::periodic::PeriodicContext;

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

/// What serves one channel: a WebSocket consumer or an HTTP app.
#[derive(Clone)]
pub enum ChannelApp {
    WebSocket(Arc<dyn WebSocketConsumer>),
    Http(Arc<dyn HttpApp>),
}

impl ChannelApp {
    /// `websocket` or `http`: the kind of events the channel expects.
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelApp::WebSocket(_) => "websocket",
            ChannelApp::Http(_) => "http",
        }
    }
}

/// Everything one worker binary can serve.
#[derive(Clone, Default)]
pub struct Apps {
    pub(crate) channels: Vec<(String, ChannelApp)>,
    pub(crate) periodic: Vec<Periodic>,
}

impl Apps {
    pub fn new() -> Apps {
        Apps::default()
    }

    /// Serves WebSocket connections routed to `channel` with `consumer`.
    pub fn websocket(mut self, channel: impl Into<String>, consumer: impl WebSocketConsumer) -> Apps {
        self.channels
            .push((channel.into(), ChannelApp::WebSocket(Arc::new(consumer))));
        self
    }

    /// Serves HTTP requests routed to `channel` with a `tower::Service` — an
    /// axum `Router`, say. See [`crate::http`].
    pub fn http<S, B>(mut self, channel: impl Into<String>, service: S) -> Apps
    where
        S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<crate::api::http_app::BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::api::http_app::BoxError>,
    {
        self.channels
            .push((channel.into(), ChannelApp::Http(Arc::new(ServiceApp(service)))));
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
        self.channels.extend(other.channels);
        self.periodic.extend(other.periodic);
        self
    }

    /// Every channel registered.
    pub fn channel_names(&self) -> Vec<String> {
        self.channels.iter().map(|(c, _)| c.clone()).collect()
    }
}
