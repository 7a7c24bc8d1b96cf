//! `http.display` on `/api/display/`: snapshots, status polls and admin edits.
//!
//! - `GET /api/display/snapshot/{token}/?dk=D` → `{"school", "name", "revision",
//!   "schedule", "meta": {"ws_enabled"}}` with an ETag (`If-None-Match` → 304);
//!   the first `dk` binds the screen, another → 403 `{"detail": "screen_bound"}`,
//! - `GET /api/display/status/{token}/?v=N` → `{"fetch_required", "revision", "ws_enabled"}`
//!   — the cheap call a polling screen makes,
//! - `PUT /api/display/admin/schools/{school}/schedule/` (bearer
//!   `DISPLAY_ADMIN_TOKEN`) → `{"revision": n}`, and one group send of
//!   `{"type": "invalidate", "revision": n}` to `school:{school}`,
//! - `PUT /api/display/admin/ws-enabled/` `{"enabled": bool}` flips the flag
//!   live and tells every screen (`{"type": "config", "ws_enabled": b}`).

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_protocol::groups::{self, GroupFrame};

use super::model::{self, Bind};
use crate::http::WorkerRedis;

pub const CHANNEL: &str = "http.display";

pub fn router() -> Router {
    Router::new()
        .route("/api/display/snapshot/{token}/", get(snapshot))
        .route("/api/display/status/{token}/", get(status))
        .route("/api/display/admin/schools/{school}/schedule/", put(put_schedule))
        .route("/api/display/admin/ws-enabled/", put(put_ws_enabled))
}

fn detail(status: StatusCode, detail: &str) -> Response {
    (status, Json(json!({ "detail": detail }))).into_response()
}

fn redis_down(error: redis::RedisError) -> Response {
    tracing::warn!(%error, "display: Redis failed");
    detail(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
}

#[derive(Deserialize)]
struct SnapshotQuery {
    dk: Option<String>,
}

async fn snapshot(
    Extension(mut r): Extension<WorkerRedis>,
    Path(token): Path<String>,
    Query(query): Query<SnapshotQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(device) = query.dk.filter(|d| !d.is_empty() && d.len() <= 128) else {
        return detail(StatusCode::BAD_REQUEST, "dk_required");
    };
    let snapshot = match model::bind(&mut r.redis, &r.keys, &token, &device).await {
        Ok(Bind::Ok(snapshot)) => snapshot,
        Ok(Bind::Mismatch) => return detail(StatusCode::FORBIDDEN, "screen_bound"),
        Ok(Bind::UnknownToken) => return detail(StatusCode::NOT_FOUND, "unknown_token"),
        Err(error) => return redis_down(error),
    };
    let ws_enabled = match model::ws_enabled(&mut r.redis, &r.keys).await {
        Ok(enabled) => enabled,
        Err(error) => return redis_down(error),
    };
    // The flag is part of the snapshot, so it is part of the tag.
    let etag = format!("\"r{}-w{}\"", snapshot.revision, u8::from(ws_enabled));
    let cache = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, "no-cache".to_owned()),
    ];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if matches {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    let schedule: Value = serde_json::from_str(&snapshot.schedule).unwrap_or(Value::Null);
    let body = json!({
        "school": snapshot.school,
        "name": snapshot.name,
        "revision": snapshot.revision,
        "schedule": schedule,
        "meta": {"ws_enabled": ws_enabled},
    });
    (cache, Json(body)).into_response()
}

#[derive(Deserialize)]
struct StatusQuery {
    v: Option<String>,
}

async fn status(
    Extension(mut r): Extension<WorkerRedis>,
    Path(token): Path<String>,
    Query(query): Query<StatusQuery>,
) -> Response {
    let revision = match model::revision_of_screen(&mut r.redis, &r.keys, &token).await {
        Ok(Some(revision)) => revision,
        Ok(None) => return detail(StatusCode::NOT_FOUND, "unknown_token"),
        Err(error) => return redis_down(error),
    };
    let ws_enabled = match model::ws_enabled(&mut r.redis, &r.keys).await {
        Ok(enabled) => enabled,
        Err(error) => return redis_down(error),
    };
    let known = query.v.and_then(|v| v.parse::<u64>().ok());
    Json(json!({
        "fetch_required": known != Some(revision),
        "revision": revision,
        "ws_enabled": ws_enabled,
    }))
    .into_response()
}

/// Whether the request carries `Authorization: Bearer $DISPLAY_ADMIN_TOKEN`
/// (no admin at all when the variable is unset or empty).
fn is_admin(headers: &HeaderMap) -> bool {
    let Ok(expected) = std::env::var("DISPLAY_ADMIN_TOKEN") else {
        return false;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    !expected.is_empty() && constant_time_eq(given.as_bytes(), expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn put_schedule(
    Extension(mut r): Extension<WorkerRedis>,
    Path(school): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_admin(&headers) {
        return detail(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Ok(schedule) = serde_json::from_slice::<Value>(&body) else {
        return detail(StatusCode::BAD_REQUEST, "invalid_json");
    };
    let revision = match model::put_schedule(&mut r.redis, &r.keys, &school, &schedule.to_string()).await {
        Ok(Some(revision)) => revision,
        Ok(None) => return detail(StatusCode::NOT_FOUND, "unknown_school"),
        Err(error) => return redis_down(error),
    };
    // Stored first, then one publish; a screen that misses it catches up by polling.
    let invalidate = GroupFrame::Text(json!({"type": "invalidate", "revision": revision}).to_string());
    let group = model::school_group(&school);
    if let Err(error) = groups::group_send(&mut r.redis, &r.keys, &group, &invalidate).await {
        tracing::warn!(%error, %group, "display: invalidate not sent; screens will poll");
    }
    Json(json!({ "revision": revision })).into_response()
}

#[derive(Deserialize)]
struct WsEnabled {
    enabled: bool,
}

async fn put_ws_enabled(Extension(mut r): Extension<WorkerRedis>, headers: HeaderMap, body: Bytes) -> Response {
    if !is_admin(&headers) {
        return detail(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Ok(WsEnabled { enabled }) = serde_json::from_slice(&body) else {
        return detail(StatusCode::BAD_REQUEST, "expected {\"enabled\": bool}");
    };
    if let Err(error) = model::set_ws_enabled(&mut r.redis, &r.keys, enabled).await {
        return redis_down(error);
    }
    let config = GroupFrame::Text(json!({"type": "config", "ws_enabled": enabled}).to_string());
    if let Err(error) = groups::group_send(&mut r.redis, &r.keys, model::ALL_GROUP, &config).await {
        tracing::warn!(%error, "display: flag change not broadcast");
    }
    Json(json!({ "enabled": enabled })).into_response()
}
