//! The display socket: close codes, ping, invalidation of every screen of a
//! school within a second of an edit, the live feature flag, and recovery: a
//! screen joining since a position gets what was broadcast while it was away
//! (or `recover_failed`).

mod display_common;
mod http_common;

use std::time::{Duration, Instant};

use display_common::{
    log_lines, lose_group_history, put_schedule, recv_type, set_ws_enabled, snapshot, socket, start, ADMIN,
};
use serde_json::{json, Value};
use switchyard_tests::ws::{self, WsClient};

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

/// A socket joining `school:demo` since a position (`since`/`epoch` in the URL).
async fn socket_since(addr: &str, token: &str, dk: &str, since: &Value) -> WsClient {
    let epoch = since["epoch"].as_str().unwrap_or_default();
    let seq = since["seq"].as_u64().unwrap_or_default();
    let url = format!("ws://{addr}/ws/display/?token={token}&dk={dk}&since={seq}&epoch={epoch}");
    ws::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: handshake failed: {e}"))
}

/// The school group's frames (`invalidate`, `config`, `recover_failed`) until `n` of them
/// arrived, then nothing more of them until the socket answers a ping: every frame the
/// server had for it came before the pong.
async fn school_frames(client: &mut WsClient, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut frames = Vec::new();
    let mut pinged = false;
    loop {
        if frames.len() >= n && !pinged {
            client.send_text(r#"{"type": "ping"}"#).await.expect("send ping");
            pinged = true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = client
            .recv_json(left)
            .await
            .unwrap_or_else(|e| panic!("{} of {n} frames ({frames:?}): {e}", frames.len()));
        match frame["type"].as_str() {
            Some("pong") if pinged => return frames,
            Some("invalidate" | "config" | "recover_failed") => frames.push(frame),
            _ => {}
        }
    }
}

/// What a screen does: joins since the position its snapshot (then its last broadcast)
/// gives. Edits broadcast while its socket is down reach it when it is back, in order,
/// once; a position the history cannot serve gets `recover_failed` (the page refetches).
#[tokio::test]
async fn a_screen_gets_the_edits_broadcast_while_its_socket_was_down() {
    let stack = start("display-recover", 1, Some("true")).await;
    let addr = &stack.addr;
    let edit = |n: u64| json!({"title": format!("edit {n}"), "periods": []});

    // The snapshot says where the school's group stood when it was read.
    let snap = snapshot(addr, "demo-1", "a", None).await.json();
    assert_eq!(snap["meta"]["group"], "school:demo", "{snap}");
    let at_snapshot = snap["meta"].clone();
    assert!(
        at_snapshot["seq"].is_u64() && at_snapshot["epoch"].is_string(),
        "{snap}"
    );

    // An edit between the snapshot and the socket: delivered when the socket joins since it.
    assert_eq!(put_schedule(addr, "demo", &edit(2), Some(ADMIN)).await.status, 200);
    let mut screen = socket_since(addr, "demo-1", "a", &at_snapshot).await;
    let got = school_frames(&mut screen, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "invalidate");
    assert_eq!(got[0]["revision"], 2);
    assert_eq!(got[0]["group"], "school:demo");
    let last = got[0].clone();

    // The socket drops; two edits are broadcast meanwhile; back since its last broadcast.
    drop(screen);
    for n in [3, 4] {
        assert_eq!(put_schedule(addr, "demo", &edit(n), Some(ADMIN)).await.status, 200);
    }
    let mut screen = socket_since(addr, "demo-1", "a", &last).await;
    let got = school_frames(&mut screen, 2).await;
    let revisions: Vec<&Value> = got.iter().map(|f| &f["revision"]).collect();
    assert_eq!(revisions, [3, 4], "in order, once: {got:?}");
    let seq = last["seq"].as_u64().unwrap_or_default();
    assert_eq!(got[0]["seq"], seq + 1, "{got:?}");
    assert_eq!(got[1]["seq"], seq + 2, "{got:?}");
    assert_eq!(got[1]["epoch"], last["epoch"], "{got:?}");
    let last = got[1].clone();
    // Live again: the next edit arrives as usual.
    assert_eq!(put_schedule(addr, "demo", &edit(5), Some(ADMIN)).await.status, 200);
    let live = recv_type(&mut screen, "invalidate", Duration::from_secs(5)).await;
    assert_eq!(live["revision"], 5);
    assert_eq!(live["seq"], seq + 3);
    drop(screen);

    // A position of another epoch (the group's keys were lost: Redis flushed) or ahead of
    // the group: recover_failed, with where the broadcasts that follow continue from.
    lose_group_history(&stack, "school:demo");
    assert_eq!(put_schedule(addr, "demo", &edit(6), Some(ADMIN)).await.status, 200);
    let mut screen = socket_since(addr, "demo-1", "a", &last).await;
    let got = school_frames(&mut screen, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["type"], "recover_failed", "{got:?}");
    assert_eq!(got[0]["reason"], "epoch", "{got:?}");
    assert_eq!(got[0]["group"], "school:demo", "{got:?}");
    assert_ne!(got[0]["epoch"], last["epoch"], "{got:?}");
    assert_eq!(got[1]["revision"], 6, "the new epoch's broadcast follows: {got:?}");
    assert_eq!(got[1]["seq"], 1, "{got:?}");
    drop(screen);
    let ahead = json!({"seq": 99, "epoch": got[1]["epoch"]});
    let mut screen = socket_since(addr, "demo-1", "a", &ahead).await;
    let got = school_frames(&mut screen, 1).await;
    assert_eq!(got[0]["type"], "recover_failed", "{got:?}");
    assert_eq!(got[0]["reason"], "ahead", "{got:?}");
    assert_eq!(got[0]["seq"], 1, "{got:?}");

    // Malformed positions are ignored (logged): the screen joins from now on, as without.
    let mut screen = socket(addr, "demo-2", "b").await;
    recv_type(&mut screen, "hello", Duration::from_secs(5)).await;
    let url = format!("ws://{addr}/ws/display/?token=demo-3&dk=c&since=x&epoch=y");
    let mut malformed = ws::connect(&url).await.expect("handshake");
    recv_type(&mut malformed, "hello", Duration::from_secs(5)).await;
    assert_eq!(log_lines(&stack, &["malformed since/epoch", "demo-3"]).len(), 1);
    assert_eq!(put_schedule(addr, "demo", &edit(7), Some(ADMIN)).await.status, 200);
    for client in [&mut screen, &mut malformed] {
        assert_eq!(
            recv_type(client, "invalidate", Duration::from_secs(5)).await["revision"],
            7
        );
    }
    let recovering = log_lines(&stack, &["WS connected", "recovering"])
        .iter()
        .filter(|line| without_colours(line).contains("recovering=true"))
        .count();
    assert_eq!(
        recovering, 4,
        "`WS connected` says which sockets joined since a position"
    );
}

/// A log line without its ANSI colour codes (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
