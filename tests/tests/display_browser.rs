//! The display page in headless Chromium, with its socket on one interface
//! (A) and its HTTP on another (B): it shows the schedule, an edit arrives
//! through the socket in under a second, with A killed it keeps updating by
//! polling B, and when A is back it returns to the socket (`data-mode`).
//! And the runbook's operator steps as a screen sees them: a screen stuck on
//! `screen_bound` binds once unbound; a school leaving the rollout polls at
//! once (`data-mode="poll"`, `data-ws="off"`) and returns within a poll.
//!
//! `scripts/browser-setup` installs Chromium and playwright-core when missing.

mod display_common;
mod http_common;

use std::time::{Duration, Instant};

use display_common::{admin, lose_group_history, put_schedule, set_rollout, snapshot, Browser, ADMIN};
use http::Method;
use http_common::{binary, free_port, wait_for, Proc, Stack};
use serde_json::{json, Value};

/// The display page, driven by `tests/browser/display_page.mjs`.
struct Page(Browser);

impl Page {
    fn open(url: &str) -> Page {
        Page(Browser::open("display_page.mjs", url))
    }

    async fn quit(self) {
        self.0.quit("quit").await;
    }

    /// Waits (in the page) for `mode` and `revision` (`*`: any); returns the page's report.
    async fn wait(&mut self, mode: &str, revision: impl std::fmt::Display, timeout_ms: u64) -> Value {
        let command = format!("wait {mode} {revision} {timeout_ms}");
        self.0
            .command(&command, Duration::from_millis(timeout_ms + 30_000))
            .await
    }
}

/// Interface A: the same Redis, only the display socket route.
fn interface_a(stack: &Stack, port: u16) -> Proc {
    let args = [
        "--bind".to_owned(),
        format!("127.0.0.1:{port}"),
        "--redis-url".into(),
        stack.redis_url.clone(),
        "--route".into(),
        "/ws/display/=display".into(),
    ];
    Proc::spawn("interface-a", &binary("switchyard-interface"), &args, &[], &stack.dir)
}

/// Interface A listening on a port of its own, and the page with its socket on A, its
/// HTTP on the stack's interface and `polling` (`poll_min=…&poll_max=…`), showing
/// revision 1 over the socket.
async fn open_on_a(stack: &Stack, polling: &str) -> (u16, Proc, Page) {
    let port_a = free_port();
    let a = interface_a(stack, port_a);
    let a_listens = || async move { tokio::net::TcpStream::connect(("127.0.0.1", port_a)).await.is_ok() };
    assert!(wait_for(Duration::from_secs(10), a_listens).await.is_ok(), "A listens");
    let url = format!(
        "http://{b}/display/?token=demo-1&dk=browser&ws=ws://127.0.0.1:{port_a}&api=http://{b}\
         &{polling}&backoff_min=0.3&backoff_max=1",
        b = stack.addr
    );
    let mut page = Page::open(&url);
    let shown = page.wait("ws", 1, 20_000).await;
    assert_eq!(
        shown["ok"], true,
        "the page never showed revision 1 over the socket: {shown}"
    );
    (port_a, a, page)
}

