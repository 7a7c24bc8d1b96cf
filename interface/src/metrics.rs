//! Prometheus metrics of the interface.
//!
//! One registry, built at start-up; tasks hold an `Arc<Metrics>` and bump the
//! counters they own. `/metrics` renders the registry in the text format.
//! Every name carries the `switchyard_` prefix
//! ([`switchyard_protocol::METRIC_PREFIX`]), as the workers' do.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `in` (client → worker) or `out` (worker → client).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `max_connections`, `per_ip` or `origin` (see [`crate::front::admission::Refusal`]).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabel {
    pub channel: String,
    /// `message` (WebSocket closed with 1013), `handshake` or `http` (503).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `redelivered` (appended again) or `closed` (1013 after --redis-hold more).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnservedLabel {
    /// `websocket` (a handshake) or `http` (a request).
    pub kind: &'static str,
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

/// The kinds of `switchyard_websocket_errors_total` (docs/operations.md, "Metrics").
const ERROR_KINDS: [&str; 13] = [
    "handshake_timeout",
    "handshake_refused",
    "redis_unavailable",
    "bad_reply",
    "accept",
    "upgrade_timeout",
    "invalid_utf8",
    "message_too_big",
    "policy_violation",
    "protocol_error",
    "idle_timeout",
    "slow_reader",
    "rate_limited",
];

