//! No silent stall: Redis killed and restarted empty under load (its data gone, as after a
//! failover that lost acknowledged writes), with default flags, every connection answers
//! again or is closed with a code — none stays open and silent.
//!
//! Why: a connection releases its next message only when the one in flight is answered. A
//! message lost with Redis's data is never answered, so without `--redeliver-after` the
//! connection waited forever (seen with 100 streaming chat clients: one still silent ten
//! minutes later). The interface now looks at a message unanswered for 30 s and appends it
//! again when its entry is gone (interface/src/bus/stalls.rs). Without that every connection
//! here stays silent: its message was on the stream, unread, when Redis lost it.
//!
//! Outages of *the* server: always a single redis-server.

use std::time::{Duration, Instant};

use switchyard_tests::load::Load;
use switchyard_tests::{bounded, http, Stack};

const CONNS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_answers_again_or_is_closed_after_redis_loses_its_data() {
    bounded(Duration::from_secs(180), async {
        let mut stack = Stack::builder("stalled-messages")
            .single_redis()
            .workers(2)
            .start()
            .await;
        // Replies are awaited far longer than the redelivery takes: a connection that is
        // answered late is fine, one that is never answered is what this test is about.
        let load = Load::start_echo(&stack.ws_url("/ws/echo/"), CONNS, 2, Duration::from_secs(150))
            .await
            .expect("load starts");
        assert!(
            load.wait_answered(5 * CONNS as u64, Duration::from_secs(30)).await,
            "load did not get going"
        );

        // The workers stop (gracefully), so every connection's next message waits on the
        // stream unread; then Redis is killed (-9) and back on the same port, empty, and
        // workers start again. Every message in flight was lost with Redis's data.
        for worker in &mut stack.workers {
            worker.sigterm();
        }
        for worker in &mut stack.workers {
            assert!(
                worker.wait_exit(Duration::from_secs(20)).await.is_some(),
                "worker did not stop"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stack.redis.single_mut().kill();
        stack.redis.single_mut().restart().await.expect("restart redis-server");
        stack.spawn_worker();
        stack.spawn_worker();
        let back = Instant::now();

        // Every connection answers again (a message answered after Redis came back), or was
        // closed with a code; within 60 s (the default --redeliver-after is 30 s).
        let deadline = back + Duration::from_secs(60);
        let before = load.answered();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if load.answered() > before + 20 * CONNS as u64 {
                break;
            }
        }
        let metrics = http::get(&stack.addr, "/metrics").await.expect("metrics").body;
        let report = load.finish().await;
        let mut silent = Vec::new();
        let (mut answered_again, mut closed) = (0, 0);
        for (i, conn) in report.conns.iter().enumerate() {
            let conn = match conn {
                Ok(conn) => conn,
                Err(error) => panic!("connection {i} failed: {error:#}"),
            };
            if conn.samples.iter().any(|(at, _)| *at > back && *at <= deadline) {
                answered_again += 1;
            } else if conn.closed.is_some_and(|(_, at)| at <= deadline) {
                closed += 1;
            } else {
                silent.push(i);
            }
        }
        eprintln!(
            "[stalled-messages] {CONNS} connections: {answered_again} answered again, {closed} closed with a code, \
             {} silent, within 60 s of Redis coming back empty",
            silent.len()
        );
        assert!(
            silent.is_empty(),
            "connections silent 60 s after Redis came back: {silent:?}"
        );
        let redelivered = metrics
            .lines()
            .find(|line| line.contains("websocket_stalled_messages_total{outcome=\"redelivered\"}"))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(redelivered >= 1.0, "no message was counted as sent again:\n{metrics}");
    })
    .await
}
