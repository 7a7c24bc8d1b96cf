//! `http.example` on `/api/example/`: an ordinary axum `Router`, run by a worker.
//!
//! It shows that HTTP consumers are plain `tower` services — nothing in here
//! knows about Switchyard — and gives the tests and the benchmark something
//! to call:
//!
//! - `GET  /api/example/` → `{"app": "http.example", "client": "ip:port"}`
//! - `GET  /api/example/hello?name=N` → `{"hello": N}`
//! - `POST /api/example/echo` → the request body, with its content type
//! - `GET  /api/example/stream?size=N&delay_ms=D` → N bytes (default 1 MiB,
//!   at most 256 MiB) of `0123456789…`, in 16 KiB pieces, D ms apart
//! - `GET  /api/example/slow?ms=N` → answers after N ms (at most 60 s)

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::app::Apps;
use crate::faults;

pub const CHANNEL: &str = "http.example";
const MAX_STREAM: u64 = 256 << 20;
const PIECE: u64 = 16 << 10;

pub fn router() -> Router {
    Router::new()
        .route("/api/example/", get(index))
        .route("/api/example/hello", get(hello))
        .route("/api/example/echo", post(echo))
        .route("/api/example/stream", get(stream))
        .route("/api/example/slow", get(slow))
}

pub fn app() -> Apps {
    Apps::new().http(CHANNEL, router())
}

async fn index(ConnectInfo(client): ConnectInfo<SocketAddr>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"app": CHANNEL, "client": client.to_string()}))
}

#[derive(Deserialize)]
struct Hello {
    name: Option<String>,
}

async fn hello(Query(query): Query<Hello>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"hello": query.name.unwrap_or_else(|| "world".into())}))
}

async fn echo(headers: HeaderMap, body: Bytes) -> Response {
    if let Err(error) = faults::trip(&body) {
        return (StatusCode::INTERNAL_SERVER_ERROR, error).into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[derive(Deserialize)]
struct StreamQuery {
    size: Option<u64>,
    delay_ms: Option<u64>,
}

/// Streams `size` bytes without ever holding more than one piece.
async fn stream(Query(query): Query<StreamQuery>) -> Response {
    let size = query.size.unwrap_or(1 << 20);
    if size > MAX_STREAM {
        return (StatusCode::BAD_REQUEST, "size: at most 268435456\n").into_response();
    }
    let delay = Duration::from_millis(query.delay_ms.unwrap_or(0).min(10_000));
    let pieces = futures::stream::unfold(0u64, move |sent| async move {
        if sent >= size {
            return None;
        }
        if !delay.is_zero() && sent > 0 {
            tokio::time::sleep(delay).await;
        }
        let len = PIECE.min(size - sent);
        let piece: Vec<u8> = (sent..sent + len).map(|i| b'0' + (i % 10) as u8).collect();
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(piece)), sent + len))
    });
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(pieces),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

async fn slow(Query(query): Query<SlowQuery>) -> Json<serde_json::Value> {
    let ms = query.ms.unwrap_or(1000).min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(serde_json::json!({"slept_ms": ms}))
}
