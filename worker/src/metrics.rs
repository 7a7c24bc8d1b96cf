//! Prometheus metrics of a worker, served on `--metrics-bind`.
//!
//! An operator scaling a channel needs to see, per worker process, what it
//! handles and how long that takes, how much it holds, and what it rescued
//! from dead workers or had to give up on. One registry, built at start-up;
//! the handler and the maintenance loop bump it; a tiny HTTP server renders it.
//! Every name starts with `switchyard_` ([`switchyard_protocol::METRIC_PREFIX`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

type Labels = Vec<(&'static str, String)>;

/// One channel's handling metrics, shared with their families.
struct ChannelMetrics {
    handling: Histogram,
    handled: Vec<(&'static str, &'static str, Counter)>,
}

impl ChannelMetrics {
    fn handled(&self, event: &str, outcome: &str) -> Option<&Counter> {
        let found = self.handled.iter().find(|(e, o, _)| *e == event && *o == outcome);
        found.map(|(_, _, counter)| counter)
    }
}

pub struct Metrics {
    registry: Registry,
    handled: Family<Labels, Counter>,
    handling: Family<Labels, Histogram>,
    failures: Family<Labels, Counter>,
    watched: Family<Labels, Counter>,
    /// `handled`'s and `handling`'s metrics per channel, looked up once: asking the families
    /// takes an owned label set, six allocations per message.
    by_channel: RwLock<HashMap<String, ChannelMetrics>>,
    pub in_flight: Gauge,
    pub claimed: Counter,
    pub dead_letters: Counter,
    pub redis_errors: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(switchyard_protocol::METRIC_PREFIX);
        let handled = Family::<Labels, Counter>::default();
        let handling =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
        let failures = Family::<Labels, Counter>::default();
        let watched = Family::<Labels, Counter>::default();
        let in_flight = Gauge::default();
        let claimed = Counter::default();
        let dead_letters = Counter::default();
        let redis_errors = Counter::default();
        registry.register(
            "worker_messages_handled",
            "Messages handled, by channel, event type and commit outcome",
            handled.clone(),
        );
        registry.register(
            "worker_message_handling_seconds",
            "Time from reading a message to its commit, by channel",
            handling.clone(),
        );
        registry.register(
            "worker_consumer_failures",
            "Consumer panics and errors absorbed (answered 1011 / 500 and committed), by channel and kind (panic, error)",
            failures.clone(),
        );
        registry.register(
            "worker_watched_commits",
            "Batches tried with the WATCH/MULTI commit (--commit-watch-min; with --read-batches, also read batches), by result: committed, changed (a watched session changed first: the script committed them), skipped (none it could take), error",
            watched.clone(),
        );
        registry.register(
            "worker_messages_in_flight",
            "Messages being handled now",
            in_flight.clone(),
        );
        registry.register(
            "worker_claimed_messages",
            "Messages taken over from dead or stuck workers",
            claimed.clone(),
        );
        registry.register(
            "worker_dead_letters",
            "Entries moved to the dead-letter stream (undecodable, or delivered more than --max-deliveries times)",
            dead_letters.clone(),
        );
        registry.register(
            "worker_redis_errors",
            "Redis errors while handling (each one retried)",
            redis_errors.clone(),
        );
        Metrics {
            registry,
            handled,
            handling,
            failures,
            watched,
            by_channel: RwLock::default(),
            in_flight,
            claimed,
            dead_letters,
            redis_errors,
        }
    }

    /// Records one handled message.
    pub fn handled(&self, channel: &str, event: &'static str, outcome: &'static str, took: Duration) {
        if !self.record_handled(channel, event, outcome, took) {
            self.add_handled(channel, event, outcome);
            self.record_handled(channel, event, outcome, took);
        }
    }

    /// Records a handled message in metrics already looked up; `false` (nothing recorded)
    /// when they are not.
    fn record_handled(&self, channel: &str, event: &str, outcome: &str, took: Duration) -> bool {
        // Nothing here panics with the lock held, so a poisoned lock is still consistent.
        let channels = self.by_channel.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(metrics) = channels.get(channel) else {
            return false;
        };
        let Some(counter) = metrics.handled(event, outcome) else {
            return false;
        };
        counter.inc();
        metrics.handling.observe(took.as_secs_f64());
        true
    }

    /// Looks up the metrics of a channel, event type and outcome not seen before.
    #[cold]
    fn add_handled(&self, channel: &str, event: &'static str, outcome: &'static str) {
        let mut channels = self.by_channel.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let metrics = channels.entry(channel.to_owned()).or_insert_with(|| ChannelMetrics {
            handling: self
                .handling
                .get_or_create(&vec![("channel", channel.to_owned())])
                .clone(),
            handled: Vec::new(),
        });
        if metrics.handled(event, outcome).is_none() {
            let labels = vec![
                ("channel", channel.to_owned()),
                ("type", event.to_owned()),
                ("outcome", outcome.to_owned()),
            ];
            let counter = self.handled.get_or_create(&labels).clone();
            metrics.handled.push((event, outcome, counter));
        }
    }

    /// Records one absorbed consumer failure (`kind`: panic or error).
    pub fn consumer_failed(&self, channel: &str, kind: &'static str) {
        self.failures
            .get_or_create(&vec![("channel", channel.to_owned()), ("kind", kind.to_owned())])
            .inc();
    }

    /// Records one batch tried with the WATCH/MULTI commit.
    pub fn watched_commit(&self, result: &'static str) {
        self.watched.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    /// The registry, then the apps' ([`app_registry`]), in Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut text = String::new();
        let apps = app_registry().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut text, &self.registry);
        let _ = encode_registry(&mut text, &apps);
        let _ = encode_eof(&mut text);
        text
    }
}