#[tokio::test]
async fn the_page_follows_edits_by_socket_and_by_polling_when_the_socket_is_gone() {
    let stack = display_common::start_pages("display-browser").await;
    let (port_a, mut a, mut page) = open_on_a(&stack, "poll_min=0.3&poll_max=1").await;
    let shown = page.wait("ws", 1, 5_000).await;
    assert_eq!(shown["title"], "Monday", "{shown}");
    assert_eq!(shown["rows"], 4, "{shown}");

    let edit =
        |n: u64| json!({"title": format!("edit {n}"), "periods": [{"time": "09:00", "subject": format!("S{n}")}]});
    let started = Instant::now();
    assert_eq!(
        put_schedule(&stack.addr, "demo", &edit(2), Some(ADMIN)).await.status,
        200
    );
    let shown = page.wait("ws", 2, 1_000).await;
    let socket_latency = started.elapsed();
    assert_eq!(
        shown["ok"], true,
        "the edit did not arrive by socket within 1 s: {shown}"
    );
    assert!(socket_latency < Duration::from_secs(1), "{socket_latency:?}");
    assert_eq!(shown["title"], "edit 2", "{shown}");

    // A goes away: the page falls back to polling B and still follows edits.
    a.stop();
    let shown = page.wait("poll", 2, 10_000).await;
    assert_eq!(shown["ok"], true, "the page did not switch to polling: {shown}");
    let started = Instant::now();
    assert_eq!(
        put_schedule(&stack.addr, "demo", &edit(3), Some(ADMIN)).await.status,
        200
    );
    let shown = page.wait("poll", 3, 10_000).await;
    assert_eq!(shown["ok"], true, "the edit did not arrive by polling: {shown}");
    let poll_latency = started.elapsed();

    // A is back on the same port: the page returns to the socket.
    let _a = interface_a(&stack, port_a);
    let shown = page.wait("ws", 3, 15_000).await;
    assert_eq!(shown["ok"], true, "the page did not return to the socket: {shown}");
    let started = Instant::now();
    assert_eq!(
        put_schedule(&stack.addr, "demo", &edit(4), Some(ADMIN)).await.status,
        200
    );
    let shown = page.wait("ws", 4, 1_000).await;
    assert_eq!(shown["ok"], true, "no edit by socket after A came back: {shown}");
    let back_latency = started.elapsed();
    eprintln!("socket: {socket_latency:?}, polling: {poll_latency:?}, socket again: {back_latency:?}");
    page.quit().await;
}

#[tokio::test]
async fn a_stuck_screen_binds_once_unbound_and_leaves_and_rejoins_the_rollout_within_a_poll() {
    let stack = display_common::start_pages("display-browser-rollout").await;
    let addr = stack.addr.clone();
    // Another device (a second tab with other storage, say) holds the screen.
    assert_eq!(snapshot(&addr, "demo-2", "other", None).await.status, 200);
    let url =
        format!("http://{addr}/display/?token=demo-2&dk=browser&poll_min=0.3&poll_max=1&backoff_min=0.3&backoff_max=1");
    let mut page = Page::open(&url);
    let shown = page.wait("rejected", "*", 20_000).await;
    assert_eq!(shown["ok"], true, "the page did not say it is refused: {shown}");
    assert_eq!(shown["error"], "screen_bound", "{shown}");

    // Scenario 3: the operator unbinds; the page binds at its next retry (poll_max).
    let started = Instant::now();
    let unbound = admin(&addr, Method::DELETE, "screens/demo-2/binding/", None).await;
    assert_eq!(unbound.status, 200, "{}", unbound.text());
    let shown = page.wait("ws", 1, 5_000).await;
    assert_eq!(shown["ok"], true, "the page never bound after the unbind: {shown}");
    assert_eq!(shown["error"], "", "{shown}");
    let rebind = started.elapsed();
    assert_eq!(snapshot(&addr, "demo-2", "other", None).await.status, 403);

    // The school leaves the rollout: told over the socket, it polls at once.
    let started = Instant::now();
    set_rollout(&addr, &[], 0).await;
    let shown = page.wait("poll", 1, 1_500).await;
    assert_eq!(shown["ok"], true, "the page did not fall back to polling: {shown}");
    assert_eq!(shown["ws"], "off", "{shown}");
    let leave = started.elapsed();
    let edit = json!({"title": "while polling", "periods": []});
    assert_eq!(put_schedule(&addr, "demo", &edit, Some(ADMIN)).await.status, 200);
    let shown = page.wait("poll", 2, 3_000).await;
    assert_eq!(shown["ok"], true, "no edit by polling: {shown}");

    // Back in (named): the next poll sees the new ETag and the page reconnects.
    let started = Instant::now();
    set_rollout(&addr, &["demo"], 0).await;
    let shown = page.wait("ws", 2, 3_000).await;
    assert_eq!(shown["ok"], true, "the page did not return to the socket: {shown}");
    assert_eq!(shown["ws"], "on", "{shown}");
    let rejoin = started.elapsed();

    // Unbound while open: 4408, refused, then it is the next device to fetch.
    let unbound = admin(&addr, Method::DELETE, "screens/demo-2/binding/", None).await;
    assert_eq!(unbound.json()["sockets_closed"], 1, "{}", unbound.text());
    let shown = page.wait("rejected", 2, 2_000).await;
    assert_eq!(shown["ok"], true, "the 4408 did not reach the page: {shown}");
    let shown = page.wait("ws", 2, 5_000).await;
    assert_eq!(shown["ok"], true, "the page did not bind again: {shown}");
    eprintln!("rebind after unbind: {rebind:?}, leave: {leave:?}, rejoin: {rejoin:?}");
    page.quit().await;
}

