//! The echo app round trip, and the interface's health endpoints.

use std::time::Duration;

use switchyard_tests::stack::REPLY_TIMEOUT;
use switchyard_tests::{bounded, http, Incoming, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip_text_and_binary() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("echo").workers(1).start().await;
        let mut c = stack.ws("/ws/echo/").await;

        c.send_text("hello").await.unwrap();
        assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text("hello".into()));

        let unicode = "héllo wörld ✓ 🚂";
        c.send_text(unicode).await.unwrap();
        assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text(unicode.into()));

        let bytes = vec![0u8, 1, 2, 0x7f, 0x80, 0xfe, 0xff];
        c.send_binary(bytes.clone()).await.unwrap();
        assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Binary(bytes));

        // A larger binary message (64 KiB, below the 1 MiB default limit) comes back intact.
        let big: Vec<u8> = (0..65_536u32).map(|i| (i * 7 % 251) as u8).collect();
        c.send_binary(big.clone()).await.unwrap();
        assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Binary(big));

        // Several messages in a row keep their order.
        for i in 0..20 {
            c.send_text(format!("m{i}")).await.unwrap();
        }
        for i in 0..20 {
            assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text(format!("m{i}")));
        }
        c.close().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer() {
    bounded(Duration::from_secs(60), async {
        // Ready also means a live worker for every routed channel.
        let stack = Stack::builder("health").workers(1).start().await;
        let healthz = http::get(&stack.addr, "/healthz").await.unwrap();
        assert_eq!(healthz.status, 200, "/healthz: {healthz:?}");
        // The interface reads the workers' liveness keys once a second.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut readyz = http::get(&stack.addr, "/readyz").await.unwrap();
        while readyz.status != 200 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            readyz = http::get(&stack.addr, "/readyz").await.unwrap();
        }
        assert_eq!(readyz.status, 200, "/readyz with Redis up: {readyz:?}");
    })
    .await
}
