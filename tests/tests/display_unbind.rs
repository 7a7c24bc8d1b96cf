//! Unbinding (the runbook's scenario 3: a school's screens stuck on 4408):
//! the open sockets of the old binding are closed with 4408, and the next
//! device to fetch binds — still exactly one of many at once. Also the census
//! behind the admin overview and the `display_*` metrics: sockets, polls,
//! rejects, and sockets of an interface that died without a word.

mod display_common;
mod http_common;

use std::process::Command;
use std::time::Duration;

use display_common::{
    admin, admin_as, log_lines, metric_sum, overview, screen, screen_of, snapshot, socket, start_with, status,
    worker_env, Display,
};
use http::Method;
use http_common::{binary, wait_for, Proc};
use serde_json::json;

/// Twenty devices at once on a free screen: exactly one binds.
async fn race(addr: &str, token: &str) -> String {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let addr = addr.to_owned();
            let token = token.to_owned();
            tokio::spawn(async move {
                let device = format!("racer-{i}");
                (snapshot(&addr, &token, &device, None).await.status, device)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("request task") {
            (200, device) => winners.push(device),
            (403, _) => refused += 1,
            (other, device) => panic!("{device}: {other}"),
        }
    }
    assert_eq!((winners.len(), refused), (1, 19), "{winners:?}");
    winners.remove(0)
}

#[tokio::test]
async fn unbinding_a_screen_closes_its_sockets_with_4408_and_the_next_device_binds() {
    let display = start_with("display-unbind", 2, worker_env(Some("true"))).await;
    let addr = &display.stack.addr;

    // Two tabs of device a, and a stuck device b that keeps getting 4408.
    let mut tab1 = screen(addr, "demo-1", "a").await;
    let mut tab2 = screen(addr, "demo-1", "a").await;
    let mut stuck = socket(addr, "demo-1", "b").await;
    assert_eq!(stuck.expect_close(Duration::from_secs(5)).await.unwrap(), Some(4408));
    assert_eq!(snapshot(addr, "demo-1", "b", None).await.status, 403);

    let reply = admin(addr, Method::DELETE, "screens/demo-1/binding/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"school": "demo", "token": "demo-1", "unbound": 1, "sockets_closed": 2})
    );
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(tab.expect_close(Duration::from_secs(2)).await.unwrap(), Some(4408));
    }

    // The next device to fetch binds: b now, and a is the one refused.
    assert_eq!(snapshot(addr, "demo-1", "b", None).await.status, 200);
    let _b = screen(addr, "demo-1", "b").await;
    let mut a = socket(addr, "demo-1", "a").await;
    assert_eq!(a.expect_close(Duration::from_secs(5)).await.unwrap(), Some(4408));

    // Still atomic after an unbind: of twenty at once, one binds.
    assert_eq!(
        admin(addr, Method::DELETE, "screens/demo-1/binding/", None)
            .await
            .status,
        200
    );
    let winner = race(addr, "demo-1").await;
    assert_eq!(screen_of(&overview(addr).await, "demo-1")["device"], winner.as_str());

    // Unknown screens and missing tokens.
    assert_eq!(
        admin(addr, Method::DELETE, "screens/nope/binding/", None).await.status,
        404
    );
    let no_token = admin_as(addr, None, Method::DELETE, "screens/demo-1/binding/", None).await;
    assert_eq!(no_token.status, 401);

    // What the runbook greps and alerts on.
    assert!(log_lines(&display.stack, &["device_binding_reject", "screen_bound"]).len() >= 21);
    assert_eq!(log_lines(&display.stack, &["screen unbound", "demo-1"]).len(), 2);
    let rejected = metric_sum(
        &display,
        "switchyard_display_binding_checks_total{via=\"snapshot\",outcome=\"rejected\"}",
    )
    .await;
    assert!(rejected >= 20.0, "{rejected}");
    let socket_rejects = metric_sum(
        &display,
        "switchyard_display_ws_connects_total{outcome=\"screen_bound\"}",
    )
    .await;
    assert_eq!(socket_rejects, 2.0);
    assert_eq!(
        metric_sum(&display, "switchyard_display_unbound_screens_total").await,
        2.0
    );
    let closed = wait_for(Duration::from_secs(5), || async {
        metric_sum(&display, "switchyard_display_ws_disconnects_total{code=\"4408\"}").await >= 2.0
    })
    .await;
    assert!(closed.is_ok(), "the two 4408 closes were not counted");
}

