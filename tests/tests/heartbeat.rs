//! The chat heartbeat is a periodic task that runs once per tick for the whole worker pool:
//! with two workers a client still gets about one `{"ts": …}` per second, not two.

use std::time::Duration;

use switchyard_tests::{bounded, Incoming, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_once_per_tick_across_the_pool() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("heartbeat")
            .workers(2)
            .worker_env("CHAT_HEARTBEAT_SECONDS", "1")
            .start()
            .await;
        let mut c = stack.ws("/ws/chat/").await;

        let window = Duration::from_millis(4500);
        let deadline = tokio::time::Instant::now() + window;
        let mut stamps = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match c.recv(left).await {
                Err(_) => break, // window over
                Ok(Incoming::Text(t)) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&t).unwrap_or_else(|e| panic!("heartbeat is not JSON: {t:?}: {e}"));
                    let ts = v
                        .get("ts")
                        .and_then(|t| t.as_str())
                        .unwrap_or_else(|| panic!("unexpected frame {t}"))
                        .to_string();
                    assert!(
                        ts.contains('T') && (ts.ends_with('Z') || ts.ends_with("+00:00")),
                        "ts is not an ISO-8601 UTC timestamp: {ts:?}"
                    );
                    stamps.push(ts);
                }
                Ok(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            (3..=6).contains(&stamps.len()),
            "expected 3..=6 heartbeats in {window:?} with a 1 s tick and 2 workers, got {}: {stamps:?}",
            stamps.len()
        );
        let mut unique = stamps.clone();
        unique.dedup();
        assert_eq!(unique.len(), stamps.len(), "a tick was delivered twice: {stamps:?}");
        c.close().await;
    })
    .await
}
