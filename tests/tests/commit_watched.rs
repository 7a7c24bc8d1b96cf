//! The WATCH/MULTI commit of large batches on a single Redis (`--commit-watch-min`,
//! `worker/src/runtime/commit/watched.rs`), with the real binaries, both ways it reads the
//! sessions: with their read batch (`--read-batches`, the default: `runtime/read_batch/`)
//! and again at the commit (`--read-batches=false`). With the minimum at 1 every batch of
//! plain chat messages takes it, so these prove its guarantees directly: counts exactly
//! once and in order under load and under `kill -9`, and a slow worker whose claimer
//! committed the same message first writes nothing (its `EXEC` finds the watched session
//! changed, and the script then only acknowledges it). Without the `WATCH` (of the read
//! batch, or of the commit) the race tests fail: the slow worker's stale session
//! overwrites the newer one and the count goes back.

use std::time::Duration;

use switchyard_tests::load::{survives_worker_kill9, Load};
use switchyard_tests::ports::free_port;
use switchyard_tests::stack::{Probe, REPLY_TIMEOUT};
use switchyard_tests::{bounded, http, Stack};

const CONNS: usize = 50;
const WINDOW: u64 = 4;
/// Long enough for a killed worker's pending messages to be claimed by the others.
const KILL_REPLY_TIMEOUT: Duration = Duration::from_secs(25);

/// Calls of `command` Redis has run, and those it refused (`INFO commandstats`).
fn calls(stack: &Stack, command: &str) -> (u64, u64) {
    let stats = stack.redis.command_stats().expect("INFO commandstats");
    (
        stats.iter().map(|node| node.calls(command)).sum(),
        stats.iter().map(|node| node.rejected(command)).sum(),
    )
}

