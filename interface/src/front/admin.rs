//! `--admin-bind`: `/metrics` and `/status` on a port of their own.
//!
//! The public listener faces clients (and whatever proxy is in front of
//! them); figures about connections, routes and workers are for operators
//! and Prometheus. With `--admin-bind` those two move here — the public port
//! answers them 404 and keeps `/healthz` and `/readyz` for the load balancer
//! — and this port serves all four. It keeps answering while the interface
//! drains, so a scrape sees the drain; it closes when the process ends.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::front::probes;
use crate::front::response::{text_response, Body};
use crate::state::Shared;

/// Binds `--admin-bind`; the error names the flag.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("--admin-bind: cannot listen on {address}"))
}

/// Serves the admin endpoints until the task is dropped.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "admin listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, &request)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

fn answer(shared: &Shared, request: &Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match request.uri().path() {
        "/metrics" => probes::metrics(shared),
        "/status" => probes::status(shared),
        "/healthz" => probes::health(),
        "/readyz" => probes::readiness(shared),
        _ => text_response(StatusCode::NOT_FOUND, "admin port: /metrics /status /healthz /readyz\n"),
    }
}
