//! Operations on the real deployment layout: `scripts/up` (supervisord with
//! `supervisord/dev.conf`), `scripts/ctl`, `scripts/rolling-restart`, `switchyard status`.
//!
//! - a rolling restart of every chat worker under 500 busy sockets closes none and loses,
//!   repeats or reorders no message;
//! - scaling a channel from 1 to 4 workers with supervisorctl puts all 4 to work without
//!   touching the other channels' processes (the throughput ratio is printed, not asserted:
//!   on 2 shared cores it depends on what else runs);
//! - a worker killed with `kill -9` is restarted by supervisord, its pending messages are
//!   handled by the others, nothing is lost;
//! - a wrong start command fails loudly (exit 2 naming the flag); `--check` exits 0;
//! - interface blue/green: draining the old interface says goodbye and closes with 1001,
//!   clients reconnect to the new one with their `session_uuid` and keep their count.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use switchyard_tests::load::{Load, LoadReport};
use switchyard_tests::ports::free_port;
use switchyard_tests::stack::{Probe, PREFIX};
use switchyard_tests::supervisor::{exclusive, pending_of, run_binary, PendingSampler, Supervised};
use switchyard_tests::{binary, bounded, eventually, http, ws, Proc, Stack, INTERFACE_BIN, WORKER_BIN};

/// Generous: the machine is small and shared, and a killed worker's messages wait ~4 s.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn assert_clean(report: &LoadReport, conns: usize) -> u64 {
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {conns} connections failed (closed, lost, repeated or reordered):\n{}",
        failures.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(report.conns.len(), conns);
    assert_eq!(report.idle_connections(), 0, "some connections got no answer at all");
    report.total()
}