/// The page's socket drops while an edit is broadcast; polling is slowed to 10 minutes
/// and the page no longer compares `hello` revisions, so the edit can only come back
/// through recovery: the page joins since its last position and gets the invalidation
/// from the group's history. Then the group's history is lost (its keys deleted, as when
/// Redis is flushed) while an edit is broadcast: `recover_failed`, and the page refetches.
#[tokio::test]
async fn a_screen_whose_socket_dropped_gets_the_edit_through_recovery_or_refetches() {
    let stack = display_common::start_pages("display-browser-recover").await;
    let (port_a, mut a, mut page) = open_on_a(&stack, "poll_min=600&poll_max=600").await;

    let edit = |n: u64| json!({"title": format!("edit {n}"), "periods": []});
    let logged = |page_log: &Value, needle: &str| {
        page_log["lines"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|l| l.as_str().is_some_and(|l| l.contains(needle))))
    };

    // The socket drops; an edit is broadcast while it is down; it comes back through A.
    a.stop();
    let shown = page.wait("poll", 1, 10_000).await;
    assert_eq!(
        shown["ok"], true,
        "the page did not notice the socket was gone: {shown}"
    );
    assert_eq!(
        put_schedule(&stack.addr, "demo", &edit(2), Some(ADMIN)).await.status,
        200
    );
    a = interface_a(&stack, port_a);
    let shown = page.wait("ws", 2, 15_000).await;
    assert_eq!(shown["ok"], true, "the edit did not arrive through recovery: {shown}");
    assert_eq!(shown["title"], "edit 2", "{shown}");
    let page_log = page.0.command("console", Duration::from_secs(10)).await;
    assert!(
        logged(&page_log, "[WS] invalidate received: revision 2"),
        "the invalidation itself was recovered: {page_log}"
    );
    assert!(logged(&page_log, "&since="), "it joined since a position: {page_log}");

    // Down again; an edit; then the group's keys are lost with it: recover_failed → refetch.
    a.stop();
    let shown = page.wait("poll", 2, 10_000).await;
    assert_eq!(shown["ok"], true, "{shown}");
    assert_eq!(
        put_schedule(&stack.addr, "demo", &edit(3), Some(ADMIN)).await.status,
        200
    );
    lose_group_history(&stack, "school:demo");
    let _a = interface_a(&stack, port_a);
    let shown = page.wait("ws", 3, 15_000).await;
    assert_eq!(
        shown["ok"], true,
        "the page did not refetch after recover_failed: {shown}"
    );
    assert_eq!(shown["title"], "edit 3", "{shown}");
    let page_log = page.0.command("console", Duration::from_secs(10)).await;
    assert!(logged(&page_log, "[WS] recover_failed: epoch"), "{page_log}");
    assert!(!logged(&page_log, "pageerror"), "{page_log}");

    // Live again, in the new epoch.
    assert_eq!(
        put_schedule(&stack.addr, "demo", &edit(4), Some(ADMIN)).await.status,
        200
    );
    let shown = page.wait("ws", 4, 5_000).await;
    assert_eq!(shown["ok"], true, "no edit by socket in the new epoch: {shown}");
    page.quit().await;
}
