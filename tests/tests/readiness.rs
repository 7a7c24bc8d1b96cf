//! Readiness means "this interface can serve": `/readyz` is Redis reachable and not
//! draining. A routed channel without a live worker no longer takes the interface out of
//! rotation (every interface shares the same workers, so that took them all out);
//! instead its handshakes and HTTP requests get 503 at once — well before
//! `--connect-timeout` / `--http-timeout` — `/status` lists it as unserved, and the
//! `switchyard_channel_unserved` gauge says 1 (the `SwitchyardChannelUnserved` alert
//! reads it). `--ready-requires-workers` keeps the old rule.

mod http_common;

use std::time::{Duration, Instant};

use http_common::{get, wait_for, Options, Stack};
use switchyard_tests::http::metric;

/// Long enough that an answer "at once" cannot be the timeout's.
const LONG_TIMEOUT: &str = "60";
/// Far below LONG_TIMEOUT, far above any honest 503 on a loaded machine.
const AT_ONCE: Duration = Duration::from_secs(20);

fn only(channel: &str) -> Vec<String> {
    vec!["--only-channels".to_owned(), channel.to_owned()]
}

fn interface_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--route",
        "/ws/chat/=chat",
        "--route",
        "/ws/echo/=echo",
        "--http-route",
        "/api/example/=http.example",
        "--connect-timeout",
        LONG_TIMEOUT,
        "--http-timeout",
        LONG_TIMEOUT,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Waits until `/readyz`'s list of channels without a live worker is `want`.
async fn wait_unserved(addr: &str, want: &[&str]) -> serde_json::Value {
    let want = serde_json::json!(want);
    let seen = wait_for(Duration::from_secs(20), || {
        let want = want.clone();
        async move {
            get(addr, "/readyz")
                .await
                .is_ok_and(|r| r.json()["channels_without_workers"] == want)
        }
    })
    .await;
    let last = get(addr, "/readyz").await.unwrap();
    assert!(
        seen.is_ok(),
        "channels without workers never became {want}: {}",
        last.text()
    );
    last.json()
}

/// Opens a WebSocket; the HTTP status of a refused handshake, 101 when accepted.
async fn handshake_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{url}: {other}"),
    }
}

#[tokio::test]
async fn an_unserved_channel_gets_503_at_once_while_the_interface_stays_ready() {
    let options = Options {
        interface_args: interface_args(&[]),
        workers: vec![only("chat"), only("http.example")],
        ..Options::default()
    };
    let mut stack = Stack::start("readiness-unserved", options).await;
    let addr = stack.addr.clone();
    wait_unserved(&addr, &["echo"]).await;

    // No echo worker, yet the interface is ready: the other channels work through it.
    let ready = get(&addr, "/readyz").await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["ready"], true);
    let started = Instant::now();
    assert_eq!(handshake_status(&format!("ws://{addr}/ws/echo/")).await, 503);
    assert!(started.elapsed() < AT_ONCE, "the 503 took {:?}", started.elapsed());
    assert_eq!(handshake_status(&format!("ws://{addr}/ws/chat/")).await, 101);
    assert_eq!(get(&addr, "/api/example/hello").await.unwrap().status, 200);

    let status = get(&addr, "/status").await.unwrap().json();
    assert_eq!(status["unserved"], serde_json::json!(["echo"]), "{status:#}");
    let metrics = get(&addr, "/metrics").await.unwrap().text();
    assert_eq!(metric(&metrics, "switchyard_channel_unserved{channel=\"echo\"}"), 1.0);
    assert_eq!(metric(&metrics, "switchyard_channel_unserved{channel=\"chat\"}"), 0.0);
    assert_eq!(metric(&metrics, "switchyard_channel_workers{channel=\"chat\"}"), 1.0);
    assert!(
        metric(
            &metrics,
            "switchyard_unserved_requests_total{kind=\"websocket\",channel=\"echo\"}"
        ) >= 1.0
    );

    // The last http.example worker stops: its requests get 503 at once, still ready.
    assert_eq!(stack.workers[1].stop(), Some(0));
    wait_unserved(&addr, &["echo", "http.example"]).await;
    let started = Instant::now();
    let refused = get(&addr, "/api/example/hello").await.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(started.elapsed() < AT_ONCE, "the 503 took {:?}", started.elapsed());
    assert!(refused.header("retry-after").is_some(), "503 without Retry-After");
    assert_eq!(get(&addr, "/readyz").await.unwrap().status, 200);
    let metrics = get(&addr, "/metrics").await.unwrap().text();
    assert!(
        metric(
            &metrics,
            "switchyard_unserved_requests_total{kind=\"http\",channel=\"http.example\"}"
        ) >= 1.0
    );

    // A worker for echo comes: echo is served again, by itself.
    stack.add_worker(&only("echo"));
    wait_unserved(&addr, &["http.example"]).await;
    assert_eq!(handshake_status(&format!("ws://{addr}/ws/echo/")).await, 101);
    let metrics = get(&addr, "/metrics").await.unwrap().text();
    assert_eq!(metric(&metrics, "switchyard_channel_unserved{channel=\"echo\"}"), 0.0);
}

#[tokio::test]
async fn ready_requires_workers_keeps_the_old_rule() {
    let options = Options {
        interface_args: interface_args(&["--ready-requires-workers"]),
        workers: vec![only("chat"), only("http.example")],
        ..Options::default()
    };
    let mut stack = Stack::start("readiness-old-rule", options).await;
    let addr = stack.addr.clone();
    let body = wait_unserved(&addr, &["echo"]).await;
    assert_eq!(body["ready"], false, "{body:#}");
    assert_eq!(get(&addr, "/readyz").await.unwrap().status, 503);

    stack.add_worker(&only("echo"));
    stack.wait_ready().await;
    assert_eq!(get(&addr, "/readyz").await.unwrap().json()["ready"], true);
}
