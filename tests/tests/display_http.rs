//! The display's HTTP API through a worker: snapshots with ETags, device
//! binding (one winner in a race), status polls, admin edits and their auth.

mod display_common;
mod http_common;

use display_common::{put_schedule, snapshot, start, status, ADMIN};
use serde_json::json;

#[tokio::test]
async fn snapshot_binds_the_first_device_and_answers_304_on_its_etag() {
    let stack = start("display-snapshot", 1, None).await;
    let addr = &stack.addr;

    let first = snapshot(addr, "demo-1", "device-a", None).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let body = first.json();
    assert_eq!(body["school"], "demo");
    assert_eq!(body["revision"], 1);
    assert_eq!(body["meta"]["ws_enabled"], true);
    assert!(body["schedule"]["periods"].is_array(), "{body}");
    let etag = first.header("etag").expect("an ETag").to_owned();

    let again = snapshot(addr, "demo-1", "device-a", Some(&etag)).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    let other = snapshot(addr, "demo-1", "device-b", None).await;
    assert_eq!(other.status, 403);
    assert_eq!(other.json(), json!({"detail": "screen_bound"}));

    let unknown = snapshot(addr, "nope", "device-a", None).await;
    assert_eq!(unknown.status, 404);
    let no_dk = display_common::request(addr, http::Method::GET, "/api/display/snapshot/demo-2/", &[], "").await;
    assert_eq!(no_dk.status, 400);

    let current = status(addr, "demo-1", "1").await.json();
    assert_eq!(current["fetch_required"], false);
    assert_eq!(current["revision"], 1);
    assert_eq!(status(addr, "demo-1", "0").await.json()["fetch_required"], true);
    assert_eq!(status(addr, "nope", "1").await.status, 404);
}

#[tokio::test]
async fn admin_edits_need_the_token_and_bump_the_revision() {
    let stack = start("display-admin", 1, None).await;
    let addr = &stack.addr;
    let schedule = json!({"title": "Tuesday", "periods": [{"time": "08:00", "subject": "Art", "room": "C3"}]});

    assert_eq!(put_schedule(addr, "demo", &schedule, None).await.status, 401);
    assert_eq!(put_schedule(addr, "demo", &schedule, Some("wrong")).await.status, 401);
    let ws_flag_no_auth = display_common::request(
        addr,
        http::Method::PUT,
        "/api/display/admin/ws-enabled/",
        &[],
        r#"{"enabled": false}"#,
    )
    .await;
    assert_eq!(ws_flag_no_auth.status, 401);

    let before = snapshot(addr, "demo-1", "dev", None).await;
    let etag = before.header("etag").expect("an ETag").to_owned();
    let edited = put_schedule(addr, "demo", &schedule, Some(ADMIN)).await;
    assert_eq!(edited.status, 200, "{}", edited.text());
    assert_eq!(edited.json(), json!({"revision": 2}));
    assert_eq!(put_schedule(addr, "nope", &schedule, Some(ADMIN)).await.status, 404);

    let after = snapshot(addr, "demo-1", "dev", Some(&etag)).await;
    assert_eq!(after.status, 200, "the old ETag no longer matches");
    assert_eq!(after.json()["revision"], 2);
    assert_eq!(after.json()["schedule"], schedule);
    let polled = status(addr, "demo-1", "1").await.json();
    assert_eq!(
        polled,
        json!({"fetch_required": true, "revision": 2, "ws_enabled": true})
    );
}

#[tokio::test]
async fn twenty_first_requests_at_once_bind_exactly_one_device() {
    let stack = start("display-race", 2, None).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let addr = stack.addr.clone();
            tokio::spawn(async move { snapshot(&addr, "demo-2", &format!("racer-{i}"), None).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("request task"));
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 19, "{statuses:?}");
}
