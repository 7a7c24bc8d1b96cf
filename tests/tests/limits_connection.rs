//! Per-connection limits of established WebSockets (`docs/limits.md`, "Per connection"):
//!
//! - the interface pings every client at `--ping-interval`;
//! - a client heard nothing from for `--idle-timeout` is closed with 1001, while one that
//!   answers the pings stays open past it;
//! - a client that does not read is closed once `--max-send-queue` messages wait for it (or a
//!   write stays blocked for `--send-timeout`), and the interface's memory stays flat while
//!   far more than that is pushed at it; other members keep getting every broadcast;
//! - a client over `--max-message-rate` is closed with 1008, its messages before the limit
//!   reach the worker in order, none after;
//! - a message over `--max-message-size` (1009, tested in `limits.rs`) is counted.
//!
//! Each checks its Prometheus counter too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_tests::stack::{channel_stream, PREFIX, REPLY_TIMEOUT};
use switchyard_tests::ws::RawWs;
use switchyard_tests::{bounded, eventually, http, Incoming, Stack, WsClient};

const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const CLOSE: u8 = 0x8;
const TEXT: u8 = 0x1;

/// A sample of the interface's `/metrics` (0 when the series does not exist yet).
async fn metric(stack: &Stack, series: &str) -> f64 {
    let Ok(response) = http::get(&stack.addr, "/metrics").await else {
        return 0.0;
    };
    response
        .body
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `series` reaches `value`; panics with the last sample otherwise.
async fn wait_metric(stack: &Stack, series: &str, value: f64, timeout: Duration) {
    let reached = eventually(timeout, || async {
        (metric(stack, series).await >= value).then_some(())
    })
    .await;
    let now = metric(stack, series).await;
    assert!(reached.is_some(), "{series} is {now}, expected at least {value}");
}

/// Waits until `series` is exactly `value`; panics with the last sample otherwise.
async fn wait_metric_eq(stack: &Stack, series: &str, value: f64, timeout: Duration) {
    let reached = eventually(timeout, || async {
        (metric(stack, series).await == value).then_some(())
    })
    .await;
    let now = metric(stack, series).await;
    assert!(reached.is_some(), "{series} is {now}, expected {value}");
}

/// The interface's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A group broadcast as any publisher writes it (`docs/protocol.md`, "Group broadcasts"):
/// msgpack `{v: 1, group, seq, bytes}`.
fn broadcast(group: &str, seq: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x84];
    let key = |out: &mut Vec<u8>, name: &str| {
        out.push(0xa0 | name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    };
    key(&mut out, "v");
    out.push(0x01);
    key(&mut out, "group");
    out.push(0xd9);
    out.push(group.len() as u8);
    out.extend_from_slice(group.as_bytes());
    key(&mut out, "seq");
    out.push(0xce);
    out.extend_from_slice(&seq.to_be_bytes());
    key(&mut out, "bytes");
    out.push(0xc6);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Watches Redis (MONITOR) for appends to a stream that contain a marker, in the order
/// Redis executed them.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Monitor {
    fn start(stack: &Stack, stream: String, marker: &'static str) -> Monitor {
        let append = format!("\"XADD\" \"{stream}\"");
        // MONITOR shows one server's commands: a single-server test.
        let mut con = stack.redis.single().conn().unwrap();
        redis::cmd("MONITOR").exec(&mut con).unwrap();
        con.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let Ok(redis::Value::SimpleString(line)) = con.recv_response() else {
                    continue;
                };
                if !line.contains(&append) {
                    continue;
                }
                if let Some(at) = line.find(marker) {
                    let end = (at + marker.len() + 2).min(line.len());
                    seen.push(line[at..end].to_owned());
                }
            }
            seen
        });
        Monitor { stop, thread }
    }

    /// The markers appended so far (each `marker` plus two characters).
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Waits until the interface subscribed to `group`'s channel; a Redis connection and the channel.
/// (A single-server test: it publishes hand-made broadcasts on the classic channel.)
async fn subscribed(stack: &Stack, group: &str) -> (redis::Connection, String) {
    let mut redis = stack.redis.single().conn().unwrap();
    let channel = format!("{PREFIX}:group:{{{group}}}");
    let done = eventually(Duration::from_secs(10), || {
        let numsub: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query(&mut redis)
            .unwrap_or_default();
        std::future::ready(numsub.first().is_some_and(|(_, n)| *n >= 1).then_some(()))
    })
    .await;
    assert!(done.is_some(), "the interface never subscribed to {channel}");
    (redis, channel)
}

