//! What the interface serves itself: `/healthz`, `/readyz`, `/status`, and
//! metrics on both sides that move with traffic (readiness and unserved
//! channels: `readiness.rs`).

mod http_common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_common::{get, wait_for, Options, Stack};
use switchyard_tests::http::metric;
use tokio_tungstenite::tungstenite::Message;

fn routes() -> Vec<String> {
    [
        "--route",
        "/ws/chat/=chat",
        "--http-route",
        "/api/example/=http.example",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test]
async fn healthz_readyz_and_status() {
    let options = Options {
        interface_args: routes(),
        ..Options::default()
    };
    let stack = Stack::start("http-endpoints", options).await;
    stack.wait_ready().await;

    let health = get(&stack.addr, "/healthz").await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    let ready = get(&stack.addr, "/readyz").await.unwrap();
    let ready = ready.json();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["redis"], true);
    assert_eq!(ready["workers"]["chat"], 1);
    assert_eq!(ready["workers"]["http.example"], 1);

    let url = format!("ws://{}/ws/chat/", stack.addr);
    let (_socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let status = get(&stack.addr, "/status").await.unwrap();
    assert_eq!(status.status, 200);
    let status = status.json();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].as_f64().unwrap() > 0.0);
    let routes = status["routes"].as_array().unwrap();
    let chat = routes.iter().find(|r| r["channel"] == "chat").unwrap();
    assert_eq!(chat["kind"], "websocket");
    assert_eq!(chat["connections"], 1);
    let example = routes.iter().find(|r| r["channel"] == "http.example").unwrap();
    assert_eq!(example["kind"], "http");
    assert_eq!(example["connections"], 0);
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let metrics_port = http_common::free_port();
    let options = Options {
        interface_args: routes(),
        workers: vec![vec!["--metrics-bind".into(), format!("127.0.0.1:{metrics_port}")]],
        ..Options::default()
    };
    let stack = Stack::start("http-metrics", options).await;
    stack.wait_ready().await;
    let worker_addr = format!("127.0.0.1:{metrics_port}");
    let scrape = |addr: String| async move { get(&addr, "/metrics").await.unwrap().text() };

    let before = scrape(stack.addr.clone()).await;
    let worker_before = scrape(worker_addr.clone()).await;

    let url = format!("ws://{}/ws/chat/?session_uuid=metrics", stack.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    for _ in 0..3 {
        socket.send(Message::text("hi")).await.unwrap();
        // Skip the chat app's periodic heartbeat if one lands in between.
        loop {
            let answer = socket.next().await.unwrap().unwrap();
            if answer.to_text().unwrap().contains("count") {
                break;
            }
            assert!(answer.to_text().unwrap().contains("ts"), "unexpected frame {answer:?}");
        }
    }
    for _ in 0..2 {
        assert_eq!(get(&stack.addr, "/api/example/hello").await.unwrap().status, 200);
    }
    assert_eq!(get(&stack.addr, "/nowhere").await.unwrap().status, 404);
    let mut redis = stack.redis_conn();
    let _: String = redis::cmd("XADD")
        .arg("switchyard:chan:{chat:0}")
        .arg("*")
        .arg("m")
        .arg("not msgpack")
        .query(&mut redis)
        .unwrap();

    let during = scrape(stack.addr.clone()).await;
    assert_eq!(metric(&during, "switchyard_websocket_connections_active"), 1.0);
    let moved = |text: &str, series: &str| metric(text, series) - metric(&before, series);
    assert_eq!(
        moved(&during, "switchyard_websocket_messages_total{direction=\"in\"}"),
        3.0
    );
    // A heartbeat may add outgoing frames of its own.
    assert!(moved(&during, "switchyard_websocket_messages_total{direction=\"out\"}") >= 3.0);
    assert!(moved(&during, "switchyard_websocket_message_duration_seconds_count") >= 3.0);
    assert!(moved(&during, "switchyard_http_requests_total{status=\"200\"}") >= 2.0);
    assert!(moved(&during, "switchyard_http_requests_total{status=\"404\"}") >= 1.0);
    assert!(during.contains("switchyard_redis_errors_total"));

    let worker_addr_again = worker_addr.clone();
    let dead_lettered = wait_for(Duration::from_secs(5), || {
        let addr = worker_addr_again.clone();
        async move {
            metric(
                &get(&addr, "/metrics").await.unwrap().text(),
                "switchyard_worker_dead_letters_total",
            ) >= 1.0
        }
    })
    .await;
    assert!(
        dead_lettered.is_ok(),
        "switchyard_worker_dead_letters_total did not move"
    );
    let worker_after = scrape(worker_addr).await;
    let http = "switchyard_worker_messages_handled_total{channel=\"http.example\",type=\"http.request\",outcome=\"committed\"}";
    assert_eq!(metric(&worker_after, http) - metric(&worker_before, http), 2.0);
    let chat =
        "switchyard_worker_messages_handled_total{channel=\"chat\",type=\"websocket.receive\",outcome=\"committed\"}";
    assert_eq!(metric(&worker_after, chat) - metric(&worker_before, chat), 3.0);
    assert!(
        metric(
            &worker_after,
            "switchyard_worker_message_handling_seconds_count{channel=\"chat\"}"
        ) >= 4.0
    );
    for series in [
        "switchyard_worker_messages_in_flight",
        "switchyard_worker_claimed_messages_total",
        "switchyard_worker_dead_letters_total",
    ] {
        assert!(worker_after.contains(series), "{series} missing");
    }

    socket.close(None).await.unwrap();
    let addr = stack.addr.clone();
    let closed = wait_for(Duration::from_secs(5), || {
        let addr = addr.clone();
        async move {
            metric(
                &get(&addr, "/metrics").await.unwrap().text(),
                "switchyard_websocket_connections_active",
            ) == 0.0
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "switchyard_websocket_connections_active did not go back to 0"
    );
}
