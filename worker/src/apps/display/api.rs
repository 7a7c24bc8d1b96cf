//! `http.display` on `/api/display/`: what screens call (the admin API is
//! [`super::admin`], served on the same channel).
//!
//! - `GET snapshot/{token}/?dk=D` → `{"school", "name", "revision",
//!   "schedule", "meta": {"ws_enabled", "group", "epoch", "seq"}}` with an
//!   ETag (`If-None-Match` → 304); the first `dk` binds the screen, another →
//!   403 `{"detail": "screen_bound"}`. `group`/`epoch`/`seq` is where the
//!   school's group stood *before* the school was read: the snapshot holds
//!   every edit broadcast up to there, so a socket that joins since it
//!   (`/ws/display/?…&since=seq&epoch=epoch`) misses none after it,
//! - `GET status/{token}/?v=N` → `{"fetch_required", "revision", "ws_enabled"}`
//!   — the cheap call a polling screen makes; with the snapshot's ETag in
//!   `If-None-Match` it is a bodiless 304 while nothing changed.
//!
//! `ws_enabled` is per screen: the switch and its school's place in the
//! rollout. It is part of the ETag, so a screen whose school leaves or joins
//! the rollout sees a change at its next poll.
//!
//! Every answer is counted in `switchyard_display_http_responses_total{endpoint,
//! status}`; 304s are logged as `status 304` (the runbook counts them).

use axum::extract::{Extension, MatchedPath, Path, Query, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_protocol::groups::{self, Position};

use super::census;
use super::errors::{detail, redis_down};
use super::metrics::METRICS;
use super::model::{self, Bind, DisplayKeys};
use super::rollout;
use crate::api::http_app::WorkerRedis;

pub const CHANNEL: &str = "http.display";

/// The screens' endpoints.
pub fn router() -> Router {
    Router::new()
        .route("/api/display/snapshot/{token}/", get(snapshot))
        .route("/api/display/status/{token}/", get(status))
}

/// Counts every answer by endpoint and status, and starts the census.
pub async fn count(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    if let Some(r) = request.extensions().get::<WorkerRedis>() {
        census::ensure_running(&r.redis, &DisplayKeys::new(&r.keys));
    }
    let path = matched.as_ref().map_or("", |m| m.as_str());
    let endpoint = if path.starts_with("/api/display/snapshot/") {
        "snapshot"
    } else if path.starts_with("/api/display/status/") {
        "status"
    } else if path.starts_with("/api/display/admin/") {
        "admin"
    } else {
        "other"
    };
    let response = next.run(request).await;
    METRICS.http(endpoint, response.status().as_u16());
    response
}

/// The tag of what a screen shows: the school's revision and whether it
/// should use a socket.
fn etag(revision: u64, ws_enabled: bool) -> String {
    format!("\"r{revision}-w{}\"", u8::from(ws_enabled))
}

fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
}

fn not_modified(etag: String, endpoint: &'static str, token: &str, school: &str) -> Response {
    tracing::info!(endpoint, %token, %school, "status 304");
    (StatusCode::NOT_MODIFIED, cache_headers(etag)).into_response()
}

fn cache_headers(etag: String) -> [(header::HeaderName, String); 2] {
    [(header::ETAG, etag), (header::CACHE_CONTROL, "no-cache".to_owned())]
}

/// The screen's school and the current config, or the answer to give.
async fn locate(r: &mut WorkerRedis, dk: &DisplayKeys, token: &str) -> Result<(String, rollout::Config), Response> {
    let school = match model::school_of(&mut r.redis, dk, token).await {
        Ok(Some(school)) => school,
        Ok(None) => return Err(detail(StatusCode::NOT_FOUND, "unknown_token")),
        Err(error) => return Err(redis_down(error)),
    };
    match rollout::load(&mut r.redis, dk).await {
        Ok(config) => Ok((school, config)),
        Err(error) => Err(redis_down(error)),
    }
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
    let Some(device) = query.dk.filter(|d| model::valid_device(d)) else {
        return detail(StatusCode::BAD_REQUEST, "dk_required");
    };
    let dk = DisplayKeys::new(&r.keys);
    let (school, config) = match locate(&mut r, &dk, &token).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    // Where the school's group stands, read before the school: an edit stores
    // its revision before its broadcast, so every broadcast up to here is in
    // what `bind` reads next (one read later than needed costs a 304).
    let group = model::school_group(&school);
    let position = match groups::read_history(&mut r.redis, &r.keys, &group, &Position::default(), false).await {
        Ok(recovery) => recovery.now,
        Err(error) => return redis_down(error),
    };
    let (snapshot, binding) = match model::bind(&mut r.redis, &dk, &school, &token, &device, None).await {
        Ok(Bind::Ok { snapshot, binding, .. }) => (snapshot, binding),
        Ok(Bind::Mismatch { school }) => {
            METRICS.binding_check("snapshot", "rejected");
            tracing::warn!(%token, %school, %device, via = "snapshot", detail = "screen_bound", "device_binding_reject");
            return detail(StatusCode::FORBIDDEN, "screen_bound");
        }
        Ok(Bind::UnknownToken) => return detail(StatusCode::NOT_FOUND, "unknown_token"),
        Err(error) => return redis_down(error),
    };
    METRICS.binding_check("snapshot", binding.label());
    if binding == model::Binding::Bound {
        tracing::info!(%token, %school, %device, via = "snapshot", "device bound");
    }
    let ws_enabled = config.sockets_for(&school);
    let etag = etag(snapshot.revision, ws_enabled);
    if matches(&headers, &etag) {
        return not_modified(etag, "snapshot", &token, &school);
    }
    let schedule: Value = serde_json::from_str(&snapshot.schedule).unwrap_or(Value::Null);
    let body = json!({
        "school": snapshot.school,
        "name": snapshot.name,
        "revision": snapshot.revision,
        "schedule": schedule,
        "meta": {
            "ws_enabled": ws_enabled,
            "group": group,
            "epoch": position.epoch,
            "seq": position.seq,
        },
    });
    (cache_headers(etag), Json(body)).into_response()
}

#[derive(Deserialize)]
struct StatusQuery {
    v: Option<String>,
}

async fn status(
    Extension(mut r): Extension<WorkerRedis>,
    Path(token): Path<String>,
    Query(query): Query<StatusQuery>,
    headers: HeaderMap,
) -> Response {
    let dk = DisplayKeys::new(&r.keys);
    let (school, config) = match locate(&mut r, &dk, &token).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let revision = match model::poll(&mut r.redis, &dk, &school, &token).await {
        Ok(Some(revision)) => revision,
        Ok(None) => return detail(StatusCode::NOT_FOUND, "unknown_token"),
        Err(error) => return redis_down(error),
    };
    let ws_enabled = config.sockets_for(&school);
    let etag = etag(revision, ws_enabled);
    if matches(&headers, &etag) {
        return not_modified(etag, "status", &token, &school);
    }
    let known = query.v.and_then(|v| v.parse::<u64>().ok());
    let body = json!({
        "fetch_required": known != Some(revision),
        "revision": revision,
        "ws_enabled": ws_enabled,
    });
    (cache_headers(etag), Json(body)).into_response()
}
