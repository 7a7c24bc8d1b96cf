//! Python workers on a Redis Cluster with `--redis-wait-replicas`: each commit step waits
//! for a replica of the master it wrote to (`WAIT` on the connection that wrote, since WAIT
//! counts that connection's writes), and a step that cannot get the replicas it asks for
//! stops the commit there: the entry is never acknowledged and keeps being retried (what the
//! step wrote stays, as on the Rust side — each step is safe to run again).
//! (The other Python tests run on a cluster in scripts/test's second pass.)

use std::time::Duration;

use switchyard_tests::python::python_stack;
use switchyard_tests::stack::{Probe, REPLY_TIMEOUT};
use switchyard_tests::{bounded, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_holds_each_step_until_a_replica_has_it() {
    bounded(Duration::from_secs(120), async {
        let mut stack = python_stack("py-wait-replicas").redis_cluster().start().await;
        stack.spawn_python_worker(&["--redis-wait-replicas", "1"]);
        stack.wait_workers_live(Probe::Chat).await;
        stack.redis.reset_stats().unwrap();
        let mut c = stack.ws("/ws/chat/?session_uuid=waits-for-replicas").await;
        c.chat_counts_to(20, REPLY_TIMEOUT).await;
        c.close().await;
        let waits = stack.redis.command_calls("wait").unwrap();
        // Session, reply and (for the connect) group-less steps: at least two WAITs a message.
        assert!(waits >= 40, "expected WAIT after the commit steps, saw {waits}");

        // Asking for more replicas than the cluster has: nothing is committed.
        let index = stack.spawn_python_worker(&["--redis-wait-replicas", "2"]);
        stack.workers[0].sigterm();
        stack.workers[0]
            .wait_exit(Duration::from_secs(25))
            .await
            .expect("first worker stops");
        let mut stuck = stack.ws("/ws/echo/").await;
        stuck.send_text("never acknowledged").await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut con = stack.redis_conn().unwrap();
        let pending: u64 = (0..3)
            .map(|shard| {
                let summary: redis::Value = redis::cmd("XPENDING")
                    .arg(format!("switchyard:chan:{{echo:{shard}}}"))
                    .arg("workers")
                    .query(&mut con)
                    .unwrap();
                match summary {
                    redis::Value::Array(items) => match items.first() {
                        Some(redis::Value::Int(n)) => *n as u64,
                        _ => 0,
                    },
                    _ => 0,
                }
            })
            .sum();
        assert!(
            pending >= 1,
            "the entries whose steps lacked replicas were acknowledged anyway"
        );
        let logged = eventually(Duration::from_secs(10), || {
            let log = stack.workers[index].log();
            async move { log.contains("fewer replicas than --redis-wait-replicas").then_some(()) }
        })
        .await;
        assert!(
            logged.is_some(),
            "the refused step is not logged:\n{}",
            stack.workers[index].log()
        );
    })
    .await
}
