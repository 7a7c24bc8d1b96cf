//! HTTP through workers: requests on an HTTP route become `http.request`
//! messages, an axum `Router` in the worker answers, and the response comes
//! back — small ones whole, large and slow ones streamed.

mod http_common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use http_common::{get, wait_for, Client, Options, Stack};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'0' + (i % 10) as u8).collect()
}

#[tokio::test]
async fn get_post_head_and_keep_alive() {
    let stack = Stack::start("http-basic", Options::default()).await;
    stack.wait_ready().await;
    let mut client = Client::connect(&stack.addr).await.unwrap();

    let index = client.get("/api/example/").await.unwrap();
    assert_eq!(index.status, 200, "{}", index.text());
    assert_eq!(index.header("content-type"), Some("application/json"));
    let first_client = index.json()["client"].as_str().unwrap().to_owned();

    let hello = client.get("/api/example/hello?name=switchyard").await.unwrap();
    assert_eq!(hello.json(), serde_json::json!({"hello": "switchyard"}));

    let echo = client
        .send(
            Method::POST,
            "/api/example/echo",
            &[("content-type", "text/plain")],
            "hi there",
        )
        .await
        .unwrap();
    assert_eq!(echo.status, 200);
    assert_eq!(echo.header("content-type"), Some("text/plain"));
    assert_eq!(echo.text(), "hi there");

    let head = client
        .send(Method::HEAD, "/api/example/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");
    assert_eq!(head.header("content-length"), index.header("content-length"));

    // Still the same TCP connection: the app sees the same client port.
    let again = client.get("/api/example/").await.unwrap();
    assert_eq!(again.json()["client"].as_str(), Some(first_client.as_str()));

    let missing = client.get("/api/example/nope").await.unwrap();
    assert_eq!(missing.status, 404, "the app's own 404");
    let unrouted = client.get("/nowhere").await.unwrap();
    assert_eq!(unrouted.status, 404);
}

#[tokio::test]
async fn large_bodies_both_ways() {
    let stack = Stack::start("http-large", Options::default()).await;
    stack.wait_ready().await;
    let mut client = Client::connect(&stack.addr).await.unwrap();

    // 300 KiB up: five chunks, collected in Redis between workers' commits.
    let upload: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let echo = client
        .send(
            Method::POST,
            "/api/example/echo",
            &[("content-type", "application/octet-stream")],
            upload.clone(),
        )
        .await
        .unwrap();
    assert_eq!(echo.status, 200);
    assert!(
        echo.body == upload,
        "echoed body differs ({} bytes back)",
        echo.body.len()
    );

    // 8 MiB down, streamed in pieces.
    let size = 8 << 20;
    let big = client.get(&format!("/api/example/stream?size={size}")).await.unwrap();
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), size);
    assert!(big.body == pattern(size), "streamed body differs");

    // No request body is left behind in Redis.
    let mut redis = stack.redis_conn();
    let left: Vec<String> = redis::cmd("KEYS").arg("*httpbody*").query(&mut redis).unwrap();
    assert!(left.is_empty(), "request bodies left in Redis: {left:?}");
}

#[tokio::test]
async fn slow_responses_stream_as_they_are_made() {
    let stack = Stack::start("http-slow", Options::default()).await;
    stack.wait_ready().await;
    // 16 pieces of 16 KiB, 150 ms apart: the first bytes must arrive long
    // before the last piece is made.
    let tcp = tokio::net::TcpStream::connect(&stack.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/api/example/stream?size=262144&delay_ms=150")
        .header("host", &stack.addr)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let started = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0;
    let mut first_at = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
            first_at.get_or_insert_with(|| started.elapsed());
        }
    }
    let total = started.elapsed();
    let first_at = first_at.expect("some body");
    assert_eq!(received, 262_144);
    assert!(total >= Duration::from_millis(15 * 150), "took only {total:?}");
    assert!(
        first_at < total / 2,
        "first bytes after {first_at:?} of {total:?}: not streamed"
    );
}

#[tokio::test]
async fn bodies_over_max_body_get_413() {
    let options = Options {
        interface_args: vec!["--max-body".into(), "100000".into()],
        ..Options::default()
    };
    let stack = Stack::start("http-413", options).await;
    stack.wait_ready().await;

    let fits = vec![b'x'; 100_000];
    let mut client = Client::connect(&stack.addr).await.unwrap();
    let ok = client.send(Method::POST, "/api/example/echo", &[], fits).await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body.len(), 100_000);

    // Declared too large: refused before reading.
    let mut client = Client::connect(&stack.addr).await.unwrap();
    let declared = client
        .send(Method::POST, "/api/example/echo", &[], vec![b'x'; 100_001])
        .await
        .unwrap();
    assert_eq!(declared.status, 413, "{}", declared.text());
    assert!(declared.text().contains("--max-body"));

    // Chunked, no length: refused once the limit is crossed mid-stream.
    let tcp = tokio::net::TcpStream::connect(&stack.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let pieces = futures::stream::iter(
        (0..10).map(|_| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![b'y'; 30_000])))),
    );
    let request = http::Request::post("/api/example/echo")
        .header("host", &stack.addr)
        .body(http_body_util::StreamBody::new(pieces))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 413);

    let mut redis = stack.redis_conn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left: Vec<String> = redis::cmd("KEYS").arg("*httpbody*").query(&mut redis).unwrap();
    assert!(left.is_empty(), "refused request left its body in Redis: {left:?}");
}

#[tokio::test]
async fn no_worker_means_503_at_once() {
    // A routed channel without a live worker is answered 503 at once (readiness.rs has the
    // rest of that rule); --http-timeout is for workers that are there but do not answer
    // (a_slow_app_also_gets_503).
    let options = Options {
        interface_args: vec!["--http-timeout".into(), "60".into()],
        workers: Vec::new(),
        ..Options::default()
    };
    let stack = Stack::start("http-503", options).await;
    let addr = stack.addr.clone();
    let known = wait_for(Duration::from_secs(15), || {
        let addr = addr.clone();
        async move {
            get(&addr, "/readyz").await.is_ok_and(|r| {
                r.status == 200
                    && r.json()["channels_without_workers"]
                        .to_string()
                        .contains("http.example")
            })
        }
    })
    .await;
    assert!(known.is_ok(), "the interface never saw http.example unserved");
    let started = Instant::now();
    let response = get(&stack.addr, "/api/example/").await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status, 503);
    assert!(
        response.text().contains("no worker serves channel http.example"),
        "{}",
        response.text()
    );
    assert!(took < Duration::from_secs(20), "answered after {took:?}, not at once");

    // A worker started later serves new requests.
    let mut stack = stack;
    stack.add_worker(&[]);
    stack.wait_ready().await;
    let ok = get(&stack.addr, "/api/example/hello").await.unwrap();
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn a_slow_app_also_gets_503() {
    let options = Options {
        interface_args: vec!["--http-timeout".into(), "1".into()],
        ..Options::default()
    };
    let stack = Stack::start("http-slow-app", options).await;
    stack.wait_ready().await;
    let response = get(&stack.addr, "/api/example/slow?ms=3000").await.unwrap();
    assert_eq!(response.status, 503);
    let fast = get(&stack.addr, "/api/example/slow?ms=10").await.unwrap();
    assert_eq!(fast.status, 200);
}