/// The value of `series` (name with labels, as rendered) on a worker's `/metrics`.
async fn metric(addr: &str, series: &str) -> f64 {
    http::metric(&http::get(addr, "/metrics").await.expect("GET /metrics").body, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counts_exactly_once_through_read_batches() {
    load_counts_exactly_once(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counts_exactly_once_through_the_watched_commit() {
    load_counts_exactly_once(false).await
}

/// `--read-batches`: the sessions read with the batch (no `HMGET` at the commit), or by each
/// handler and again at the commit.
async fn load_counts_exactly_once(read_batches: bool) {
    bounded(Duration::from_secs(90), async {
        let stack = Stack::builder("watched-load")
            .single_redis()
            .workers(2)
            .worker_arg("--commit-watch-min=1")
            .worker_arg(&format!("--read-batches={read_batches}"))
            .start()
            .await;
        let url = stack.ws_url("/ws/chat/");
        let load = Load::start_going(&url, CONNS, WINDOW, REPLY_TIMEOUT, 3_000, Duration::from_secs(40)).await;
        let total = load.finish().await.assert_exactly_once();
        let (execs, scripts) = (calls(&stack, "exec").0, calls(&stack, "evalsha").0);
        let guard_reads = calls(&stack, "hmget").0;
        eprintln!(
            "[test] {total} answers exactly once, in order; {execs} EXECs, {scripts} scripts, {guard_reads} HMGETs"
        );
        assert!(
            execs > 0,
            "no batch took the WATCH/MULTI commit ({scripts} script calls)"
        );
        // The commit reads each guard again (HMGET) only without read batches.
        if read_batches {
            assert!(
                guard_reads * 4 < total,
                "{guard_reads} HMGETs for {total} answers: the read batches did not commit them"
            );
        } else {
            assert!(guard_reads >= execs, "{guard_reads} HMGETs for {execs} EXECs");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_with_the_watched_commit_loses_nothing() {
    bounded(Duration::from_secs(90), async {
        let mut stack = Stack::builder("watched-kill9")
            .single_redis()
            .workers(3)
            .worker_arg("--commit-watch-min=1")
            .start()
            .await;
        let url = stack.ws_url("/ws/chat/");
        let load = Load::start_going(&url, CONNS, WINDOW, KILL_REPLY_TIMEOUT, 500, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        survives_worker_kill9(&mut stack, load, 0).await;
        assert!(calls(&stack, "exec").0 > 0, "no batch took the WATCH/MULTI commit");
    })
    .await
}

/// Worker A pauses 20 s between its watched reads and its `EXEC` (a test fault); worker B
/// takes the message over with its `XAUTOCLAIM` backstop (`--claim-idle 1`; the backstop
/// runs about 9 s after start), commits it, and commits the next message too. A's `EXEC`
/// must then write nothing: the count goes on from B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_loses_its_read_batch_to_its_claimer() {
    a_slow_worker_loses_to_its_claimer(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_loses_its_watched_commit_to_its_claimer() {
    a_slow_worker_loses_to_its_claimer(false).await
}

/// `--read-batches`: worker A reads message 2's session with its batch under `WATCH` (or
/// reads it in the handler, then its guard under `WATCH` at the commit), then pauses before
/// its `EXEC`.
async fn a_slow_worker_loses_to_its_claimer(read_batches: bool) {
    bounded(Duration::from_secs(90), async {
        let mut stack = Stack::builder("watched-race")
            .single_redis()
            .workers(0)
            .worker_env("CHAT_HEARTBEAT_SECONDS", "3600")
            .start()
            .await;
        let metrics_a = format!("127.0.0.1:{}", free_port());
        let read_batches = format!("--read-batches={read_batches}");
        stack.spawn_worker_with(
            &["--commit-watch-min=1", &read_batches, "--metrics-bind", &metrics_a],
            &[("SWITCHYARD_TEST_WATCH_PAUSE_MS", "20000")],
        );
        stack.wait_workers_live(Probe::Echo).await;
        let mut client = stack.ws("/ws/chat/").await;
        // The first message creates the session: the script commits it, not the watch.
        assert_eq!(client.chat("one", REPLY_TIMEOUT).await.expect("message 1"), 1);

        // Message 2: A watches, reads, and pauses before EXEC.
        let paused_at = std::time::Instant::now();
        client.send_text("two").await.expect("send message 2");
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.spawn_worker_with(&["--commit-watch-min=1", &read_batches, "--claim-idle", "1"], &[]);
        // B's backstop claims it (idle for more than 1 s by then), and answers it.
        let two = client
            .recv_count(Duration::from_secs(18))
            .await
            .expect("message 2 from the claimer");
        assert_eq!(two, 2, "the claimer's answer to message 2");
        assert_eq!(client.chat("three", REPLY_TIMEOUT).await.expect("message 3"), 3);

        // A's EXEC comes 20 s after its reads: the session changed, so it writes nothing.
        let exec_done = Duration::from_millis(20_800);
        tokio::time::sleep(exec_done.saturating_sub(paused_at.elapsed())).await;
        assert_eq!(
            client.chat("four", REPLY_TIMEOUT).await.expect("message 4"),
            4,
            "the slow worker's commit overwrote the session"
        );
        assert!(
            client.recv_count(Duration::from_millis(500)).await.is_err(),
            "a second answer came"
        );
        let changed = "switchyard_worker_watched_commits_total{result=\"changed\"}";
        assert_eq!(
            metric(&metrics_a, changed).await,
            1.0,
            "worker A did not report its watched commit as changed:\n{}",
            stack.workers[0].log_tail(30)
        );
        client.close().await;
    })
    .await
}

/// A Redis whose ACL refuses `WATCH`: the worker says so once and commits everything with
/// the script; nothing is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_watch_gets_the_script() {
    bounded(Duration::from_secs(90), async {
        let stack = Stack::builder("watched-refused")
            .single_redis()
            .workers(1)
            .worker_env("CHAT_HEARTBEAT_SECONDS", "3600")
            .worker_arg("--commit-watch-min=1")
            .start()
            .await;
        let mut con = stack.redis_conn().expect("redis");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("-watch")
            .query(&mut con)
            .expect("ACL SETUSER");
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(stack.ws("/ws/chat/").await);
        }
        for round in 1..=20u64 {
            for client in clients.iter_mut() {
                client.send_text(format!("round {round}")).await.expect("send");
            }
            for client in clients.iter_mut() {
                assert_eq!(client.recv_count(REPLY_TIMEOUT).await.expect("answer"), round);
            }
        }
        let log = stack.workers[0].log();
        assert_eq!(
            log.matches("Redis refuses the WATCH/MULTI commit").count(),
            1,
            "the refusal is said once:\n{log}"
        );
        assert_eq!(calls(&stack, "exec").0, 0, "a WATCH/MULTI commit went through");
        // Batches already under way (at most one per connection of the pool: 4 commit
        // batches, 4 read batches) may each meet the refusal once.
        let refused = calls(&stack, "watch").1;
        assert!(
            (1..=8).contains(&refused),
            "after the first refusal the worker stops asking: {refused} refusals"
        );
    })
    .await
}
