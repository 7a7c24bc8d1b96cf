//! The display's HTTP API through a worker: snapshots with ETags, device
//! binding (one winner in a race), status polls (304 on the ETag), admin
//! edits and their auth, creating schools, and the errors bad input gets.

mod display_common;
mod http_common;

use display_common::{admin, admin_as, log_lines, put_schedule, snapshot, start, start_with, status, status_if, ADMIN};
use http::Method;
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
    // DISPLAY_WS_ENABLED unset: sockets are off, as the runbook starts.
    assert_eq!(body["meta"]["ws_enabled"], false);
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
        json!({"fetch_required": true, "revision": 2, "ws_enabled": false})
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

#[tokio::test]
async fn a_status_poll_with_the_snapshots_etag_is_a_304_until_something_changes() {
    let stack = start("display-status-304", 1, Some("true")).await;
    let addr = &stack.addr;
    let first = snapshot(addr, "demo-1", "dev", None).await;
    let etag = first.header("etag").expect("an ETag").to_owned();

    let unchanged = status_if(addr, "demo-1", "1", Some(&etag)).await;
    assert_eq!(unchanged.status, 304, "{}", unchanged.text());
    assert!(unchanged.body.is_empty());
    assert_eq!(unchanged.header("etag"), Some(etag.as_str()));
    assert_eq!(status_if(addr, "demo-1", "1", Some("\"other\"")).await.status, 200);

    // An edit changes the revision; the rollout leaving the school changes the ws bit.
    let schedule = json!({"title": "x", "periods": []});
    assert_eq!(put_schedule(addr, "demo", &schedule, Some(ADMIN)).await.status, 200);
    let edited = status_if(addr, "demo-1", "1", Some(&etag)).await;
    assert_eq!(edited.status, 200);
    assert_eq!(edited.json()["fetch_required"], true);
    let etag = edited.header("etag").expect("an ETag").to_owned();
    assert_eq!(status_if(addr, "demo-1", "2", Some(&etag)).await.status, 304);
    display_common::set_rollout(addr, &[], 0).await;
    let left = status_if(addr, "demo-1", "2", Some(&etag)).await;
    assert_eq!(left.status, 200, "the ws bit is part of the tag");
    assert_eq!(
        left.json(),
        json!({"fetch_required": false, "revision": 2, "ws_enabled": false})
    );

    // The runbook counts polls that found nothing: `grep "status 304"`.
    let logged = log_lines(&stack, &["status 304", "demo-1"]);
    assert_eq!(logged.len(), 2, "{logged:?}");
}

#[tokio::test]
async fn schools_are_created_with_screens_and_bad_input_gets_a_400_with_a_message() {
    let stack = start("display-schools", 1, None).await;
    let addr = &stack.addr;
    let body = json!({"name": "North", "screens": ["north-1", "north-2"]});
    let created = admin(addr, Method::PUT, "schools/north/", Some(&body)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["created"], true);
    let again = admin(
        addr,
        Method::PUT,
        "schools/north/",
        Some(&json!({"screens": ["north-3"]})),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(snapshot(addr, "north-3", "d", None).await.json()["name"], "North");
    let schedule = admin(addr, Method::GET, "schools/north/schedule/", None).await;
    assert_eq!(schedule.status, 200);
    assert_eq!(schedule.json()["revision"], 1);

    let taken = admin(
        addr,
        Method::PUT,
        "schools/south/",
        Some(&json!({"screens": ["demo-1"]})),
    )
    .await;
    assert_eq!(taken.status, 409);
    assert_eq!(taken.json()["detail"], "screen demo-1 belongs to school demo");

    for (path, body, needle) in [
        ("schools/a%20b/", json!({}), "school ids"),
        ("schools/south/", json!({"screens": "x"}), "screens must be an array"),
        ("schools/south/", json!({"screens": ["a b"]}), "not a screen token"),
        ("schools/south/", json!({"nmae": "typo"}), "unknown field"),
        ("schools/north/schedule/", json!([1, 2]), "JSON object"),
        ("ws-enabled/", json!({"enabled": "yes"}), "expected {\"enabled\""),
        (
            "ws-rollout/",
            json!({"schools": [], "percent": 101}),
            "percent must be an integer",
        ),
        (
            "ws-rollout/",
            json!({"schools": ["nope"], "percent": 5}),
            "unknown school: nope",
        ),
        ("ws-rollout/", json!({"percent": 5}), "schools must be an array"),
    ] {
        let reply = admin(addr, Method::PUT, path, Some(&body)).await;
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.text());
        let detail = reply.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(needle), "{path} {body}: {detail}");
    }
    let not_json = display_common::request(
        addr,
        Method::PUT,
        "/api/display/admin/schools/north/schedule/",
        &[("authorization", &format!("Bearer {ADMIN}"))],
        "{nope",
    )
    .await;
    assert_eq!(not_json.status, 400);
    assert_eq!(
        admin(addr, Method::GET, "schools/nope/schedule/", None).await.status,
        404
    );

    // Every admin route wants the token.
    for (method, path) in [
        (Method::GET, "overview/"),
        (Method::GET, "ws-rollout/"),
        (Method::PUT, "ws-rollout/"),
        (Method::PUT, "schools/x/"),
        (Method::DELETE, "screens/demo-1/binding/"),
        (Method::DELETE, "schools/demo/bindings/"),
    ] {
        let reply = admin_as(addr, None, method.clone(), path, None).await;
        assert_eq!(reply.status, 401, "{method} {path}");
        let reply = admin_as(addr, Some("wrong"), method.clone(), path, None).await;
        assert_eq!(reply.status, 401, "{method} {path}");
    }
}

#[tokio::test]
async fn without_an_admin_token_on_the_workers_the_admin_api_is_forbidden() {
    let display = start_with("display-no-admin", 1, vec![]).await;
    let reply = admin_as(&display.stack.addr, Some(""), Method::GET, "overview/", None).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("DISPLAY_ADMIN_TOKEN"));
}
