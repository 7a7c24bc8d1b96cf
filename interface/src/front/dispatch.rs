//! Where a request goes: the interface's own endpoints, a WebSocket
//! handshake, the workers, a static file, or 404.
//!
//! In that order: `/healthz`, `/readyz`, `/metrics` and `/status`
//! ([`super::probes`]); an upgrade request on a WebSocket route becomes a
//! handshake ([`crate::websocket::handshake`]); a request on an HTTP route goes
//! to the workers ([`super::proxy`]) — either gets 503 at once when no live
//! worker serves its channel ([`super::unserved`]); then the static mounts; anything else is
//! 404. Every request runs in a `http{req=N, client=…}` span, so each log line
//! names the request it belongs to and its client ([`super::forwarded`]: the
//! address a trusted proxy forwarded for, else the TCP peer), which is also
//! the address admission counts and workers see.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use crate::front::response::{text_response, Body};
use crate::front::{probes, proxy, unserved};
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
    // The client behind a trusted proxy (--trusted-proxy), else the TCP peer.
    let client = shared.proxies.client(remote, request.headers());
    let span = tracing::info_span!("http", req = id, client = %client, method = %request.method(), path = request.uri().path());
    let response = choose(&shared, request, client, id).instrument(span).await;
    shared
        .metrics
        .http_request(response.status().as_u16(), started.elapsed());
    Ok(response)
}

async fn choose(shared: &Arc<Shared>, request: Request<Incoming>, client: SocketAddr, id: u64) -> Response<Body> {
    let path = request.uri().path();
    let method = request.method();
    let read_only = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" if read_only => return probes::health(),
        "/readyz" if read_only => return probes::readiness(shared),
        // With --admin-bind these live on the admin port only (super::admin).
        "/metrics" if read_only && !shared.admin_elsewhere() => return probes::metrics(shared),
        "/status" if read_only && !shared.admin_elsewhere() => return probes::status(shared),
        _ => {}
    }
    if fastwebsockets::upgrade::is_upgrade_request(&request) {
        if let Some(target) = shared.routes.lookup(path).cloned() {
            if let Some(refused) = unserved::refusal(shared, "websocket", &target.channel) {
                return refused;
            }
            return handshake::upgrade(shared.clone(), request, target, client).await;
        }
    }
    if let Some(target) = shared.http_routes.lookup(path).cloned() {
        if let Some(refused) = unserved::refusal(shared, "http", &target.channel) {
            return refused;
        }
        return proxy::forward(shared.clone(), request, target, client, id).await;
    }
    if shared.statics.claims(path) {
        return shared.statics.serve(method, path, request.headers()).await;
    }
    if shared.routes.lookup(path).is_some() {
        return text_response(StatusCode::UPGRADE_REQUIRED, "this path expects a WebSocket upgrade\n");
    }
    text_response(StatusCode::NOT_FOUND, "not found\n")
}
