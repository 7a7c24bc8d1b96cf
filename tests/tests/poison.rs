//! Poison messages (issue 14, items 1 and 2): a consumer that panics, fails, or takes its
//! whole process down on one message never stalls its connection or the worker.
//!
//! - A panic or an error is absorbed: the WebSocket client gets close 1011, the HTTP client
//!   500 (and its keep-alive connection goes on), the worker keeps serving in the same
//!   process, nothing is left pending, a metric counts it.
//! - A message that aborts every worker that handles it is given up after
//!   `--max-deliveries`: dead-lettered with its delivery count, its connection closed with
//!   1011, while other connections are answered throughout.
//!
//! The faults are the worker's test-only triggers (`SWITCHYARD_TEST_PANIC_ON`, `_FAIL_ON`,
//! `_ABORT_ON`: the echo app and `POST /api/example/echo` misbehave on that exact text).

mod http_common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use switchyard_tests::ports::free_port;
use switchyard_tests::stack::{channel_stream, deadletter_stream, xrange_all, REPLY_TIMEOUT};
use switchyard_tests::{bounded, eventually, Incoming, Stack};
use tokio::task::JoinSet;

use http_common::Client;
use switchyard_tests::http::metric;

const PANIC: &str = "poison: panic";
const FAIL: &str = "poison: fail";
const ABORT: &str = "poison: abort";

/// Pending entries of a stream's worker group.
fn pending(stack: &Stack, stream: &str) -> i64 {
    let mut con = stack.redis_conn().expect("redis");
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("workers")
        .query(&mut con)
        .expect("XPENDING");
    match summary {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_errors_are_absorbed() {
    bounded(Duration::from_secs(90), async {
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut stack = Stack::builder("poison-absorbed")
            .workers(1)
            .worker_env("SWITCHYARD_TEST_PANIC_ON", PANIC)
            .worker_env("SWITCHYARD_TEST_FAIL_ON", FAIL)
            // The default panic hook would print (and symbolise) a backtrace with this.
            .worker_env("RUST_BACKTRACE", "1")
            .worker_arg("--metrics-bind")
            .worker_arg(&metrics)
            .start()
            .await;
        let pid = stack.workers[0].pid();

        // WebSocket: the panicking message closes its connection with 1011; so does the
        // failing one. Both are answered (not left for a claim), in seconds.
        for trigger in [PANIC, FAIL] {
            let mut c = stack.ws("/ws/echo/").await;
            c.send_text("before").await.unwrap();
            assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text("before".into()));
            c.send_text(trigger).await.unwrap();
            let code = c.expect_close(REPLY_TIMEOUT).await;
            assert_eq!(
                code.ok().flatten(),
                Some(1011),
                "{trigger:?}: the connection should be closed with 1011"
            );
        }

        // HTTP: 500, and the same keep-alive connection's next request is answered.
        let mut client = Client::connect(&stack.addr).await.expect("connect");
        let post = |body: &'static str| (Method::POST, "/api/example/echo", Bytes::from_static(body.as_bytes()));
        let (method, path, body) = post(PANIC);
        let reply = client.send(method, path, &[], body).await.expect("answer to the panic");
        assert_eq!(reply.status, 500, "a panicking HTTP app answers 500: {}", reply.text());
        let (method, path, body) = post("still serving");
        let reply = client.send(method, path, &[], body).await.expect("next request");
        assert_eq!((reply.status, reply.text()), (200, "still serving".to_owned()));

        // The worker is the same process, serves on, and holds nothing pending.
        assert!(stack.workers[0].is_running(), "the worker died");
        assert_eq!(stack.workers[0].pid(), pid);
        let mut c = stack.ws("/ws/echo/").await;
        c.send_text("after").await.unwrap();
        assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text("after".into()));
        c.close().await;
        let settled = eventually(Duration::from_secs(10), || async {
            (pending(&stack, &channel_stream("echo")) == 0 && pending(&stack, &channel_stream("http.example")) == 0)
                .then_some(())
        })
        .await;
        assert!(settled.is_some(), "entries left pending after absorbed failures");

        // Logged with the panic message and the entry; counted.
        let log = stack.workers[0].log();
        let line = log
            .lines()
            .find(|l| l.contains("consumer failed") && l.contains("SWITCHYARD_TEST_PANIC_ON matched"))
            .unwrap_or_else(|| panic!("no log line names the panic:\n{log}"));
        assert!(line.contains("entry=") && line.contains("channel=echo"), "{line}");
        // The panic itself is one log line with its location, not a backtrace on stderr
        // (symbolising one costs a debug worker ~150 MiB of RSS for good).
        assert!(
            log.lines()
                .any(|l| l.contains("panicked") && l.contains("location=worker/src/faults.rs")),
            "no one-line panic record:\n{log}"
        );
        assert!(!log.contains("stack backtrace"), "a backtrace was printed:\n{log}");
        let text = http_common::get(&metrics, "/metrics").await.expect("metrics").text();
        let failures = |channel: &str, kind: &str| {
            metric(
                &text,
                &format!("switchyard_worker_consumer_failures_total{{channel=\"{channel}\",kind=\"{kind}\"}}"),
            )
        };
        assert_eq!(failures("echo", "panic"), 1.0, "{text}");
        assert_eq!(failures("echo", "error"), 1.0, "{text}");
        assert_eq!(failures("http.example", "panic"), 1.0, "{text}");
        let dead = xrange_all(&mut stack.redis_conn().unwrap(), &deadletter_stream()).unwrap_or_default();
        assert!(dead.is_empty(), "absorbed failures are not dead letters: {dead:?}");
    })
    .await
}

