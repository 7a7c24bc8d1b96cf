//! Self-tests of the harness pieces that do not need our binaries: the throw-away
//! redis-server (start, kill, restart on the same port) and the raw WebSocket client's
//! framing (checked against tungstenite as the server).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchyard_tests::ws::RawWs;
use switchyard_tests::{bounded, RedisServer, TestDir};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_server_starts_restarts_and_stops() {
    bounded(Duration::from_secs(60), async {
        let dir = TestDir::new("harness-redis");
        let mut redis = RedisServer::start(dir.path()).await.unwrap();
        assert_ne!(redis.port(), 6379);
        let mut con = redis.conn().unwrap();
        let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();

        redis.kill();
        assert!(!redis.is_running());
        assert!(redis::cmd("PING").query::<String>(&mut con).is_err());

        let port = redis.port();
        redis.restart().await.unwrap();
        assert_eq!(redis.port(), port, "restart keeps the port");
        let mut con = redis.conn().unwrap();
        let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
        assert_eq!(v, None, "no persistence: data is gone after a restart");

        redis.stop().await;
        assert!(!redis.is_running());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_client_frames_are_valid_websocket() {
    bounded(Duration::from_secs(30), async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(_) | Message::Binary(_) => ws.send(msg).await.unwrap(),
                    // tungstenite answers the close itself on the next poll.
                    _ => {}
                }
            }
        });
        let mut raw = RawWs::connect(&addr, "/").await.unwrap();
        raw.write_frame(true, 0x1, b"hi").await.unwrap();
        let f = raw.read_frame(Duration::from_secs(5)).await.unwrap();
        assert_eq!((f.fin, f.opcode, f.payload.as_slice()), (true, 0x1, &b"hi"[..]));

        raw.write_frame(false, 0x1, b"h\xc3").await.unwrap();
        raw.write_frame(true, 0x0, b"\xa9").await.unwrap();
        let f = raw.read_frame(Duration::from_secs(5)).await.unwrap();
        assert_eq!(f.payload, "hé".as_bytes());

        let big = vec![9u8; 70_000];
        raw.write_frame(true, 0x2, &big).await.unwrap();
        let f = raw.read_frame(Duration::from_secs(5)).await.unwrap();
        assert_eq!((f.opcode, f.payload.len()), (0x2, big.len()));

        raw.write_frame(true, 0x8, &1000u16.to_be_bytes()).await.unwrap();
        assert_eq!(raw.expect_close(Duration::from_secs(5)).await.unwrap(), Some(1000));
        server.await.unwrap();
    })
    .await
}
