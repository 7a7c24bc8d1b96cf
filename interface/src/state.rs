//! What every task of the interface shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use redis::aio::ConnectionManager;
use switchyard_protocol::Keys;

use crate::config::Config;
use crate::groups::Groups;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::registry::Registry;
use crate::router::Routes;
use crate::shutdown::Shutdown;

pub struct Shared {
    pub config: Config,
    /// This interface's id; names its reply stream.
    pub id: String,
    pub keys: Keys,
    pub routes: Routes,
    /// The shared, self-reconnecting Redis connection.
    pub redis: ConnectionManager,
    pub registry: Arc<Registry>,
    pub groups: Arc<Groups>,
    pub outbound: Outbound,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    pub started: Instant,
    /// Set by the presence loop from its last Redis round trip.
    redis_ok: AtomicBool,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        id: String,
        routes: Routes,
        redis: ConnectionManager,
        registry: Arc<Registry>,
        groups: Arc<Groups>,
        outbound: Outbound,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Shared {
        let keys = Keys::new(config.prefix.clone());
        Shared {
            config,
            id,
            keys,
            routes,
            redis,
            registry,
            groups,
            outbound,
            metrics,
            shutdown,
            started: Instant::now(),
            redis_ok: AtomicBool::new(true),
        }
    }

    pub fn redis_ok(&self) -> bool {
        self.redis_ok.load(Ordering::Relaxed)
    }

    pub fn set_redis_ok(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
    }
}