/// Echo round trips on `conns` connections until `stop`, each answer within `limit`; returns
/// the slowest answer seen, or the first failure.
async fn steady_echo(
    url: String,
    stop: tokio::sync::watch::Receiver<bool>,
    limit: Duration,
) -> Result<Duration, String> {
    let mut c = switchyard_tests::ws::connect_retry(&url, Duration::from_secs(20))
        .await
        .map_err(|e| format!("connect: {e:#}"))?;
    let mut slowest = Duration::ZERO;
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let text = format!("steady {n}");
        let sent = Instant::now();
        c.send_text(text.clone())
            .await
            .map_err(|e| format!("send {n}: {e:#}"))?;
        match c.recv(limit).await {
            Ok(Incoming::Text(t)) if t == text => {}
            other => return Err(format!("message {n}: {other:?} after {:?}", sent.elapsed())),
        }
        slowest = slowest.max(sent.elapsed());
        // Busy enough that some of these are in flight when a worker aborts.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.close().await;
    Ok(slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_its_worker_is_dead_lettered_after_max_deliveries() {
    bounded(Duration::from_secs(160), async {
        // The default --max-deliveries.
        const LIMIT: u64 = 5;
        let mut stack = Stack::builder("poison-abort")
            .workers(2)
            .worker_env("SWITCHYARD_TEST_ABORT_ON", ABORT)
            .start()
            .await;
        let mut dead_workers = Vec::new();

        // Other connections keep talking to the same channel the whole time.
        let (stop, watch) = tokio::sync::watch::channel(false);
        let mut steady = JoinSet::new();
        for _ in 0..4 {
            // A message in flight on a worker that aborts waits for its claim (~4 s) and
            // is handed out again beside the poison: it must not share its fate.
            steady.spawn(steady_echo(stack.ws_url("/ws/echo/"), watch.clone(), REPLY_TIMEOUT));
        }

        let mut poisoned = stack.ws("/ws/echo/").await;
        poisoned.send_text("hello").await.unwrap();
        assert_eq!(
            poisoned.recv(REPLY_TIMEOUT).await.unwrap(),
            Incoming::Text("hello".into())
        );
        poisoned.send_text(ABORT).await.unwrap();

        // Every worker that takes the message dies; the test restarts them (as a supervisor
        // would) until the message is given up and its connection closed.
        let closed = async {
            loop {
                match poisoned.recv(Duration::from_millis(500)).await {
                    Ok(Incoming::Close(code, _)) => return code,
                    Ok(other) => panic!("the poisoned connection got {other:?}"),
                    Err(_) => {}
                }
                for index in 0..stack.workers.len() {
                    if dead_workers.contains(&index) || stack.workers[index].is_running() {
                        continue;
                    }
                    eprintln!("[test] {} died; starting another worker", stack.workers[index].name());
                    dead_workers.push(index);
                    stack.spawn_worker();
                }
            }
        };
        let started = Instant::now();
        let code = tokio::time::timeout(Duration::from_secs(100), closed)
            .await
            .expect("the poisoned connection was not closed within 100 s");
        eprintln!(
            "[test] poisoned connection closed after {:?}; {} workers died",
            started.elapsed(),
            dead_workers.len()
        );
        assert_eq!(code, Some(1011), "the poisoned connection's close code");

        // In the dead-letter stream, with its delivery count and why.
        let dl = deadletter_stream();
        let mut con = stack.redis_conn().unwrap();
        let entries = xrange_all(&mut con, &dl).unwrap_or_default();
        let letter = entries
            .iter()
            .find(|e| e.field("field:m").is_some_and(|m| m.contains(ABORT)))
            .unwrap_or_else(|| panic!("no dead letter holds the poison message: {entries:?}"));
        assert_eq!(letter.field("stream"), Some(channel_stream("echo").as_str()));
        let deliveries: u64 = letter.field("deliveries").and_then(|d| d.parse().ok()).unwrap_or(0);
        assert_eq!(deliveries, LIMIT + 1, "{letter:?}");
        assert!(
            letter.field("error").is_some_and(|e| e.contains("--max-deliveries")),
            "{letter:?}"
        );

        // The others were answered throughout, each round trip well within the limit.
        stop.send_replace(true);
        while let Some(result) = steady.join_next().await {
            match result.expect("steady task") {
                Ok(slowest) => eprintln!("[test] steady connection: slowest answer {slowest:?}"),
                Err(error) => panic!("a steady connection stalled: {error}"),
            }
        }
        let settled = eventually(Duration::from_secs(10), || async {
            (pending(&stack, &channel_stream("echo")) == 0).then_some(())
        })
        .await;
        assert!(settled.is_some(), "the poison message is still pending");
    })
    .await
}