/// Where apps register their own metrics (once per process, e.g. from a
/// `LazyLock`); rendered by `/metrics` with the worker's. Names must not
/// clash with the worker's (`worker_*`): prefix them with the app's name.
/// Both registries put `switchyard_` in front of every name.
pub fn app_registry() -> &'static Mutex<Registry> {
    static APPS: OnceLock<Mutex<Registry>> = OnceLock::new();
    APPS.get_or_init(|| Mutex::new(Registry::with_prefix(switchyard_protocol::METRIC_PREFIX)))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Binds `--metrics-bind`; fails at start-up, naming the flag, if it cannot.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-bind: cannot listen on {addr}"))
}

/// Serves `/metrics` (and `/healthz`) until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(answer(&metrics, request.uri().path())) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

fn answer(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "application/json", "{\"status\":\"ok\"}".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line of `rendered` that starts with `prefix`, its value.
    fn value(rendered: &str, prefix: &str) -> Option<f64> {
        let line = rendered.lines().find(|line| line.starts_with(prefix))?;
        line.rsplit(' ').next()?.parse().ok()
    }

    /// Counts kept per channel, event type and outcome (looked up once, then cached) land in
    /// the families that are rendered.
    #[test]
    fn handled_messages_are_counted_by_channel_type_and_outcome() {
        let metrics = Metrics::new();
        let took = Duration::from_millis(2);
        for _ in 0..3 {
            metrics.handled("chat", "websocket.receive", "committed", took);
        }
        metrics.handled("chat", "websocket.receive", "repeated", took);
        metrics.handled("chat", "websocket.connect", "committed", took);
        metrics.handled("echo", "websocket.receive", "committed", took);
        let rendered = metrics.render();
        let handled = |labels: &str| {
            value(
                &rendered,
                &format!("switchyard_worker_messages_handled_total{{{labels}}}"),
            )
        };
        let chat = "channel=\"chat\"";
        assert_eq!(
            handled(&format!("{chat},type=\"websocket.receive\",outcome=\"committed\"")),
            Some(3.0)
        );
        assert_eq!(
            handled(&format!("{chat},type=\"websocket.receive\",outcome=\"repeated\"")),
            Some(1.0)
        );
        assert_eq!(
            handled(&format!("{chat},type=\"websocket.connect\",outcome=\"committed\"")),
            Some(1.0)
        );
        assert_eq!(
            handled("channel=\"echo\",type=\"websocket.receive\",outcome=\"committed\""),
            Some(1.0)
        );
        let seconds = |channel: &str| {
            value(
                &rendered,
                &format!("switchyard_worker_message_handling_seconds_count{{channel=\"{channel}\"}}"),
            )
        };
        assert_eq!(seconds("chat"), Some(5.0));
        assert_eq!(seconds("echo"), Some(1.0));
    }
}
