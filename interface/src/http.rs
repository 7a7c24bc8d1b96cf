//! HTTP requests: what the interface answers itself, and where the rest goes.
//!
//! Served here: `/healthz` (alive), `/readyz` (Redis reachable, not draining,
//! a live worker for every routed channel), `/metrics` (Prometheus) and
//! `/status` (JSON figures), then the static mounts. An upgrade request on a
//! WebSocket route becomes a handshake, a request on an HTTP route goes to the
//! workers ([`crate::proxy`]); anything else is 404. Every request runs in a
//! `http{req=N}` span, so each log line names the request it belongs to.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::time::Instant;
use tracing::Instrument;

use crate::state::Shared;
use crate::websocket::handshake;

/// Every response body: a whole buffer or a stream that may fail midway
/// (which cuts the connection, the only honest way to end a broken response).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A body streamed from pieces as they come.
pub fn stream_body<S>(pieces: S) -> Body
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(pieces.map_ok(Frame::data)).boxed_unsync()
}

/// The hyper service body: routes one request.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let id = shared.registry.next_id();
    let span = tracing::info_span!("http", req = id, method = %request.method(), path = request.uri().path());
    let response = route(&shared, request, remote, id).instrument(span).await;
    shared
        .metrics
        .http_request(response.status().as_u16(), started.elapsed());
    Ok(response)
}

async fn route(shared: &Arc<Shared>, request: Request<Incoming>, remote: SocketAddr, id: u64) -> Response<Body> {
    let path = request.uri().path();
    let method = request.method();
    let read_only = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" if read_only => return json_response(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" if read_only => return readiness(shared),
        "/metrics" if read_only => return metrics(shared),
        "/status" if read_only => return status(shared),
        _ => {}
    }
    if fastwebsockets::upgrade::is_upgrade_request(&request) {
        if let Some(target) = shared.routes.lookup(path).cloned() {
            return handshake::handle(shared.clone(), request, target, remote).await;
        }
    }
    if let Some(target) = shared.http_routes.lookup(path).cloned() {
        return crate::proxy::handle(shared.clone(), request, target, remote, id).await;
    }
    if shared.statics.claims(path) {
        return shared.statics.serve(method, path, request.headers()).await;
    }
    if shared.routes.lookup(path).is_some() {
        return text_response(StatusCode::UPGRADE_REQUIRED, "this path expects a WebSocket upgrade\n");
    }
    text_response(StatusCode::NOT_FOUND, "not found\n")
}

/// Ready means: Redis answers, we are not draining, and every routed channel
/// has at least one live worker that is not stopping.
fn readiness(shared: &Shared) -> Response<Body> {
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
    let ready = redis && !draining && missing.is_empty();
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

fn metrics(shared: &Shared) -> Response<Body> {
    let mut response = Response::new(full(shared.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// What an operator (or a dashboard) wants to see of this interface.
fn status(shared: &Shared) -> Response<Body> {
    let routes = |kind: &str, routes: &crate::router::Routes| -> Vec<serde_json::Value> {
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
        }),
    )
}

/// Request headers as the protocol carries them: names lower-case (as
/// hyper keeps them), values as lossy UTF-8.
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

pub fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
