//! Per-connection order with many workers: bursts sent without waiting are answered in
//! order, although any worker may handle any message.

use std::time::Duration;

use switchyard_tests::load::bursts_answered_in_order;
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
        bursts_answered_in_order(clients, BURST, Duration::from_secs(30)).await;
    })
    .await
}
