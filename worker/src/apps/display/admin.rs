//! The admin API under `/api/display/admin/`: what the runbook's operators
//! do, and what the admin page (`web/display/admin/`) calls.
//!
//! Every route wants `Authorization: Bearer $DISPLAY_ADMIN_TOKEN` (401
//! without or with a wrong one; 403 when the workers have no token at all).
//!
//! | request | answer |
//! |---|---|
//! | `GET overview/` | the switch, the rollout, every school with its screens (binding, mode) and totals |
//! | `PUT ws-enabled/` `{"enabled": bool}` | the kill switch; off → one `config` send to every screen |
//! | `GET`/`PUT ws-rollout/` `{"schools": [...], "percent": N}` | the staged rollout; screens of schools that leave it get a `config` send |
//! | `PUT schools/{school}/` `{"name", "screens": [...]}` | creates a school (or renames it) and adds screens |
//! | `GET`/`PUT schools/{school}/schedule/` | reads / replaces the schedule; a PUT bumps the revision and invalidates the school's screens |
//! | `DELETE screens/{token}/binding/` | unbinds one screen; its open sockets are closed with 4408 |
//! | `DELETE schools/{school}/bindings/` | unbinds every screen of a school, likewise |
//!
//! Changes are logged (`schedule_revision bumped`, `WS broadcast sent`,
//! `ws switch changed`, `ws rollout changed`, `screen unbound`).

