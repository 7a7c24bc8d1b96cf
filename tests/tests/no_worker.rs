//! With no worker running, a WebSocket handshake is answered 503 once the connect timeout
//! has passed — the interface does not hang the client.

use std::time::{Duration, Instant};

use switchyard_tests::ws::{connect, ConnectError};
use switchyard_tests::{bounded, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_gets_503_without_workers() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("no-worker")
            .workers(0)
            .interface_arg("--connect-timeout")
            .interface_arg("1")
            .start()
            .await;
        for path in ["/ws/echo/", "/ws/chat/"] {
            let t0 = Instant::now();
            match connect(&stack.ws_url(path)).await {
                Err(ConnectError::Status(503)) => {}
                Err(other) => panic!("{path}: expected HTTP 503, got {other}"),
                Ok(_) => panic!("{path}: handshake accepted with no worker running"),
            }
            let elapsed = t0.elapsed();
            // Connect timeout is 1 s; allow plenty of slack for a loaded machine.
            assert!(elapsed < Duration::from_secs(6), "{path}: 503 took {elapsed:?}");
        }
    })
    .await
}
