//! The display socket: close codes, ping, invalidation of every screen of a
//! school within a second of an edit, and the live feature flag.

mod display_common;
mod http_common;

use std::time::{Duration, Instant};

use display_common::{log_lines, put_schedule, recv_type, set_ws_enabled, snapshot, socket, start, ADMIN};
use serde_json::json;

#[tokio::test]
async fn close_codes_ping_and_invalidation() {
    let stack = start("display-socket", 2, Some("true")).await;
    let addr = &stack.addr;

    let mut screens = Vec::new();
    for (token, dk) in [("demo-1", "a"), ("demo-2", "b"), ("demo-3", "c")] {
        let mut screen = socket(addr, token, dk).await;
        let hello = recv_type(&mut screen, "hello", Duration::from_secs(5)).await;
        assert_eq!(hello["revision"], 1);
        screens.push(screen);
    }
    screens[0].send_text(r#"{"type": "ping"}"#).await.unwrap();
    recv_type(&mut screens[0], "pong", Duration::from_secs(5)).await;

    let mut mismatch = socket(addr, "demo-1", "someone-else").await;
    assert_eq!(mismatch.expect_close(Duration::from_secs(5)).await.unwrap(), Some(4408));
    let mut unknown = socket(addr, "nope", "a").await;
    assert_eq!(unknown.expect_close(Duration::from_secs(5)).await.unwrap(), Some(4404));

    for revision in 2..=4 {
        let edit = json!({"title": format!("edit {revision}"), "periods": []});
        let started = Instant::now();
        let reply = put_schedule(addr, "demo", &edit, Some(ADMIN)).await;
        assert_eq!(reply.json()["revision"], revision);
        for screen in &mut screens {
            let invalidate = recv_type(screen, "invalidate", Duration::from_secs(1)).await;
            assert_eq!(invalidate["revision"], revision);
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    // The runbook's greps: `WS connected.*school:`, `WS broadcast sent`,
    // `schedule_revision bumped`, `device_binding_reject` (screen_bound).
    let count = |needles: &[&str]| log_lines(&stack, needles).len();
    assert_eq!(count(&["WS connected", "school:demo"]), 3);
    assert_eq!(count(&["WS broadcast sent", "school:demo", "invalidate"]), 3);
    assert_eq!(count(&["schedule_revision bumped"]), 3);
    assert_eq!(count(&["device_binding_reject", "screen_bound", "someone-else"]), 1);
}

#[tokio::test]
async fn the_flag_flips_live_and_its_default_comes_from_the_environment() {
    let stack = start("display-flag", 1, Some("true")).await;
    let addr = &stack.addr;
    let mut screen = socket(addr, "demo-1", "a").await;
    recv_type(&mut screen, "hello", Duration::from_secs(5)).await;

    assert_eq!(set_ws_enabled(addr, false).await.status, 200);
    let config = recv_type(&mut screen, "config", Duration::from_secs(2)).await;
    assert_eq!(config["ws_enabled"], false);
    let mut refused = socket(addr, "demo-1", "a").await;
    assert_eq!(refused.expect_close(Duration::from_secs(5)).await.unwrap(), Some(4400));
    assert_eq!(
        snapshot(addr, "demo-1", "a", None).await.json()["meta"]["ws_enabled"],
        false
    );

    assert_eq!(set_ws_enabled(addr, true).await.status, 200);
    let mut back = socket(addr, "demo-1", "a").await;
    recv_type(&mut back, "hello", Duration::from_secs(5)).await;
    drop(stack);

    // DISPLAY_WS_ENABLED unset: off ("Feature flag is OFF initially").
    let off = start("display-flag-off", 1, None).await;
    let mut refused = socket(&off.addr, "demo-1", "a").await;
    assert_eq!(refused.expect_close(Duration::from_secs(5)).await.unwrap(), Some(4400));
    assert_eq!(
        snapshot(&off.addr, "demo-1", "a", None).await.json()["meta"]["ws_enabled"],
        false
    );
}