pub struct Metrics {
    pub registry: Registry,
    pub connections_active: Gauge,
    /// The WebSocket connection ceiling in force (0 = unlimited).
    pub connections_limit: Gauge,
    /// Upgrades turned away by admission, by reason.
    pub handshakes_refused: Family<ReasonLabel, Counter>,
    /// TCP connections closed because a request head did not arrive in time.
    pub header_timeouts: Counter,
    /// Requests answered 431 (or 414) by hyper: head over --max-header-size.
    pub headers_too_large: Counter,
    pub messages: Family<DirectionLabel, Counter>,
    pub errors: Family<KindLabel, Counter>,
    /// Enqueue → done, per client message.
    pub message_duration: Histogram,
    pub redis_errors: Counter,
    pub redis_batches: Counter,
    /// Every HTTP response, by status (WebSocket handshakes included).
    pub http_requests: Family<StatusLabel, Counter>,
    /// Request start → response head.
    pub http_duration: Histogram,
    /// Pings the interface sent to keep WebSockets alive (`--ping-interval`).
    pub pings_sent: Counter,
    /// Entries each channel holds for workers (queued and in hand), as last measured.
    pub channel_backlog: Family<ChannelLabel, Gauge>,
    /// Work refused because its channel's backlog was full.
    pub backlog_refusals: Family<RefusalLabel, Counter>,
    /// Messages left unanswered past --redeliver-after, by what was done.
    pub stalled_messages: Family<OutcomeLabel, Counter>,
    /// Live workers of each routed channel, as the presence loop last saw them.
    pub channel_workers: Family<ChannelLabel, Gauge>,
    /// 1 while a routed channel has no live worker (its requests get 503 at once).
    pub channel_unserved: Family<ChannelLabel, Gauge>,
    /// Handshakes and HTTP requests answered 503 at once: their channel has no live worker.
    pub unserved_requests: Family<UnservedLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(switchyard_protocol::METRIC_PREFIX);
        let connections_active = Gauge::default();
        let connections_limit = Gauge::default();
        let handshakes_refused = Family::<ReasonLabel, Counter>::default();
        let header_timeouts = Counter::default();
        let headers_too_large = Counter::default();
        let messages = Family::<DirectionLabel, Counter>::default();
        let errors = Family::<KindLabel, Counter>::default();
        let message_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let redis_errors = Counter::default();
        let redis_batches = Counter::default();
        let http_requests = Family::<StatusLabel, Counter>::default();
        let http_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let pings_sent = Counter::default();
        let channel_workers = Family::<ChannelLabel, Gauge>::default();
        let channel_unserved = Family::<ChannelLabel, Gauge>::default();
        let unserved_requests = Family::<UnservedLabel, Counter>::default();
        registry.register(
            "channel_workers",
            "Live workers of each routed channel, as this interface last saw them",
            channel_workers.clone(),
        );
        registry.register(
            "channel_unserved",
            "1 while a routed channel has no live worker: its handshakes and requests get 503 at once",
            channel_unserved.clone(),
        );
        registry.register(
            "unserved_requests",
            "WebSocket handshakes and HTTP requests answered 503 at once because their channel has no live worker",
            unserved_requests.clone(),
        );
        registry.register(
            "websocket_connections_active",
            "Open WebSocket connections",
            connections_active.clone(),
        );
        registry.register(
            "websocket_connections_limit",
            "Most WebSocket connections admitted at once (0 = unlimited)",
            connections_limit.clone(),
        );
        registry.register(
            "websocket_handshakes_refused",
            "WebSocket upgrades refused before any worker was asked, by reason",
            handshakes_refused.clone(),
        );
        registry.register(
            "http_header_timeouts",
            "TCP connections closed because the request head did not arrive within --header-read-timeout",
            header_timeouts.clone(),
        );
        registry.register(
            "http_headers_too_large",
            "Requests refused with 431 (or 414 for a long URI): request head over --max-header-size",
            headers_too_large.clone(),
        );
        registry.register(
            "websocket_messages",
            "WebSocket messages by direction",
            messages.clone(),
        );
        registry.register("websocket_errors", "WebSocket errors by kind", errors.clone());
        registry.register(
            "websocket_message_duration_seconds",
            "Time from enqueueing a client message to its done marker",
            message_duration.clone(),
        );
        registry.register("redis_errors", "Failed Redis commands", redis_errors.clone());
        registry.register(
            "redis_batches",
            "Pipelined batches of appends sent to Redis",
            redis_batches.clone(),
        );
        registry.register("http_requests", "HTTP responses by status code", http_requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time from an HTTP request's arrival to its response head",
            http_duration.clone(),
        );
        registry.register(
            "websocket_pings_sent",
            "Pings sent to WebSocket clients to keep their connections alive",
            pings_sent.clone(),
        );
        let channel_backlog = Family::<ChannelLabel, Gauge>::default();
        registry.register(
            "channel_backlog",
            "Entries a channel holds for workers (queued and in hand), summed over its shards",
            channel_backlog.clone(),
        );
        let backlog_refusals = Family::<RefusalLabel, Counter>::default();
        registry.register(
            "channel_backlog_refusals",
            "Messages, handshakes and HTTP requests refused because their channel's backlog was full",
            backlog_refusals.clone(),
        );
        let stalled_messages = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "websocket_stalled_messages",
            "Client messages unanswered past --redeliver-after: appended again, or their connection closed with 1013",
            stalled_messages.clone(),
        );
        // Every kind and reason at 0 from the start, so rates and alerts see a series
        // (not an absent one) before the first error.
        for kind in ERROR_KINDS {
            let _ = errors.get_or_create(&KindLabel { kind });
        }
        for outcome in ["redelivered", "closed"] {
            let _ = stalled_messages.get_or_create(&OutcomeLabel { outcome });
        }
        for reason in ["max_connections", "per_ip", "origin"] {
            let _ = handshakes_refused.get_or_create(&ReasonLabel { reason });
        }
        Metrics {
            registry,
            connections_active,
            connections_limit,
            handshakes_refused,
            header_timeouts,
            headers_too_large,
            messages,
            errors,
            message_duration,
            redis_errors,
            redis_batches,
            http_requests,
            http_duration,
            pings_sent,
            channel_backlog,
            backlog_refusals,
            stalled_messages,
            channel_workers,
            channel_unserved,
            unserved_requests,
        }
    }

    pub fn channel_backlog(&self, channel: &str, size: u64) {
        let label = ChannelLabel {
            channel: channel.to_owned(),
        };
        self.channel_backlog
            .get_or_create(&label)
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    pub fn backlog_refused(&self, channel: &str, kind: &'static str) {
        let label = RefusalLabel {
            channel: channel.to_owned(),
            kind,
        };
        self.backlog_refusals.get_or_create(&label).inc();
    }

    pub fn stalled(&self, outcome: &'static str) {
        self.stalled_messages.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Publishes each routed channel's live workers (and whether it is unserved).
    pub fn channel_workers(&self, channel: &str, live: usize) {
        let label = ChannelLabel {
            channel: channel.to_owned(),
        };
        self.channel_workers
            .get_or_create(&label)
            .set(i64::try_from(live).unwrap_or(i64::MAX));
        self.channel_unserved.get_or_create(&label).set(i64::from(live == 0));
    }

    /// Counts a handshake (`websocket`) or request (`http`) refused for want of a worker.
    pub fn unserved(&self, kind: &'static str, channel: &str) {
        self.unserved_requests
            .get_or_create(&UnservedLabel {
                kind,
                channel: channel.to_owned(),
            })
            .inc();
    }

    pub fn message(&self, direction: &'static str) {
        self.messages.get_or_create(&DirectionLabel { direction }).inc();
    }

    pub fn handshake_refused(&self, reason: &'static str) {
        self.handshakes_refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn http_request(&self, status: u16, elapsed: std::time::Duration) {
        self.http_requests.get_or_create(&StatusLabel { status }).inc();
        self.http_duration.observe(elapsed.as_secs_f64());
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
