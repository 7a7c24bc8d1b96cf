//! SIGTERM of the interface: not ready any more, a drain notice lets the chat app say
//! goodbye (`{"bye": true, "total": n}`), then every socket is closed with 1001 and the
//! process exits 0 — all within 10 s.

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_tests::stack::REPLY_TIMEOUT;
use switchyard_tests::{bounded, http, Incoming, Stack};

const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_interface_says_bye_then_closes_1001() {
    bounded(Duration::from_secs(60), async {
        let mut stack = Stack::builder("interface-shutdown").workers(2).start().await;

        // Each client has sent a different number of messages, so `total` is checkable.
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let mut c = stack.ws("/ws/chat/").await;
            let n = (i % 5 + 1) as u64;
            for expected in 1..=n {
                assert_eq!(c.chat("hello", REPLY_TIMEOUT).await.unwrap(), expected);
            }
            clients.push((c, n));
        }

        let t0 = Instant::now();
        stack.interface().sigterm();

        let addr = stack.addr.clone();
        let readiness = tokio::spawn(async move {
            // 503, or the listener already closed: either way not ready.
            switchyard_tests::eventually(Duration::from_secs(5), || {
                let addr = addr.clone();
                async move { (http::status(&addr, "/readyz").await != Some(200)).then_some(()) }
            })
            .await
            .is_some()
        });

        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, (mut c, total))| {
                tokio::spawn(async move {
                    let mut saw_bye = false;
                    loop {
                        match c.recv(Duration::from_secs(12)).await {
                            Err(e) => return Err(format!("client {i}: {e:#} (bye seen: {saw_bye})")),
                            Ok(Incoming::Text(t)) => {
                                let v: serde_json::Value =
                                    serde_json::from_str(&t).map_err(|e| format!("client {i}: bad JSON {t:?}: {e}"))?;
                                if v.get("ts").is_some() {
                                    continue;
                                }
                                if v == json!({"bye": true, "total": total}) {
                                    saw_bye = true;
                                } else {
                                    return Err(format!(
                                        "client {i}: expected {{\"bye\": true, \"total\": {total}}}, got {t}"
                                    ));
                                }
                            }
                            Ok(Incoming::Close(code, _)) => {
                                if !saw_bye {
                                    return Err(format!("client {i}: closed ({code:?}) before the bye message"));
                                }
                                if code != Some(1001) {
                                    return Err(format!("client {i}: close code {code:?}, want 1001"));
                                }
                                return Ok(t0.elapsed());
                            }
                            Ok(other) => return Err(format!("client {i}: unexpected {other:?} (bye seen: {saw_bye})")),
                        }
                    }
                })
            })
            .collect();

        let mut failures = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(elapsed) => {
                    if elapsed > Duration::from_secs(10) {
                        failures.push(format!("closed only {elapsed:?} after SIGTERM (limit 10 s)"));
                    }
                }
                Err(e) => failures.push(e),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {CLIENTS} clients:\n{}",
            failures.len(),
            failures.join("\n")
        );

        let status = stack
            .interface()
            .wait_exit(Duration::from_secs(12).saturating_sub(t0.elapsed()))
            .await
            .expect("interface still running 12 s after SIGTERM (must exit within 10 s)");
        assert!(status.success(), "interface exited with {status}, want 0");
        assert!(readiness.await.unwrap(), "/readyz still 200 five seconds after SIGTERM");
    })
    .await
}
