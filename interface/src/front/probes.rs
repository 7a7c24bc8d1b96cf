//! What the interface answers about itself: `/healthz` (alive), `/readyz`
//! (Redis reachable and not draining: this interface can serve), `/metrics`
//! (Prometheus) and `/status` (JSON figures, unserved channels included).
//!
//! A routed channel without a live worker does not make `/readyz` fail: the
//! workers are shared by every interface, so taking this one out of the load
//! balancer would not help (it took them all out). Its requests get 503 at
//! once instead ([`super::unserved`]). `--ready-requires-workers` brings back
//! the old rule for those who want it.

use http::{header, Response, StatusCode};

use crate::front::response::{full, json_response, Body};
use crate::front::router::Routes;
use crate::state::Shared;

/// Alive: the process answers.
pub fn health() -> Response<Body> {
    json_response(StatusCode::OK, serde_json::json!({"status": "ok"}))
}

/// Ready means: Redis answers and we are not draining (with
/// `--ready-requires-workers`, also: every routed channel has a live worker).
/// The body lists the live workers and the channels without one either way.
pub fn readiness(shared: &Shared) -> Response<Body> {
    let redis = shared.redis_ok();
    let draining = shared.shutdown.is_draining();
    let workers = shared.live_workers();
    let channels: serde_json::Map<String, serde_json::Value> = shared
        .routed_channels()
        .into_iter()
        .map(|channel| {
            let live = workers.get(&*channel).copied().unwrap_or(0);
            (channel.to_string(), live.into())
        })
        .collect();
    let missing: Vec<&String> = channels.iter().filter(|(_, live)| *live == 0).map(|(c, _)| c).collect();
    let ready = redis && !draining && (missing.is_empty() || !shared.config.ready_requires_workers);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        serde_json::json!({
            "ready": ready,
            "redis": redis,
            "draining": draining,
            "interface": shared.id,
            "workers": channels,
            "channels_without_workers": missing,
        }),
    )
}

pub fn metrics(shared: &Shared) -> Response<Body> {
    let mut response = Response::new(full(shared.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// What an operator (or a dashboard) wants to see of this interface.
pub fn status(shared: &Shared) -> Response<Body> {
    let routes = |kind: &str, routes: &Routes| -> Vec<serde_json::Value> {
        routes
            .iter()
            .map(|t| serde_json::json!({"kind": kind, "prefix": &*t.prefix, "channel": &*t.channel, "connections": t.open()}))
            .collect()
    };
    let mut all = routes("websocket", &shared.routes);
    all.extend(routes("http", &shared.http_routes));
    let statics: Vec<serde_json::Value> = shared
        .statics
        .mounts()
        .map(|(prefix, dir)| serde_json::json!({"prefix": prefix, "dir": dir.display().to_string()}))
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "interface": shared.id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": shared.started.elapsed().as_secs_f64(),
            "draining": shared.shutdown.is_draining(),
            "redis": shared.redis_ok(),
            "connections": shared.registry.len(),
            "routes": all,
            "static": statics,
            "groups": shared.groups.sizes().len(),
            "workers": shared.live_workers(),
            "unserved": shared.unserved_channels().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        }),
    )
}
