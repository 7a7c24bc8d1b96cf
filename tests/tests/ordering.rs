//! Per-connection order with many workers: bursts sent without waiting are answered in
//! order, although any worker may handle any message.

use std::time::Duration;

use switchyard_tests::{bounded, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_kept_with_4_workers_and_50_bursting_connections() {
    const CONNS: usize = 50;
    const BURST: u64 = 100;
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("ordering").workers(4).start().await;
        let mut clients = Vec::new();
        for _ in 0..CONNS {
            clients.push(stack.ws("/ws/chat/").await);
        }
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                tokio::spawn(async move {
                    for m in 1..=BURST {
                        c.feed_text(format!("conn {i} burst {m}")).await?;
                    }
                    c.flush().await?;
                    let mut counts = Vec::new();
                    for _ in 1..=BURST {
                        counts.push(c.recv_count(Duration::from_secs(30)).await?);
                    }
                    c.close().await;
                    anyhow::Ok(counts)
                })
            })
            .collect();
        let expected: Vec<u64> = (1..=BURST).collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let counts = t.await.unwrap().unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
            assert_eq!(counts, expected, "connection {i} saw its counts out of order");
        }
    })
    .await
}