/// A raw client of the rooms app that joined `room` (and read the answer).
async fn raw_member(stack: &Stack, room: &str) -> RawWs {
    let mut raw = RawWs::connect(&stack.addr, "/ws/rooms/").await.unwrap();
    raw.write_frame(true, TEXT, json!({ "join": room }).to_string().as_bytes())
        .await
        .unwrap();
    let joined = raw.read_frame(REPLY_TIMEOUT).await.unwrap();
    assert!(
        String::from_utf8_lossy(&joined.payload).contains("joined"),
        "{joined:?}"
    );
    raw
}

/// Reads the raw socket until the server drops it; the close code if a close frame came.
/// Panics if the socket is still open after `timeout`.
async fn read_to_end(raw: &mut RawWs, timeout: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut code = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match raw.read_frame(left).await {
            Ok(frame) if frame.opcode == CLOSE => code = frame.close_code(),
            Ok(_) => {}
            Err(error) if error.to_string().contains("closed by the server") => return code,
            Err(error) if error.to_string().contains("no frame within") => {
                panic!("socket still open after {timeout:?}")
            }
            // A reset also ends it.
            Err(_) => return code,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interface_pings_every_client() {
    bounded(Duration::from_secs(60), async {
        // Through the environment, as a platform would set them.
        let stack = Stack::builder("ping")
            .workers(1)
            .interface_env("SWITCHYARD_PING_INTERVAL", "0.5")
            .interface_env("SWITCHYARD_IDLE_TIMEOUT", "0")
            .start()
            .await;
        let mut raw = RawWs::connect(&stack.addr, "/ws/echo/").await.unwrap();
        let started = Instant::now();
        let mut pings = 0;
        while pings < 3 {
            let frame = raw.read_frame(Duration::from_secs(10)).await.unwrap();
            assert_eq!(frame.opcode, PING, "only pings on a quiet connection: {frame:?}");
            pings += 1;
        }
        // Three pings half a second apart: not a burst.
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
        // Unanswered pings alone close nothing while the idle timeout is off.
        raw.write_frame(true, TEXT, b"still here").await.unwrap();
        let echoed = loop {
            let frame = raw.read_frame(REPLY_TIMEOUT).await.unwrap();
            if frame.opcode != PING {
                break frame;
            }
        };
        assert_eq!((echoed.opcode, echoed.payload.as_slice()), (TEXT, &b"still here"[..]));
        wait_metric(
            &stack,
            "switchyard_websocket_pings_sent_total",
            3.0,
            Duration::from_secs(5),
        )
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_idle_timeout_one_answering_pings_is_not() {
    bounded(Duration::from_secs(60), async {
        let idle = Duration::from_secs(2);
        let stack = Stack::builder("idle")
            .workers(1)
            .interface_arg("--ping-interval")
            .interface_arg("0.5")
            .interface_arg("--idle-timeout")
            .interface_arg("2")
            .start()
            .await;

        // Answers every ping for twice the idle timeout, then still gets its echo.
        let mut alive = RawWs::connect(&stack.addr, "/ws/echo/").await.unwrap();
        let answering = tokio::spawn(async move {
            let until = tokio::time::Instant::now() + 2 * idle;
            let mut pongs = 0;
            while tokio::time::Instant::now() < until {
                let Ok(frame) = alive.read_frame(Duration::from_millis(200)).await else {
                    continue;
                };
                assert_eq!(frame.opcode, PING, "an answering client is left alone: {frame:?}");
                alive.write_frame(true, PONG, &frame.payload).await.unwrap();
                pongs += 1;
            }
            alive.write_frame(true, TEXT, b"ping answered").await.unwrap();
            let echoed = loop {
                let frame = alive.read_frame(REPLY_TIMEOUT).await.unwrap();
                if frame.opcode != PING {
                    break frame;
                }
            };
            assert_eq!(echoed.payload, b"ping answered", "{echoed:?}");
            pongs
        });

        // Reads, but answers nothing.
        let mut silent = RawWs::connect(&stack.addr, "/ws/echo/").await.unwrap();
        let connected = Instant::now();
        let code = silent.expect_close(Duration::from_secs(15)).await.unwrap();
        let after = connected.elapsed();
        assert_eq!(code, Some(1001), "idle timeout closes with 1001");
        assert!(
            after >= idle - Duration::from_millis(300),
            "closed too early: {after:?}"
        );

        let pongs = answering.await.unwrap();
        assert!(pongs >= 4, "the answering client saw {pongs} pings");
        assert_eq!(
            metric(&stack, "switchyard_websocket_errors_total{kind=\"idle_timeout\"}").await,
            1.0
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_and_memory_stays_flat() {
    bounded(Duration::from_secs(120), async {
        const MESSAGE: usize = 1 << 20;
        const MESSAGES: u32 = 320;
        const WINDOW: u32 = 4;
        // 8 MiB may wait for the slow client; 320 MiB is pushed at it.
        const MAX_GROWTH_KIB: u64 = 32 << 10;
        let mut stack = Stack::builder("slow-reader")
            .single_redis()
            .workers(1)
            .interface_arg("--max-send-queue")
            .interface_arg("8")
            .interface_arg("--send-timeout")
            .interface_arg("0")
            .start()
            .await;
        let group = "room:flood";
        let mut slow = raw_member(&stack, "flood").await;
        let mut reader: WsClient = stack.ws("/ws/rooms/").await;
        reader.send_text(json!({ "join": "flood" }).to_string()).await.unwrap();
        assert!(matches!(reader.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text(t) if t.contains("joined")));
        let (mut redis, channel) = subscribed(&stack, group).await;

        let pid = stack.interface().pid();
        let before = rss_kib(pid);
        let mut peak = before;
        let mut body = vec![0u8; MESSAGE];
        let mut received = 0u32;
        for seq in 0..MESSAGES {
            body[..4].copy_from_slice(&seq.to_be_bytes());
            let delivered: u64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(broadcast(group, seq + 1, &body))
                .query(&mut redis)
                .unwrap();
            assert_eq!(delivered, 1, "one subscribed interface");
            // The reading member keeps up, a few messages behind.
            while received + WINDOW <= seq {
                match reader.recv(REPLY_TIMEOUT).await.unwrap() {
                    Incoming::Binary(bytes) => {
                        assert_eq!(bytes.len(), MESSAGE);
                        assert_eq!(bytes[..4], received.to_be_bytes(), "in order, none lost");
                        received += 1;
                    }
                    other => panic!("the reading member got {other:?} after {received} messages"),
                }
            }
            peak = peak.max(rss_kib(pid));
        }
        while received < MESSAGES {
            match reader.recv(REPLY_TIMEOUT).await.unwrap() {
                Incoming::Binary(bytes) => {
                    assert_eq!(bytes[..4], received.to_be_bytes(), "in order, none lost");
                    received += 1;
                }
                other => panic!("the reading member got {other:?} after {received} messages"),
            }
        }
        let growth = peak.saturating_sub(before);
        eprintln!("interface RSS {before} KiB before, {peak} KiB at most while pushing");
        assert!(
            growth < MAX_GROWTH_KIB,
            "interface RSS grew by {growth} KiB ({before} → {peak}) while {} MiB were pushed",
            (MESSAGE as u64 * u64::from(MESSAGES)) >> 20
        );

        wait_metric(
            &stack,
            "switchyard_websocket_errors_total{kind=\"slow_reader\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
        // Only the reader is left.
        wait_metric_eq(
            &stack,
            "switchyard_websocket_connections_active",
            1.0,
            Duration::from_secs(10),
        )
        .await;
        // Blocked in a write: dropped without a close frame, or with 1008 if one fitted.
        let code = read_to_end(&mut slow, Duration::from_secs(30)).await;
        assert!(matches!(code, None | Some(1008)), "closed with {code:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_blocked_past_the_send_timeout_drops_the_client() {
    bounded(Duration::from_secs(60), async {
        const MESSAGE: usize = 1 << 20;
        let stack = Stack::builder("send-timeout")
            .single_redis()
            .workers(1)
            .interface_arg("--max-send-queue")
            .interface_arg("0")
            .interface_arg("--send-timeout")
            .interface_arg("2")
            .start()
            .await;
        let group = "room:stuck";
        let mut slow = raw_member(&stack, "stuck").await;
        let (mut redis, channel) = subscribed(&stack, group).await;
        let body = vec![7u8; MESSAGE];
        let started = Instant::now();
        // Far more than the socket buffers hold, so a write blocks.
        for seq in 1..=40 {
            let delivered: u64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(broadcast(group, seq, &body))
                .query(&mut redis)
                .unwrap();
            assert_eq!(delivered, 1, "one subscribed interface");
        }
        wait_metric(
            &stack,
            "switchyard_websocket_errors_total{kind=\"slow_reader\"}",
            1.0,
            Duration::from_secs(20),
        )
        .await;
        // Not before the send timeout (2 s) after the first write blocked.
        assert!(
            started.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            started.elapsed()
        );
        wait_metric_eq(
            &stack,
            "switchyard_websocket_connections_active",
            0.0,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            read_to_end(&mut slow, Duration::from_secs(30)).await,
            None,
            "no close frame fits"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_message_rate_is_closed_with_1008() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("rate")
            .single_redis()
            .workers(1)
            .interface_arg("--max-message-rate")
            .interface_arg("5")
            .interface_arg("--message-burst")
            .interface_arg("5")
            .start()
            .await;

        // Under the limit: everything answered.
        let mut calm = stack.ws("/ws/echo/").await;
        for i in 0..3 {
            calm.send_text(format!("calm-{i}")).await.unwrap();
            assert_eq!(
                calm.recv(REPLY_TIMEOUT).await.unwrap(),
                Incoming::Text(format!("calm-{i}"))
            );
        }

        // 20 at once: the burst passes, then the connection is closed.
        let appended = Monitor::start(&stack, channel_stream("echo"), "flood-");
        let mut flood = stack.ws("/ws/echo/").await;
        for i in 0..20 {
            flood.feed_text(format!("flood-{i:02}")).await.unwrap();
        }
        flood.flush().await.unwrap();
        let mut echoed = Vec::new();
        let close = loop {
            match flood.recv(REPLY_TIMEOUT).await.unwrap() {
                Incoming::Text(text) => echoed.push(text),
                other => break other,
            }
        };
        assert_eq!(close, Incoming::Close(Some(1008), "message rate exceeded".into()));
        wait_metric(
            &stack,
            "switchyard_websocket_errors_total{kind=\"rate_limited\"}",
            1.0,
            Duration::from_secs(5),
        )
        .await;
        // Gone (its queued messages handed over first): only the calm client is left.
        wait_metric_eq(
            &stack,
            "switchyard_websocket_connections_active",
            1.0,
            Duration::from_secs(15),
        )
        .await;

        // The worker got the messages before the limit, in order, and none after.
        let delivered = appended.finish();
        assert!(
            (5..20).contains(&delivered.len()),
            "{} messages reached the worker: {delivered:?}",
            delivered.len()
        );
        let prefix: Vec<String> = (0..delivered.len()).map(|i| format!("flood-{i:02}")).collect();
        assert_eq!(delivered, prefix, "a prefix, in order");
        for (i, text) in echoed.iter().enumerate() {
            assert_eq!(text, &format!("flood-{i:02}"), "echoes in order");
        }
        assert!(echoed.len() <= delivered.len());

        // The calm client was not affected.
        calm.send_text("calm-after").await.unwrap();
        assert_eq!(
            calm.recv(REPLY_TIMEOUT).await.unwrap(),
            Incoming::Text("calm-after".into())
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_counted_as_message_too_big() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("too-big-metric")
            .workers(1)
            .interface_arg("--max-message-size")
            .interface_arg("1024")
            .start()
            .await;
        let series = "switchyard_websocket_errors_total{kind=\"message_too_big\"}";
        assert_eq!(metric(&stack, series).await, 0.0);
        let mut c = stack.ws("/ws/echo/").await;
        c.send_binary(vec![7u8; 4096]).await.unwrap();
        assert_eq!(c.expect_close(Duration::from_secs(10)).await.unwrap(), Some(1009));
        wait_metric(&stack, series, 1.0, Duration::from_secs(5)).await;
    })
    .await
}