#[tokio::test]
async fn unbinding_a_school_frees_every_screen_of_it() {
    let display = start_with("display-unbind-school", 1, worker_env(Some("true"))).await;
    let addr = &display.stack.addr;
    let mut sockets = Vec::new();
    for (token, device) in [("demo-1", "a"), ("demo-2", "b"), ("demo-3", "c")] {
        sockets.push(screen(addr, token, device).await);
    }
    let reply = admin(addr, Method::DELETE, "schools/demo/bindings/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"school": "demo", "unbound": 3, "sockets_closed": 3})
    );
    for socket in &mut sockets {
        assert_eq!(socket.expect_close(Duration::from_secs(2)).await.unwrap(), Some(4408));
    }
    let o = overview(addr).await;
    for token in ["demo-1", "demo-2", "demo-3"] {
        assert_eq!(screen_of(&o, token)["device"], serde_json::Value::Null, "{o}");
    }
    for token in ["demo-1", "demo-2", "demo-3"] {
        race(addr, token).await;
    }
    let again = admin(addr, Method::DELETE, "schools/demo/bindings/", None).await;
    assert_eq!(again.json()["unbound"], 3);
    assert_eq!(
        admin(addr, Method::DELETE, "schools/nope/bindings/", None).await.status,
        404
    );
}

/// Waits until the overview shows `token` in `mode`.
async fn wait_mode(addr: &str, token: &str, mode: &str) {
    let reached = wait_for(Duration::from_secs(20), || async {
        screen_of(&overview(addr).await, token)["mode"] == mode
    })
    .await;
    assert!(
        reached.is_ok(),
        "{token} never became {mode}: {}",
        screen_of(&overview(addr).await, token)
    );
}

/// Waits until every worker's gauge `switchyard_display_screens{state}` shows `count`.
async fn wait_gauge(display: &Display, state: &str, count: f64) {
    let series = format!("switchyard_display_screens{{state=\"{state}\"}}");
    let workers = display.metrics.len() as f64;
    let reached = wait_for(Duration::from_secs(10), || async {
        metric_sum(display, &series).await == count * workers
    })
    .await;
    assert!(
        reached.is_ok(),
        "{series} never {count}: {}",
        metric_sum(display, &series).await
    );
}

#[tokio::test]
async fn the_census_counts_sockets_and_polls_and_forgets_sockets_of_a_dead_interface() {
    let display = start_with("display-census", 1, worker_env(Some("true"))).await;
    let addr = display.stack.addr.clone();
    let _a = screen(&addr, "demo-1", "a").await;
    assert_eq!(status(&addr, "demo-2", "1").await.status, 200);
    wait_mode(&addr, "demo-1", "ws").await;
    wait_mode(&addr, "demo-2", "fallback").await;
    assert_eq!(screen_of(&overview(&addr).await, "demo-3")["mode"], "offline");
    wait_gauge(&display, "ws", 1.0).await;
    wait_gauge(&display, "fallback", 1.0).await;
    let ratio = metric_sum(&display, "switchyard_display_polling_ratio").await;
    assert!((ratio - 0.5).abs() < 1e-9, "{ratio}");
    let totals = overview(&addr).await["totals"].clone();
    assert_eq!(totals["ws"], 1);
    assert_eq!(totals["fallback"], 1);

    // The switch off: a polling screen polls by design, not as a fallback.
    assert_eq!(display_common::set_ws_enabled(&addr, false).await.status, 200);
    wait_mode(&addr, "demo-2", "polling").await;

    // An interface killed outright sends no disconnect; once its liveness
    // key expires, the census forgets its sockets.
    assert_eq!(display_common::set_ws_enabled(&addr, true).await.status, 200);
    let second = http_common::free_port();
    let args = [
        "--bind".to_owned(),
        format!("127.0.0.1:{second}"),
        "--redis-url".into(),
        display.stack.redis_url.clone(),
        "--route".into(),
        "/ws/display/=display".into(),
    ];
    let mut doomed = Proc::spawn(
        "interface-doomed",
        &binary("switchyard-interface"),
        &args,
        &[],
        &display.stack.dir,
    );
    let second_addr = format!("127.0.0.1:{second}");
    let listening = wait_for(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&second_addr).await.is_ok()
    })
    .await;
    assert!(listening.is_ok());
    let _c = screen(&second_addr, "demo-3", "c").await;
    wait_mode(&addr, "demo-3", "ws").await;
    let killed = Command::new("kill")
        .args(["-KILL", &doomed.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    doomed.stop();
    wait_mode(&addr, "demo-3", "offline").await;
    assert_eq!(screen_of(&overview(&addr).await, "demo-1")["mode"], "ws");
    assert!(!log_lines(&display.stack, &["forgetting sockets of interfaces that are gone"]).is_empty());
}
