//! The display's Prometheus metrics, on the worker's `--metrics-bind`.
//!
//! The runbook watches connected screens, broadcasts, 304s, binding rejects
//! and the polling fallback ratio. Events are counters of this process (sum
//! them over workers); the screen counts are a census of Redis that every
//! display worker takes (see [`super::census`]), so they describe the whole
//! deployment — take `max` over workers, not `sum`.
//!
//! They are registered in the worker's [`app_registry`] the first time the
//! display handles anything in this process, so a worker that serves other
//! channels shows none of them.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::app_registry;

type Labels = Vec<(&'static str, String)>;

pub struct DisplayMetrics {
    http: Family<Labels, Counter>,
    ws_connects: Family<Labels, Counter>,
    pub ws_reconnects: Counter,
    ws_disconnects: Family<Labels, Counter>,
    binding_checks: Family<Labels, Counter>,
    broadcasts: Family<Labels, Counter>,
    pub unbound_screens: Counter,
    screens: Family<Labels, Gauge>,
    schools: Family<Labels, Gauge>,
    pub polling_ratio: Gauge<f64, AtomicU64>,
    pub census_timestamp: Gauge<f64, AtomicU64>,
}

/// This process's display metrics (registered on first use).
pub static METRICS: LazyLock<DisplayMetrics> = LazyLock::new(DisplayMetrics::register);

impl DisplayMetrics {
    fn register() -> DisplayMetrics {
        let metrics = DisplayMetrics {
            http: Family::default(),
            ws_connects: Family::default(),
            ws_reconnects: Counter::default(),
            ws_disconnects: Family::default(),
            binding_checks: Family::default(),
            broadcasts: Family::default(),
            unbound_screens: Counter::default(),
            screens: Family::default(),
            schools: Family::default(),
            polling_ratio: Gauge::default(),
            census_timestamp: Gauge::default(),
        };
        let mut registry = app_registry().lock().unwrap_or_else(|p| p.into_inner());
        registry.register(
            "display_http_responses",
            "Display API answers by endpoint (snapshot, status, admin) and status; status=\"304\" are polls and refetches that found nothing new",
            metrics.http.clone(),
        );
        registry.register(
            "display_ws_connects",
            "Display socket connects by outcome: accepted, disabled (4400: switch off or school not in the rollout), unknown_token (4404), screen_bound (4408)",
            metrics.ws_connects.clone(),
        );
        registry.register(
            "display_ws_reconnects",
            "Accepted display sockets of a screen whose previous socket closed less than 10 minutes before",
            metrics.ws_reconnects.clone(),
        );
        registry.register(
            "display_ws_disconnects",
            "Accepted display sockets that closed, by close code (1000, 1001, 1006, 4408, other)",
            metrics.ws_disconnects.clone(),
        );
        registry.register(
            "display_binding_checks",
            "Device checks of a screen's binding, by via (snapshot, socket) and outcome (matched, bound = first device, rejected = screen_bound)",
            metrics.binding_checks.clone(),
        );
        registry.register(
            "display_broadcasts",
            "Group sends to screens by kind (invalidate, config) and outcome (sent, failed)",
            metrics.broadcasts.clone(),
        );
        registry.register(
            "display_unbound_screens",
            "Screens unbound by an operator",
            metrics.unbound_screens.clone(),
        );
        registry.register(
            "display_screens",
            "Screens of the whole deployment by state: ws (socket open), fallback (polling although its school has sockets), polling (its school has no sockets), offline; counted from Redis by each display worker: take max, not sum",
            metrics.screens.clone(),
        );
        registry.register(
            "display_schools",
            "Schools by whether their screens get sockets (sockets=on|off), counted like switchyard_display_screens",
            metrics.schools.clone(),
        );
        registry.register(
            "display_polling_ratio",
            "Screens polling although their school has sockets ÷ screens that should hold a socket (fallback ÷ (ws + fallback)); 0 with none",
            metrics.polling_ratio.clone(),
        );
        registry.register(
            "display_census_timestamp_seconds",
            "When this worker last counted the screens (Unix time)",
            metrics.census_timestamp.clone(),
        );
        metrics
    }

    pub fn http(&self, endpoint: &'static str, status: u16) {
        self.http
            .get_or_create(&vec![("endpoint", endpoint.to_owned()), ("status", status.to_string())])
            .inc();
    }

    pub fn ws_connect(&self, outcome: &'static str) {
        self.ws_connects
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    pub fn ws_disconnect(&self, code: u16) {
        let code = match code {
            1000 | 1001 | 1006 | 4408 => code.to_string(),
            _ => "other".to_owned(),
        };
        self.ws_disconnects.get_or_create(&vec![("code", code)]).inc();
    }

    pub fn binding_check(&self, via: &'static str, outcome: &'static str) {
        self.binding_checks
            .get_or_create(&vec![("via", via.to_owned()), ("outcome", outcome.to_owned())])
            .inc();
    }

    pub fn broadcast(&self, kind: &'static str, sent: bool) {
        let outcome = if sent { "sent" } else { "failed" };
        self.broadcasts
            .get_or_create(&vec![("kind", kind.to_owned()), ("outcome", outcome.to_owned())])
            .inc();
    }

    pub fn set_screens(&self, state: &'static str, count: u64) {
        self.screens
            .get_or_create(&vec![("state", state.to_owned())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn set_schools(&self, sockets: &'static str, count: u64) {
        self.schools
            .get_or_create(&vec![("sockets", sockets.to_owned())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}
