//! Where a request goes: the interface's own endpoints, a WebSocket
//! handshake, the workers, a static file, or 404.
//!
//! In that order: `/healthz`, `/readyz`, `/metrics` and `/status`
//! ([`super::probes`]); an upgrade request on a WebSocket route becomes a
//! handshake ([`crate::websocket::handshake`]); a request on an HTTP route goes
//! to the workers ([`super::proxy`]); then the static mounts; anything else is
//! 404. Every request runs in a `http{req=N}` span, so each log line names the
//! request it belongs to.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use crate::front::response::{text_response, Body};
use crate::front::{probes, proxy};
use crate::state::Shared;
use crate::websocket::handshake;

/// The hyper service: routes one request and counts it.
pub async fn route(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let id = shared.registry.next_id();
    let span = tracing::info_span!("http", req = id, method = %request.method(), path = request.uri().path());
    let response = choose(&shared, request, remote, id).instrument(span).await;
    shared
        .metrics
        .http_request(response.status().as_u16(), started.elapsed());
    Ok(response)
}

async fn choose(shared: &Arc<Shared>, request: Request<Incoming>, remote: SocketAddr, id: u64) -> Response<Body> {
    let path = request.uri().path();
    let method = request.method();
    let read_only = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" if read_only => return probes::health(),
        "/readyz" if read_only => return probes::readiness(shared),
        "/metrics" if read_only => return probes::metrics(shared),
        "/status" if read_only => return probes::status(shared),
        _ => {}
    }
    if fastwebsockets::upgrade::is_upgrade_request(&request) {
        if let Some(target) = shared.routes.lookup(path).cloned() {
            return handshake::upgrade(shared.clone(), request, target, remote).await;
        }
    }
    if let Some(target) = shared.http_routes.lookup(path).cloned() {
        return proxy::forward(shared.clone(), request, target, remote, id).await;
    }
    if shared.statics.claims(path) {
        return shared.statics.serve(method, path, request.headers()).await;
    }
    if shared.routes.lookup(path).is_some() {
        return text_response(StatusCode::UPGRADE_REQUIRED, "this path expects a WebSocket upgrade\n");
    }
    text_response(StatusCode::NOT_FOUND, "not found\n")
}
