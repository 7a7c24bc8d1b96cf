//! HTTP requests: what the interface answers itself, and where the rest goes.
//!
//! `/healthz` (alive) and `/readyz` (Redis reachable, not draining) are served
//! here; an upgrade request on a routed path becomes a WebSocket handshake;
//! anything else is 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::state::Shared;
use crate::websocket::handshake;

pub type Body = Full<Bytes>;

/// The hyper service body: routes one request.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    let response = match (request.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            json_response(StatusCode::OK, serde_json::json!({"status": "ok"}))
        }
        (&Method::GET | &Method::HEAD, "/readyz") => readiness(&shared),
        (&Method::GET, "/metrics") => metrics(&shared),
        _ => match shared.routes.lookup(path).cloned() {
            Some(target) if fastwebsockets::upgrade::is_upgrade_request(&request) => {
                handshake::handle(shared, request, target, remote).await
            }
            Some(_) => text_response(
                StatusCode::UPGRADE_REQUIRED,
                "this path expects a WebSocket upgrade\n",
            ),
            None => text_response(StatusCode::NOT_FOUND, "not found\n"),
        },
    };
    Ok(response)
}

fn readiness(shared: &Shared) -> Response<Body> {
    let redis = shared.redis_ok();
    let draining = shared.shutdown.is_draining();
    let ready = redis && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        serde_json::json!({"ready": ready, "redis": redis, "draining": draining, "interface": shared.id}),
    )
}

fn metrics(shared: &Shared) -> Response<Body> {
    let mut response = Response::new(Body::from(shared.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

pub fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