use axum::body::Bytes;
use axum::extract::{Extension, Path, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use switchyard_protocol::groups::{self, GroupFrame};

use super::census;
use super::errors::{detail, redis_down};
use super::metrics::METRICS;
use super::model::{self, CreateError, DisplayKeys};
use super::rollout::{self, Config, Rollout, Switched};
use super::socket::{close_sockets, CLOSE_SCREEN_BOUND};
use crate::api::http_app::{RequestInfo, WorkerRedis};

pub fn router() -> Router {
    Router::new()
        .route("/api/display/admin/overview/", get(overview))
        .route("/api/display/admin/ws-enabled/", put(put_ws_enabled))
        .route("/api/display/admin/ws-rollout/", get(get_rollout).put(put_rollout))
        .route("/api/display/admin/schools/{school}/", put(put_school))
        .route(
            "/api/display/admin/schools/{school}/schedule/",
            get(get_schedule).put(put_schedule),
        )
        .route("/api/display/admin/screens/{token}/binding/", delete(unbind_screen))
        .route("/api/display/admin/schools/{school}/bindings/", delete(unbind_school))
        .route_layer(middleware::from_fn(require_admin))
}

/// 401 without `Authorization: Bearer $DISPLAY_ADMIN_TOKEN`; 403 when the
/// variable is unset or empty (no admin on this deployment).
async fn require_admin(request: Request, next: Next) -> Response {
    let expected = std::env::var("DISPLAY_ADMIN_TOKEN").unwrap_or_default();
    if expected.is_empty() {
        return detail(
            StatusCode::FORBIDDEN,
            "admin_disabled: the display workers have no DISPLAY_ADMIN_TOKEN",
        );
    }
    if !bearer_matches(request.headers(), &expected) {
        return detail(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    next.run(request).await
}

fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One group send, counted and logged (`WS broadcast sent`); a failure is
/// logged and otherwise ignored: screens that miss it catch up by polling.
/// A JSON broadcast: screens get it with the group's `seq`, `epoch` and
/// `group` added, the position they join since after a reconnect.
async fn broadcast(r: &mut WorkerRedis, dk: &DisplayKeys, group: &str, kind: &'static str, message: Value) {
    let frame = GroupFrame::JsonWithSeq(message.to_string());
    match groups::group_send(&mut r.redis, &dk.base, r.history, group, &frame).await {
        Ok(seq) => {
            METRICS.broadcast(kind, true);
            tracing::info!(%group, kind, seq, frame = %message, "WS broadcast sent");
        }
        Err(error) => {
            METRICS.broadcast(kind, false);
            tracing::warn!(%group, kind, %error, "WS broadcast failed; screens will catch up by polling");
        }
    }
}

async fn overview(Extension(mut r): Extension<WorkerRedis>) -> Response {
    match census::take(&mut r.redis, &DisplayKeys::new(&r.keys)).await {
        Ok(census) => Json(census.to_json()).into_response(),
        Err(error) => redis_down(error),
    }
}

/// Tells the screens that lose their socket: one send to every screen when
/// the switch goes off, else one per school that left the rollout. Screens
/// that gain one are polling and learn it at their next poll.
async fn announce(r: &mut WorkerRedis, dk: &DisplayKeys, before: &Config, after: &Config) -> Switched {
    let schools = match model::schools(&mut r.redis, dk).await {
        Ok(schools) => schools,
        Err(error) => {
            tracing::warn!(%error, "display: cannot list schools; screens learn the change at their next poll");
            Vec::new()
        }
    };
    let switched = rollout::switched(&schools, before, after);
    let off = json!({"type": "config", "ws_enabled": false});
    if before.ws_enabled && !after.ws_enabled {
        broadcast(r, dk, model::ALL_GROUP, "config", off).await;
    } else {
        for school in &switched.off {
            broadcast(r, dk, &model::school_group(school), "config", off.clone()).await;
        }
    }
    switched
}

/// The config after a change, which schools it switched, and (as the first
/// version of this API answered) `enabled`.
fn config_answer(after: &Config, switched: &Switched) -> Response {
    let mut body = after.to_json();
    body["enabled"] = json!(after.ws_enabled);
    body["switched_on"] = json!(switched.on);
    body["switched_off"] = json!(switched.off);
    Json(body).into_response()
}

async fn put_ws_enabled(Extension(mut r): Extension<WorkerRedis>, body: Bytes) -> Response {
    let enabled = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) if o.len() == 1 => o.get("enabled").and_then(Value::as_bool),
        _ => None,
    };
    let Some(enabled) = enabled else {
        return detail(StatusCode::BAD_REQUEST, "expected {\"enabled\": true|false}");
    };
    let dk = DisplayKeys::new(&r.keys);
    let before = match rollout::set_ws_enabled(&mut r.redis, &dk, enabled).await {
        Ok(before) => before,
        Err(error) => return redis_down(error),
    };
    let after = Config {
        ws_enabled: enabled,
        ..before.clone()
    };
    let switched = announce(&mut r, &dk, &before, &after).await;
    tracing::info!(
        enabled,
        switched_on = switched.on.len(),
        switched_off = switched.off.len(),
        "ws switch changed"
    );
    config_answer(&after, &switched)
}

async fn get_rollout(Extension(mut r): Extension<WorkerRedis>) -> Response {
    match rollout::load(&mut r.redis, &DisplayKeys::new(&r.keys)).await {
        Ok(config) => Json(config.to_json()).into_response(),
        Err(error) => redis_down(error),
    }
}

async fn put_rollout(Extension(mut r): Extension<WorkerRedis>, body: Bytes) -> Response {
    let rollout = match Rollout::parse(&body) {
        Ok(rollout) => rollout,
        Err(message) => return detail(StatusCode::BAD_REQUEST, &message),
    };
    let dk = DisplayKeys::new(&r.keys);
    for school in &rollout.schools {
        match model::school_exists(&mut r.redis, &dk, school).await {
            Ok(true) => {}
            Ok(false) => return detail(StatusCode::BAD_REQUEST, &format!("unknown school: {school}")),
            Err(error) => return redis_down(error),
        }
    }
    let before = match rollout::set_rollout(&mut r.redis, &dk, &rollout).await {
        Ok(before) => before,
        Err(error) => return redis_down(error),
    };
    let after = Config {
        rollout: rollout.clone(),
        rollout_stored: true,
        ..before.clone()
    };
    let switched = announce(&mut r, &dk, &before, &after).await;
    tracing::info!(
        schools = ?rollout.schools,
        percent = rollout.percent,
        switched_on = ?switched.on,
        switched_off = ?switched.off,
        "ws rollout changed"
    );
    config_answer(&after, &switched)
}

/// `PUT schools/{school}/` `{"name": "…", "screens": ["token", …]}` (both optional).
async fn put_school(Extension(mut r): Extension<WorkerRedis>, Path(school): Path<String>, body: Bytes) -> Response {
    if !model::valid_id(&school) {
        return detail(
            StatusCode::BAD_REQUEST,
            "school ids are 1-64 letters, digits, '-', '_' or '.'",
        );
    }
    let (name, screens) = match parse_school(&body) {
        Ok(parsed) => parsed,
        Err(message) => return detail(StatusCode::BAD_REQUEST, &message),
    };
    let dk = DisplayKeys::new(&r.keys);
    let schedule = json!({"title": name, "periods": []}).to_string();
    match model::create_school(&mut r.redis, &dk, &school, &name, &schedule, &screens).await {
        Ok(Ok(created)) => {
            tracing::info!(%school, created, screens = ?screens, "school saved");
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            (
                status,
                Json(json!({"school": school, "created": created, "screens": screens})),
            )
                .into_response()
        }
        Ok(Err(CreateError::TokenTaken { token, school })) => detail(
            StatusCode::CONFLICT,
            &format!("screen {token} belongs to school {school}"),
        ),
        Err(error) => redis_down(error),
    }
}

fn parse_school(body: &[u8]) -> Result<(String, Vec<String>), String> {
    const SHAPE: &str = "expected {\"name\": \"…\", \"screens\": [\"token\", …]}";
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        _ if body.is_empty() => serde_json::Map::new(),
        _ => return Err(format!("not a JSON object; {SHAPE}")),
    };
    if let Some(unknown) = object.keys().find(|k| *k != "name" && *k != "screens") {
        return Err(format!("unknown field {unknown:?}; {SHAPE}"));
    }
    let name = match object.get("name") {
        None => String::new(),
        Some(Value::String(name)) if name.len() <= 200 => name.clone(),
        Some(_) => return Err("name must be a string of at most 200 bytes".to_owned()),
    };
    let screens = match object.get("screens") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut tokens = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(token) if model::valid_id(token) => tokens.push(token.to_owned()),
                    _ => {
                        return Err(format!(
                            "not a screen token: {item} (1-64 letters, digits, '-', '_', '.')"
                        ))
                    }
                }
            }
            tokens
        }
        Some(_) => return Err(format!("screens must be an array of tokens; {SHAPE}")),
    };
    Ok((name, screens))
}

