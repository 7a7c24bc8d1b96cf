//! What every task of the interface shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::{shards, Keys};

use crate::bus::backlog::Backlogs;
use crate::bus::groups::Groups;
use crate::bus::outbound::Outbound;
use crate::bus::registry::Registry;
use crate::config::Config;
use crate::front::admission::Admission;
use crate::front::forwarded::TrustedProxies;
use crate::front::router::Routes;
use crate::front::static_files::StaticFiles;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::websocket::limits::ConnLimits;

pub struct Shared {
    pub config: Config,
    /// This interface's id; names its reply stream.
    pub id: String,
    pub keys: Keys,
    /// WebSocket routes.
    pub routes: Routes,
    /// HTTP routes (requests go to workers).
    pub http_routes: Routes,
    pub statics: StaticFiles,
    /// The shared, self-reconnecting Redis connection.
    pub redis: Redis,
    /// Shards per channel stream (`--channel-shards`, or one per primary).
    pub shards: u16,
    /// Every routed channel's shard streams.
    streams: HashMap<Arc<str>, Vec<Arc<str>>>,
    pub registry: Arc<Registry>,
    pub groups: Arc<Groups>,
    pub outbound: Outbound,
    /// What each channel holds for its workers; full channels refuse new work.
    pub backlogs: Arc<Backlogs>,
    pub metrics: Arc<Metrics>,
    /// Connection ceilings and the Origin allowlist, from the config.
    pub admission: Arc<Admission>,
    /// The per-connection limits of WebSockets, from the config.
    pub limits: ConnLimits,
    /// `--trusted-proxy`: whose forwarding headers name the client.
    pub proxies: TrustedProxies,
    pub shutdown: Shutdown,
    pub started: Instant,
    /// Set by the presence loop from its last Redis round trip.
    redis_ok: AtomicBool,
    /// Live, not stopping, workers per channel, as the presence loop last saw them.
    live_workers: Mutex<HashMap<String, usize>>,
    /// Whether the presence loop has read the workers at least once: until then
    /// no channel counts as unserved (a fresh interface does not refuse work).
    workers_known: AtomicBool,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        id: String,
        (routes, http_routes): (Routes, Routes),
        statics: StaticFiles,
        redis: Redis,
        shards: u16,
        registry: Arc<Registry>,
        groups: Arc<Groups>,
        outbound: Outbound,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Shared {
        let keys = Keys::new(config.prefix.clone());
        let max_connections = config.effective_max_connections();
        metrics
            .connections_limit
            .set(max_connections.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)));
        let streams: HashMap<Arc<str>, Vec<Arc<str>>> = routes
            .channels()
            .into_iter()
            .chain(http_routes.channels())
            .map(|channel| {
                let streams = keys
                    .channel_streams(&channel, shards)
                    .into_iter()
                    .map(Arc::from)
                    .collect();
                (channel, streams)
            })
            .collect();
        let backlogs = Arc::new(Backlogs::new(streams.iter().map(|(channel, shard_streams)| {
            let limit = config.backlog_limit(channel);
            (channel.clone(), shard_streams.clone(), limit)
        })));
        let admission = Admission::new(
            max_connections,
            config.max_connections_per_ip,
            config.allowed_origins.clone(),
        );
        let limits = config.conn_limits();
        let proxies = TrustedProxies::new(config.trusted_proxies.clone());
        Shared {
            limits,
            proxies,
            config,
            id,
            keys,
            routes,
            http_routes,
            statics,
            redis,
            shards,
            streams,
            registry,
            groups,
            outbound,
            backlogs,
            metrics,
            admission,
            shutdown,
            started: Instant::now(),
            // Not ready until the presence loop's first round trip proves Redis answers.
            redis_ok: AtomicBool::new(false),
            live_workers: Mutex::default(),
            workers_known: AtomicBool::new(false),
        }
    }

    /// `/metrics` and `/status` are served on `--admin-bind`, not the public port.
    pub fn admin_elsewhere(&self) -> bool {
        self.config.admin_bind.is_some()
    }

    pub fn redis_ok(&self) -> bool {
        self.redis_ok.load(Ordering::Relaxed)
    }

    pub fn set_redis_ok(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
    }

    pub fn live_workers(&self) -> HashMap<String, usize> {
        self.live_workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set_live_workers(&self, workers: HashMap<String, usize>) {
        for channel in self.routed_channels() {
            self.metrics
                .channel_workers(&channel, workers.get(&*channel).copied().unwrap_or(0));
        }
        *self
            .live_workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = workers;
        self.workers_known.store(true, Ordering::Relaxed);
    }

    /// True when `channel` has no live worker as far as this interface knows
    /// (false until the workers were read once): its handshakes and requests
    /// get 503 at once instead of waiting for an answer nobody will give.
    pub fn unserved(&self, channel: &str) -> bool {
        self.workers_known.load(Ordering::Relaxed)
            && self
                .live_workers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(channel)
                .is_none_or(|live| *live == 0)
    }

    /// The routed channels without a live worker, as [`Shared::unserved`] sees them.
    pub fn unserved_channels(&self) -> Vec<Arc<str>> {
        self.routed_channels()
            .into_iter()
            .filter(|channel| self.unserved(channel))
            .collect()
    }

    /// The shard stream a connection's messages go to (its shard of the channel).
    pub fn stream_for(&self, channel: &str, conn: u64) -> Arc<str> {
        match self.streams.get(channel) {
            Some(streams) => streams[usize::from(shards::shard_of(conn, self.shards))].clone(),
            // Routes are fixed at start, so every routed channel is in the table.
            None => self
                .keys
                .channel_stream(channel, shards::shard_of(conn, self.shards))
                .into(),
        }
    }

    /// Every channel a route of either kind leads to.
    pub fn routed_channels(&self) -> Vec<Arc<str>> {
        let mut channels = self.routes.channels();
        channels.extend(self.http_routes.channels());
        channels.sort();
        channels.dedup();
        channels
    }
}
