//! Workers die or restart under load: no socket is closed, every message is answered exactly
//! once and in order (chat counts strictly consecutive).

use std::time::Duration;

use switchyard_tests::load::{survives_worker_kill9, Load};
use switchyard_tests::{bounded, Stack};

const CONNS: usize = 50;
const WINDOW: u64 = 4;
/// Long enough for a killed worker's pending messages to be claimed by the others.
const REPLY_TIMEOUT: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_worker_under_load_loses_nothing() {
    bounded(Duration::from_secs(60), async {
        let mut stack = Stack::builder("kill9").workers(3).start().await;
        let load = Load::start_going(
            &stack.ws_url("/ws/chat/"),
            CONNS,
            WINDOW,
            REPLY_TIMEOUT,
            500,
            Duration::from_secs(20),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        let answered = survives_worker_kill9(&mut stack, load, 0).await;
        // The kill came midway through packed entries (docs/protocol.md "Packed entries"):
        // every entry ends acknowledged, and entries did hold several messages.
        let added = stack.entries_once_settled("chat").await;
        eprintln!("[test] {answered} chat messages answered; the shards took {added} entries");
        assert!(
            added < answered,
            "{added} entries for {answered} messages: the interface packed none"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_worker_under_load_loses_nothing() {
    bounded(Duration::from_secs(60), async {
        let mut stack = Stack::builder("sigterm-worker").workers(3).start().await;
        let load = Load::start_going(
            &stack.ws_url("/ws/chat/"),
            CONNS,
            WINDOW,
            REPLY_TIMEOUT,
            500,
            Duration::from_secs(20),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        let before = load.answered();
        stack.workers[0].sigterm();
        eprintln!("[test] SIGTERM worker-0 after {before} answers");
        let status = stack.workers[0].wait_exit(Duration::from_secs(20)).await;
        let status = status.expect("worker did not exit within 20 s of SIGTERM");
        assert!(status.success(), "worker exited with {status} after SIGTERM, want 0");

        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = load.answered();
        assert!(after > before, "no progress after SIGTERM ({before} → {after})");
        let total = load.finish().await.assert_exactly_once();
        eprintln!("[test] {total} messages answered exactly once, in order");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_worker_under_load_loses_nothing() {
    bounded(Duration::from_secs(60), async {
        let mut stack = Stack::builder("rolling").workers(2).start().await;
        let load = Load::start(&stack.ws_url("/ws/chat/"), CONNS, WINDOW, REPLY_TIMEOUT)
            .await
            .expect("load connections");
        assert!(
            load.wait_answered(300, Duration::from_secs(20)).await,
            "load did not get going: {} answers",
            load.answered()
        );
        // Replace each original worker: start the successor, give it time to join, stop the
        // old one gracefully.
        for old in 0..2 {
            stack.spawn_worker();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = load.answered();
            stack.workers[old].sigterm();
            let status = stack.workers[old]
                .wait_exit(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("worker-{old} did not exit within 20 s of SIGTERM"));
            assert!(status.success(), "worker-{old} exited with {status}, want 0");
            assert!(
                load.wait_answered(before + 100, Duration::from_secs(20)).await,
                "no progress after restarting worker-{old}"
            );
        }
        let total = load.finish().await.assert_exactly_once();
        eprintln!("[test] {total} messages answered exactly once, in order");
    })
    .await
}
