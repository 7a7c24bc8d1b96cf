//! Python workers (`python -m switchyard runworker`, the `python/` package) on the chat
//! counter, alone and beside Rust workers: counts exact over 1,000 messages, order with
//! mixed pools and bursts, nothing lost or repeated across kill -9 and SIGTERM, sessions
//! resumed, group sends from Python reaching every member once. These run on a Redis
//! Cluster too (scripts/test's second pass).

use std::time::Duration;

use switchyard_tests::load::{bursts_answered_in_order, survives_worker_kill9, Load};
use switchyard_tests::python::python_stack;
use switchyard_tests::stack::{Probe, REPLY_TIMEOUT};
use switchyard_tests::{bounded, eventually, Incoming, Stack};

const CONNS: usize = 50;
const WINDOW: u64 = 4;
/// Long enough for a killed worker's pending messages to be claimed by the others.
const LOAD_REPLY_TIMEOUT: Duration = Duration::from_secs(25);

/// A stack with `python` Python workers and `rust` Rust workers serving `chat`.
async fn chat_stack(name: &str, python: usize, rust: usize) -> Stack {
    let mut stack = python_stack(name).start().await;
    for _ in 0..python {
        stack.spawn_python_worker(&[]);
    }
    for _ in 0..rust {
        stack.spawn_worker_with(&["--only-channels", "chat"], &[]);
    }
    stack.wait_workers_live(Probe::Chat).await;
    stack
}

