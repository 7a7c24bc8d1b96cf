//! A stack serving the school display: routes, workers with the demo seeded,
//! and small helpers for its HTTP API and sockets.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use switchyard_tests::ws::{self, WsClient};

use crate::http_common::{wait_for, Client, Options, Reply, Stack};

pub const ADMIN: &str = "test-admin";

pub fn interface_args() -> Vec<String> {
    [
        "--route",
        "/ws/display/=display",
        "--http-route",
        "/api/display/=http.display",
    ]
    .map(String::from)
    .to_vec()
}

pub fn worker_args() -> Vec<String> {
    ["--only-channels", "display,http.display", "--seed-display-demo"]
        .map(String::from)
        .to_vec()
}

/// redis, one interface, `workers` display workers; ready and seeded.
pub async fn start(name: &str, workers: usize, ws_default: Option<&str>) -> Stack {
    let mut worker_env = vec![("DISPLAY_ADMIN_TOKEN", ADMIN.to_owned())];
    if let Some(value) = ws_default {
        worker_env.push(("DISPLAY_WS_ENABLED", value.to_owned()));
    }
    let options = Options {
        interface_args: interface_args(),
        workers: vec![worker_args(); workers],
        worker_env,
    };
    let stack = Stack::start(name, options).await;
    stack.wait_ready().await;
    let addr = stack.addr.clone();
    let seeded = wait_for(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { status(&addr, "demo-1", "").await.status == 200 }
    })
    .await;
    assert!(seeded.is_ok(), "the demo school was never seeded");
    stack
}

pub async fn request(addr: &str, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut client = Client::connect(addr).await.expect("connect");
    client
        .send(method, path, headers, Bytes::from(body.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub async fn snapshot(addr: &str, token: &str, dk: &str, etag: Option<&str>) -> Reply {
    let path = format!("/api/display/snapshot/{token}/?dk={dk}");
    let headers: Vec<(&str, &str)> = etag.map(|e| ("if-none-match", e)).into_iter().collect();
    request(addr, Method::GET, &path, &headers, "").await
}

pub async fn status(addr: &str, token: &str, v: &str) -> Reply {
    request(
        addr,
        Method::GET,
        &format!("/api/display/status/{token}/?v={v}"),
        &[],
        "",
    )
    .await
}

pub async fn put_schedule(addr: &str, school: &str, schedule: &Value, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let path = format!("/api/display/admin/schools/{school}/schedule/");
    request(addr, Method::PUT, &path, &headers, &schedule.to_string()).await
}

pub async fn set_ws_enabled(addr: &str, enabled: bool) -> Reply {
    let auth = format!("Bearer {ADMIN}");
    let body = serde_json::json!({ "enabled": enabled }).to_string();
    request(
        addr,
        Method::PUT,
        "/api/display/admin/ws-enabled/",
        &[("authorization", &auth)],
        &body,
    )
    .await
}

pub async fn socket(addr: &str, token: &str, dk: &str) -> WsClient {
    let url = format!("ws://{addr}/ws/display/?token={token}&dk={dk}");
    ws::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: handshake failed: {e}"))
}

/// Next JSON frame of type `kind`, skipping others.
pub async fn recv_type(client: &mut WsClient, kind: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = client
            .recv_json(left)
            .await
            .unwrap_or_else(|e| panic!("no {kind} within {within:?}: {e}"));
        if frame["type"] == kind {
            return frame;
        }
    }
}