fn ok_or_panic(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_500_sockets_drops_nothing() {
    const CONNS: usize = 500;
    let _heavy = exclusive().await;
    bounded(Duration::from_secs(170), async {
        let stack = Supervised::builder("ops-rolling").workers("chat", 3).start().await;
        let chat_before = stack.pids("workers-chat:").await.unwrap();
        let others_before = stack.pids("workers-echo:").await.unwrap();
        assert_eq!(chat_before.len(), 3, "{chat_before:?}");

        let load = Load::start(&stack.ws_url("/ws/chat/"), CONNS, 2, REPLY_TIMEOUT)
            .await
            .expect("open 500 chat connections");
        assert!(
            load.wait_answered(3 * CONNS as u64, Duration::from_secs(60)).await,
            "load did not get going: {} answers",
            load.answered()
        );
        let baseline = Instant::now();
        let rate_before = load.rate(Duration::from_secs(3)).await;

        let started = Instant::now();
        let out = stack
            .script("rolling-restart", &["chat"], &[("ROLLING_TIMEOUT", "60")])
            .await
            .unwrap();
        let ended = Instant::now();
        eprintln!(
            "[test] scripts/rolling-restart chat took {:.1} s:\n{}",
            (ended - started).as_secs_f64(),
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
        ok_or_panic("scripts/rolling-restart chat", &out);

        // The channel carries on with the new processes.
        let after_restart = load.answered();
        assert!(
            load.wait_answered(after_restart + 2 * CONNS as u64, Duration::from_secs(60))
                .await,
            "no progress after the rolling restart ({after_restart} answers)"
        );
        let metrics = http::get(&stack.addr, "/metrics").await.unwrap().body;
        let active = metric(&metrics, "switchyard_websocket_connections_active");
        let report = load.finish().await;
        let total = assert_clean(&report, CONNS);

        let chat_after = stack.pids("workers-chat:").await.unwrap();
        assert_eq!(chat_after.len(), 3, "{chat_after:?}");
        for (name, pid) in &chat_before {
            assert_ne!(chat_after.get(name), Some(pid), "{name} was not restarted");
        }
        assert_eq!(
            stack.pids("workers-echo:").await.unwrap(),
            others_before,
            "echo workers touched"
        );
        stack.wait_reading("chat", 3, Duration::from_secs(20)).await.unwrap();
        assert_eq!(
            active,
            Some(CONNS as f64),
            "switchyard_websocket_connections_active before closing"
        );

        let p = |q, from, to| {
            report
                .quantile(from, to, q)
                .map(|(d, n)| format!("{:.1} ms (of {n})", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "n/a".into())
        };
        eprintln!(
            "[test] {CONNS} sockets, {total} messages answered exactly once and in order, none closed; \
             {rate_before:.0} msg/s and p99 {} before the restart; latency during the restart: p50 {}, p99 {}, max {}",
            p(0.99, baseline, started),
            p(0.5, started, ended),
            p(0.99, started, ended),
            p(1.0, started, ended)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_channel_from_1_to_4_workers_puts_them_all_to_work() {
    const CONNS: usize = 64;
    let _heavy = exclusive().await;
    bounded(Duration::from_secs(170), async {
        // One message at a time per worker process: a single worker is the bottleneck.
        let stack = Supervised::builder("ops-scale")
            .workers("chat", 1)
            .env("SWITCHYARD_CONCURRENCY", "1")
            .start()
            .await;
        let untouched = ["interface", "redis", "workers-echo:", "workers-rooms:"];
        let mut before = Vec::new();
        for prefix in untouched {
            before.push(stack.pids(prefix).await.unwrap());
        }
        let first = stack.live_workers("chat").await.unwrap();
        assert_eq!(first.len(), 1);

        let load = Load::start(&stack.ws_url("/ws/chat/"), CONNS, 1, REPLY_TIMEOUT)
            .await
            .expect("open chat connections");
        assert!(
            load.wait_answered(500, Duration::from_secs(60)).await,
            "load did not get going: {} answers",
            load.answered()
        );
        let rate_one = load.rate(Duration::from_secs(6)).await;

        let out = stack.scale("chat", 4).await.unwrap();
        ok_or_panic("scripts/ctl update workers-chat", &out);
        let four = stack.wait_reading("chat", 4, Duration::from_secs(60)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;

        let sampler = PendingSampler::start(stack.redis_url(), "chat").unwrap();
        let rate_four = load.rate(Duration::from_secs(6)).await;
        let seen = sampler.finish().unwrap();
        let report = load.finish().await;
        let total = assert_clean(&report, CONNS);

        let consumers: HashSet<&str> = four.iter().map(|w| w.consumer.as_str()).collect();
        let working: Vec<_> = seen.iter().filter(|(c, _)| consumers.contains(c.as_str())).collect();
        eprintln!(
            "[test] chat throughput with 1 worker {rate_one:.0} msg/s, with 4 workers {rate_four:.0} msg/s \
             (×{:.2}); samples with messages in hand per consumer: {working:?}; {total} messages exactly once, in order",
            rate_four / rate_one
        );
        assert_eq!(
            working.len(),
            4,
            "all 4 chat workers should handle messages; seen holding messages: {seen:?}, live: {four:?}"
        );
        assert!(
            !consumers.contains(first[0].consumer.as_str()),
            "the scaled group is made of new processes"
        );
        for (prefix, pids) in untouched.iter().zip(&before) {
            assert!(!pids.is_empty(), "{prefix} had no process");
            assert_eq!(&stack.pids(prefix).await.unwrap(), pids, "{prefix} was touched by the scaling");
        }
        let (status, code) = stack.status().await.unwrap();
        assert_eq!(code, 0, "switchyard status: {status:#}");
        assert_eq!(status["channels"]["chat"]["workers_alive"], 4, "{status:#}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_worker_under_supervisord_is_restarted_and_loses_nothing() {
    const CONNS: usize = 100;
    let _heavy = exclusive().await;
    bounded(Duration::from_secs(170), async {
        let stack = Supervised::builder("ops-kill9").workers("chat", 3).start().await;
        let load = Load::start(&stack.ws_url("/ws/chat/"), CONNS, 4, REPLY_TIMEOUT)
            .await
            .expect("open chat connections");
        assert!(
            load.wait_answered(2000, Duration::from_secs(60)).await,
            "load did not get going: {} answers",
            load.answered()
        );

        let victim = "workers-chat:workers-chat-0";
        let old_pid = stack.pids(victim).await.unwrap()[victim];
        let live = stack.live_workers("chat").await.unwrap();
        let consumer = live
            .iter()
            .find(|w| w.pid == old_pid)
            .unwrap_or_else(|| panic!("no live consumer with pid {old_pid}: {live:?}"))
            .consumer
            .clone();
        let before = load.answered();
        // SAFETY: kill(2) on the pid of a worker of this test's own stack.
        assert_eq!(unsafe { libc::kill(old_pid as libc::pid_t, libc::SIGKILL) }, 0);
        let mut con = stack.redis_conn().unwrap();
        let held = pending_of(&mut con, "chat", &consumer).unwrap();
        eprintln!("[test] kill -9 {victim} (pid {old_pid}, consumer {consumer}) holding {held} messages, after {before} answers");

        // supervisord brings it back as a new process.
        let new_pid = eventually(Duration::from_secs(60), || async {
            let pids = stack.pids(victim).await.ok()?;
            pids.get(victim).copied().filter(|p| *p != old_pid)
        })
        .await
        .expect("supervisord did not restart the killed worker within 60 s");
        // What the dead worker held goes to the others.
        let claimed = eventually(Duration::from_secs(60), || async {
            let mut con = stack.redis_conn().ok()?;
            (pending_of(&mut con, "chat", &consumer).ok()? == 0).then_some(())
        })
        .await;
        assert!(claimed.is_some(), "the dead consumer's pending messages were never taken over");
        let live = stack.wait_reading("chat", 3, Duration::from_secs(60)).await.unwrap();
        assert!(live.iter().any(|w| w.pid == new_pid), "{live:?} lacks the new pid {new_pid}");
        assert!(!live.iter().any(|w| w.consumer == consumer), "dead consumer still listed");

        let after = load.answered();
        assert!(
            load.wait_answered(after + 1000, Duration::from_secs(60)).await,
            "no progress after the restart"
        );
        let report = load.finish().await;
        let total = assert_clean(&report, CONNS);
        let (status, code) = stack.status().await.unwrap();
        assert_eq!(code, 0, "switchyard status: {status:#}");
        // The clients' disconnects are still being handled for a moment after they close.
        let settled = eventually(Duration::from_secs(15), || async {
            let (status, _) = stack.status().await.ok()?;
            (status["channels"]["chat"]["pending"] == 0).then_some(())
        })
        .await;
        assert!(settled.is_some(), "chat still has pending messages: {status:#}");
        eprintln!(
            "[test] restarted as pid {new_pid}; {total} messages answered exactly once and in order, none closed"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_start_commands_fail_loudly_and_check_exits_0() {
    bounded(Duration::from_secs(60), async {
        let cases: &[(&str, &[&str], &str)] = &[
            (INTERFACE_BIN, &["--bind", "nonsense"], "--bind"),
            (
                INTERFACE_BIN,
                &["--worker-class", "uvicorn.workers.UvicornWorker"],
                "--worker-class",
            ),
            (INTERFACE_BIN, &["--connect-timeout", "0"], "--connect-timeout"),
            (WORKER_BIN, &["--concurrency", "0"], "--concurrency"),
            (WORKER_BIN, &["--workers", "2"], "--workers"),
            (WORKER_BIN, &["--only-channels", "a[b"], "--only-channels"),
        ];
        for (bin, args, flag) in cases {
            let out = run_binary(bin, args).await.unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {}\n{stderr}", out.status);
            assert!(
                stderr.contains(flag),
                "{bin} {args:?}: stderr does not name {flag}:\n{stderr}"
            );
        }

        let out = run_binary(INTERFACE_BIN, &["--bind", "0.0.0.0:10000", "--check"])
            .await
            .unwrap();
        ok_or_panic("switchyard-interface --check", &out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("0.0.0.0:10000"),
            "--check does not show the bind address:\n{stdout}"
        );

        let out = run_binary(WORKER_BIN, &["--only-channels", "chat", "--check"])
            .await
            .unwrap();
        ok_or_panic("switchyard-worker --check", &out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("channels served") && stdout.contains("\"chat\"") && !stdout.contains("\"echo\""),
            "--check does not show the channels served:\n{stdout}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_interfaces_clients_resume_by_session_uuid() {
    const CLIENTS: usize = 20;
    bounded(Duration::from_secs(120), async {
        // Blue: the stack's interface. Green: a second interface on the same Redis.
        let mut stack = Stack::builder("ops-blue-green")
            .workers(2)
            .probe(Probe::Chat)
            .start()
            .await;
        let green_addr = format!("127.0.0.1:{}", free_port());
        let args: Vec<String> = [
            "--bind",
            &green_addr,
            "--redis-url",
            &stack.redis.url(),
            "--prefix",
            PREFIX,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let _green = Proc::spawn("green", &binary(INTERFACE_BIN), &args, &[], stack.dir.path()).unwrap();
        eventually(Duration::from_secs(30), || async {
            (http::status(&green_addr, "/readyz").await == Some(200)).then_some(())
        })
        .await
        .expect("green interface not ready within 30 s");

        let run = std::process::id();
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let path = format!("/ws/chat/?session_uuid=blue-green-{run}-{i}");
            let mut c = stack.ws(&path).await;
            let n = (i % 4 + 1) as u64;
            for expected in 1..=n {
                assert_eq!(c.chat("hello", REPLY_TIMEOUT).await.unwrap(), expected);
            }
            clients.push((path, c, n));
        }

        // Drain blue: every client gets its goodbye and a 1001, then reconnects to green
        // with the same session_uuid and keeps its count.
        stack.interface().sigterm();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|(path, mut c, n)| {
                let green_url = format!("ws://{green_addr}{path}");
                tokio::spawn(async move {
                    let bye = c.recv_json(Duration::from_secs(15)).await?;
                    anyhow::ensure!(bye == serde_json::json!({"bye": true, "total": n}), "{path}: got {bye}");
                    let code = c.expect_close(Duration::from_secs(15)).await?;
                    anyhow::ensure!(code == Some(1001), "{path}: close code {code:?}, want 1001");
                    let mut c = ws::connect_retry(&green_url, Duration::from_secs(20)).await?;
                    let count = c.chat("hello again", REPLY_TIMEOUT).await?;
                    anyhow::ensure!(count == n + 1, "{path}: count {count} on green, want {}", n + 1);
                    c.close().await;
                    Ok(())
                })
            })
            .collect();
        let mut failures = Vec::new();
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                failures.push(format!("{e:#}"));
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
            .wait_exit(Duration::from_secs(15))
            .await
            .expect("blue interface did not exit within 15 s of SIGTERM");
        assert!(status.success(), "blue exited with {status}");
    })
    .await
}

/// `REDIS_CLUSTER=3 scripts/up`: the same stack on a local Redis Cluster (3 masters with a
/// replica each) — ready, serving chat and groups through the cluster — and its six nodes stop
/// with the stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_up_on_a_redis_cluster_serves_and_stops_its_nodes() {
    let _heavy = exclusive().await;
    bounded(Duration::from_secs(150), async {
        let stack = Supervised::builder("ops-up-cluster")
            .env("REDIS_CLUSTER", "3")
            .start()
            .await;
        assert!(
            stack.redis_url().starts_with("redis+cluster://"),
            "REDIS_URL is {}",
            stack.redis_url()
        );
        let ports: Vec<u16> = std::fs::read_to_string(stack.run_dir().join("cluster/ports"))
            .expect("the cluster's ports")
            .split_whitespace()
            .map(|p| p.parse().expect("a port"))
            .collect();
        assert_eq!(ports.len(), 6, "{ports:?}");

        let mut chat = ws::connect_retry(
            &stack.ws_url("/ws/chat/?session_uuid=up-cluster"),
            Duration::from_secs(20),
        )
        .await
        .expect("chat");
        for expected in 1..=3 {
            assert_eq!(chat.chat("hi", REPLY_TIMEOUT).await.expect("chat answer"), expected);
        }
        let (status, code) = stack.status().await.expect("switchyard status");
        assert_eq!(code, 0, "{status}");
        assert_eq!(status["redis"]["topology"], "cluster", "{status}");
        assert_eq!(status["redis"]["shards"].as_array().map_or(0, Vec::len), 3, "{status}");
        chat.close().await;

        drop(stack);
        for port in ports {
            let alive = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).contains("PONG"))
                .unwrap_or(false);
            assert!(!alive, "cluster node {port} still runs after the stack stopped");
        }
    })
    .await
}
