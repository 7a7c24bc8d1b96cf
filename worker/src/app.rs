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
use crate::periodic::PeriodicContext;

pub type PeriodicFn = Arc<
    dyn Fn(PeriodicContext) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
        + Send
        + Sync,
>;

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

/// Everything one worker binary can serve.
#[derive(Clone, Default)]
pub struct Apps {
    pub(crate) websocket: Vec<(String, Arc<dyn WebSocketConsumer>)>,
    pub(crate) periodic: Vec<Periodic>,
}

impl Apps {
    pub fn new() -> Apps {
        Apps::default()
    }

    /// Serves WebSocket connections routed to `channel` with `consumer`.
    pub fn websocket(
        mut self,
        channel: impl Into<String>,
        consumer: impl WebSocketConsumer,
    ) -> Apps {
        self.websocket.push((channel.into(), Arc::new(consumer)));
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
        self.websocket.extend(other.websocket);
        self.periodic.extend(other.periodic);
        self
    }

    pub fn channels(&self) -> Vec<String> {
        self.websocket.iter().map(|(c, _)| c.clone()).collect()
    }
}
