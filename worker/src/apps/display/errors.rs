//! The display API's error answers: `{"detail": …}` with a status, shared by
//! the screens' endpoints and the admin API.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// `{"detail": …}` with a status: every error of the display API.
pub fn detail(status: StatusCode, detail: &str) -> Response {
    (status, Json(json!({ "detail": detail }))).into_response()
}

pub fn redis_down(error: redis::RedisError) -> Response {
    tracing::warn!(%error, "display: Redis failed");
    detail(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
}