async fn get_schedule(Extension(mut r): Extension<WorkerRedis>, Path(school): Path<String>) -> Response {
    if !model::valid_id(&school) {
        return detail(StatusCode::NOT_FOUND, "unknown_school");
    }
    match model::schedule(&mut r.redis, &DisplayKeys::new(&r.keys), &school).await {
        Ok(Some((revision, schedule))) => {
            let schedule: Value = serde_json::from_str(&schedule).unwrap_or(Value::Null);
            Json(json!({"school": school, "revision": revision, "schedule": schedule})).into_response()
        }
        Ok(None) => detail(StatusCode::NOT_FOUND, "unknown_school"),
        Err(error) => redis_down(error),
    }
}

async fn put_schedule(
    Extension(mut r): Extension<WorkerRedis>,
    Extension(info): Extension<RequestInfo>,
    Path(school): Path<String>,
    body: Bytes,
) -> Response {
    let schedule = match serde_json::from_slice::<Value>(&body) {
        Ok(schedule @ Value::Object(_)) => schedule,
        Ok(_) => return detail(StatusCode::BAD_REQUEST, "the schedule must be a JSON object"),
        Err(_) => return detail(StatusCode::BAD_REQUEST, "invalid_json"),
    };
    if !model::valid_id(&school) {
        return detail(StatusCode::NOT_FOUND, "unknown_school");
    }
    let dk = DisplayKeys::new(&r.keys);
    let revision =
        match model::put_schedule(&mut r.redis, &dk, &school, &schedule.to_string(), &info.message_id()).await {
            Ok(Some(revision)) => revision,
            Ok(None) => return detail(StatusCode::NOT_FOUND, "unknown_school"),
            Err(error) => return redis_down(error),
        };
    tracing::info!(%school, revision, "schedule_revision bumped");
    // Stored first, then one publish, kept in the group's history: a screen
    // that was away gets it when it joins again since its last broadcast (or
    // `recover_failed`, and refetches); a failed send is caught up by polling.
    let invalidate = json!({"type": "invalidate", "revision": revision});
    broadcast(&mut r, &dk, &model::school_group(&school), "invalidate", invalidate).await;
    Json(json!({ "revision": revision })).into_response()
}

/// Unbinds, closes the sockets that held the old binding (4408), answers.
async fn unbind(r: &mut WorkerRedis, school: &str, token: Option<&str>) -> Response {
    let dk = DisplayKeys::new(&r.keys);
    let unbound = match model::unbind(&mut r.redis, &dk, school, token).await {
        Ok(Some(unbound)) => unbound,
        Ok(None) => return detail(StatusCode::NOT_FOUND, "unknown_token"),
        Err(error) => return redis_down(error),
    };
    METRICS.unbound_screens.inc_by(unbound.screens);
    let closed = match close_sockets(&mut r.redis, &dk, &unbound.sockets, CLOSE_SCREEN_BOUND, "unbound").await {
        Ok(closed) => closed,
        Err(error) => return redis_down(error),
    };
    tracing::info!(%school, token = %token.unwrap_or("*"), unbound = unbound.screens, sockets_closed = closed, "screen unbound");
    let mut body = json!({"school": school, "unbound": unbound.screens, "sockets_closed": closed});
    if let Some(token) = token {
        body["token"] = json!(token);
    }
    Json(body).into_response()
}

async fn unbind_screen(Extension(mut r): Extension<WorkerRedis>, Path(token): Path<String>) -> Response {
    let school = match model::school_of(&mut r.redis, &DisplayKeys::new(&r.keys), &token).await {
        Ok(Some(school)) => school,
        Ok(None) => return detail(StatusCode::NOT_FOUND, "unknown_token"),
        Err(error) => return redis_down(error),
    };
    unbind(&mut r, &school, Some(&token)).await
}

async fn unbind_school(Extension(mut r): Extension<WorkerRedis>, Path(school): Path<String>) -> Response {
    match model::school_exists(&mut r.redis, &DisplayKeys::new(&r.keys), &school).await {
        Ok(true) => unbind(&mut r, &school, None).await,
        Ok(false) => detail(StatusCode::NOT_FOUND, "unknown_school"),
        Err(error) => redis_down(error),
    }
}