/// Starts the chat load and waits until it is well under way.
async fn load_under_way(stack: &Stack) -> Load {
    let load = Load::start(&stack.ws_url("/ws/chat/"), CONNS, WINDOW, LOAD_REPLY_TIMEOUT)
        .await
        .expect("load connections");
    assert!(
        load.wait_answered(500, Duration::from_secs(30)).await,
        "load did not get going: {} answers",
        load.answered()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_chat_counter_correct_over_1000_messages() {
    bounded(Duration::from_secs(120), async {
        let stack = chat_stack("py-chat-1000", 1, 0).await;
        let mut c = stack.ws("/ws/chat/").await;
        c.chat_counts_to(1000, REPLY_TIMEOUT).await;
        c.close().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_kept_with_2_rust_and_2_python_workers_and_50_bursting_connections() {
    const BURST: u64 = 100;
    bounded(Duration::from_secs(120), async {
        let mut stack = chat_stack("py-mixed-order", 2, 2).await;
        let mut clients = Vec::new();
        for _ in 0..CONNS {
            clients.push(stack.ws("/ws/chat/").await);
        }
        bursts_answered_in_order(clients, BURST, Duration::from_secs(30)).await;
        for w in &mut stack.workers {
            assert!(w.is_running(), "{} died", w.name());
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_python_worker_under_load_loses_and_repeats_nothing() {
    bounded(Duration::from_secs(120), async {
        // Two Python workers and one Rust worker: the dead one's messages may be taken over
        // by either kind.
        let mut stack = chat_stack("py-kill9", 2, 1).await;
        let load = load_under_way(&stack).await;
        survives_worker_kill9(&mut stack, load, 0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_python_worker_under_load_closes_no_socket() {
    bounded(Duration::from_secs(120), async {
        let mut stack = chat_stack("py-sigterm", 3, 0).await;
        let load = load_under_way(&stack).await;
        let before = load.answered();
        stack.workers[0].sigterm();
        eprintln!("[test] SIGTERM python-worker-0 after {before} answers");
        let status = stack.workers[0]
            .wait_exit(Duration::from_secs(25))
            .await
            .expect("python worker did not exit within 25 s of SIGTERM");
        assert!(
            status.success(),
            "python worker exited with {status} after SIGTERM, want 0"
        );
        let log = stack.workers[0].log();
        assert!(log.contains("worker stopped"), "no clean stop in the log:\n{log}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = load.answered();
        assert!(after > before, "no progress after SIGTERM ({before} → {after})");
        let total = load.finish().await.assert_exactly_once();
        eprintln!("[test] {total} messages answered exactly once, in order; no socket closed");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_session_resumes_by_session_uuid_also_across_kinds_of_worker() {
    bounded(Duration::from_secs(90), async {
        let mut stack = chat_stack("py-session", 1, 0).await;
        let path = "/ws/chat/?session_uuid=7f1c2e3d-python-session";
        let mut c = stack.ws(path).await;
        for expected in 1..=3 {
            assert_eq!(c.chat("hi", REPLY_TIMEOUT).await.unwrap(), expected);
        }
        c.close().await;
        let mut again = stack.ws(path).await;
        assert_eq!(
            again.chat("back again", REPLY_TIMEOUT).await.unwrap(),
            4,
            "reconnecting with the same session_uuid continues the count"
        );
        let mut other = stack.ws("/ws/chat/?session_uuid=another-python-session").await;
        assert_eq!(other.chat("hello", REPLY_TIMEOUT).await.unwrap(), 1);
        again.close().await;
        other.close().await;

        // The same session, now served by a Rust worker alone: it reads what Python wrote.
        stack.workers[0].sigterm();
        stack.workers[0]
            .wait_exit(Duration::from_secs(25))
            .await
            .expect("python worker stops");
        stack.workers.remove(0);
        stack.spawn_worker_with(&["--only-channels", "chat"], &[]);
        stack.wait_workers_live(Probe::Chat).await;
        let mut rust = stack.ws(path).await;
        assert_eq!(
            rust.chat("served by Rust", REPLY_TIMEOUT).await.unwrap(),
            5,
            "a Rust worker continues the count a Python worker kept"
        );
        rust.close().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_from_python_reaches_every_member_once() {
    const MEMBERS: usize = 20;
    bounded(Duration::from_secs(90), async {
        let stack = chat_stack("py-group-send", 1, 0).await;
        let mut members = Vec::new();
        for _ in 0..MEMBERS {
            members.push(stack.ws("/ws/chat/").await);
        }
        // Every member has joined `chat` once the interface has subscribed; one answered
        // message per member makes sure its accept (and join) was applied.
        for m in members.iter_mut() {
            assert_eq!(m.chat("joined?", REPLY_TIMEOUT).await.unwrap(), 1);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let printed = stack.run_python(
            r#"
import asyncio
from switchyard import Client
client = Client()
print(client.group_send("chat", '{"from": "sync"}', json_seq=True))
async def main():
    print(await client.agroup_send("chat", '{"from": "async"}', json_seq=True))
    print(await client.agroup_send("chat", b"raw bytes"))
    await client.aclose()
asyncio.run(main())
client.close()
"#,
        );
        let seqs: Vec<u64> = printed.lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(seqs.len(), 3, "three broadcast numbers: {printed:?}");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "consecutive numbers: {seqs:?}"
        );
        for (i, m) in members.iter_mut().enumerate() {
            let mut got = Vec::new();
            while got.len() < 3 {
                match m.recv(REPLY_TIMEOUT).await {
                    Ok(Incoming::Text(t)) => got.push(t),
                    Ok(Incoming::Binary(b)) => got.push(format!("bytes:{}", String::from_utf8_lossy(&b))),
                    other => panic!("member {i}: {other:?} after {got:?}"),
                }
            }
            let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
            let epoch = json(&got[0])["epoch"].clone();
            assert!(epoch.as_str().is_some_and(|e| !e.is_empty()), "member {i}: {got:?}");
            assert_eq!(
                json(&got[0]),
                serde_json::json!({"from": "sync", "seq": seqs[0], "epoch": epoch, "group": "chat"}),
                "member {i}"
            );
            assert_eq!(
                json(&got[1]),
                serde_json::json!({"from": "async", "seq": seqs[1], "epoch": epoch, "group": "chat"}),
                "member {i}"
            );
            assert_eq!(got[2], "bytes:raw bytes", "member {i}");
            // Nothing more: each broadcast arrived once.
            let extra = m.recv(Duration::from_millis(300)).await;
            assert!(extra.is_err(), "member {i} got more: {extra:?}");
        }
        for m in members {
            m.close().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_workers_are_live_for_readyz_and_status() {
    bounded(Duration::from_secs(60), async {
        let stack = chat_stack("py-liveness", 2, 0).await;
        let ready = eventually(Duration::from_secs(10), || async {
            let r = switchyard_tests::http::get(&stack.addr, "/readyz").await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            (r.status == 200 && v["workers"]["chat"] == 2 && v["workers"]["http.django"] == 2).then_some(v)
        })
        .await;
        assert!(ready.is_some(), "/readyz does not count two Python workers per channel");
        let out = tokio::process::Command::new(switchyard_tests::binary(switchyard_tests::OPS_BIN))
            .args(stack.redis.client_args())
            .args(["--prefix", "switchyard", "status", "--json"])
            .output()
            .await
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["channels"]["chat"]["workers_alive"], 2, "{status:#}");
        let workers = status["workers"].as_object().unwrap();
        assert!(
            workers.values().all(|w| w["runtime"] == "python"),
            "liveness keys carry runtime=python: {workers:?}"
        );
    })
    .await
}
