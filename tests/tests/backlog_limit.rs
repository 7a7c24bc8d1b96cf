//! Bounded backlogs: with the channel's only worker alive but stuck (its permits held by slow
//! requests) and clients retrying their handshakes, the channel's streams (and Redis's memory)
//! stop growing at `--max-backlog`;
//! handshakes get 503 with Retry-After at once, a message on an open socket closes it with
//! 1013, and nothing accepted is lost: when a worker is back, it all gets handled and the
//! channel takes work again.
//!
//! Why: one connection has at most one message in flight, but handshakes are not bounded
//! that way — each retry leaves a `websocket.connect` (and a disconnect) on the stream for
//! workers that do not read (interface/src/bus/backlog.rs). (With *no* live worker the
//! interface refuses at once without appending anything: interface/src/front/unserved.rs.)

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use switchyard_tests::stack::{Probe, PREFIX};
use switchyard_tests::{bounded, eventually, http, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: u64 = 150;
/// Each handshake carries this much header, so each refused one would cost Redis this much.
const PAD: usize = 4096;
const STORMERS: usize = 40;
const STORM: Duration = Duration::from_secs(12);

/// One WebSocket handshake with a large header; the status and the Retry-After value.
async fn handshake(addr: &str, path: &str) -> Result<(u16, Option<String>)> {
    let mut tcp = TcpStream::connect(addr).await.context("connect")?;
    let pad = "x".repeat(PAD);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Pad: {pad}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 {
            bail!("connection closed before the response head");
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("status line")?;
    let retry_after = head
        .lines()
        .find_map(|line| {
            line.strip_prefix("retry-after: ")
                .or_else(|| line.strip_prefix("Retry-After: "))
        })
        .map(str::to_owned);
    Ok((status, retry_after))
}

fn backlog_entries(stack: &Stack) -> u64 {
    let Ok(mut con) = stack.redis_conn() else { return 0 };
    let mut total = 0;
    for shard in 0..8 {
        let key = format!("{PREFIX}:chan:{{echo:{shard}}}");
        total += redis::cmd("XLEN").arg(&key).query::<u64>(&mut con).unwrap_or(0);
    }
    total
}

fn used_memory(stack: &Stack) -> u64 {
    let mut con = stack.redis_conn().expect("redis");
    let info: String = redis::cmd("INFO").arg("memory").query(&mut con).expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("used_memory in INFO")
}

fn metric(text: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_without_workers_stops_taking_work_at_its_backlog_limit() {
    bounded(Duration::from_secs(150), async {
        let mut stack = Stack::builder("backlog-limit")
            .single_redis()
            .workers(1)
            .worker_arg("--concurrency")
            .worker_arg("2")
            .probe(Probe::Echo)
            .interface_arg("--max-backlog-for")
            .interface_arg(&format!("echo={LIMIT}"))
            .interface_arg("--connect-timeout")
            .interface_arg("0.5")
            .start()
            .await;
        let addr = stack.addr.clone();
        let mut open = stack.ws("/ws/echo/").await;

        // The worker is alive (so the channel is served) but reads nothing more: both of its
        // permits are held by slow requests.
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut tcp = TcpStream::connect(&addr).await.expect("connect");
            let request = format!("GET /api/example/slow?ms=45000 HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            tcp.write_all(request.as_bytes()).await.expect("send");
            slow.push(tcp);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let memory_before = used_memory(&stack);

        // Clients retry their handshakes for a while: each attempt leaves entries behind.
        let started = Instant::now();
        let stormers: Vec<_> = (0..STORMERS)
            .map(|_| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    let (mut attempts, mut refused_at_once) = (0u64, 0u64);
                    let mut retry_after = None;
                    while started.elapsed() < STORM {
                        let sent = Instant::now();
                        if let Ok((status, retry)) = handshake(&addr, "/ws/echo/").await {
                            attempts += 1;
                            if status == 503 && retry.is_some() && sent.elapsed() < Duration::from_millis(400) {
                                refused_at_once += 1;
                                retry_after = retry;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    (attempts, refused_at_once, retry_after)
                })
            })
            .collect();
        let (mut attempts, mut refused_at_once, mut retry_after) = (0, 0, None);
        for stormer in stormers {
            let (a, r, retry) = stormer.await.expect("stormer");
            attempts += a;
            refused_at_once += r;
            retry_after = retry_after.or(retry);
        }
        // Give the last measurement a moment, then look at what Redis holds.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let entries = backlog_entries(&stack);
        let memory_after = used_memory(&stack);
        let growth = memory_after.saturating_sub(memory_before);
        eprintln!(
            "[backlog-limit] {attempts} handshakes in {STORM:?} ({refused_at_once} refused at once, Retry-After {retry_after:?}); \
             echo holds {entries} entries (limit {LIMIT}); Redis used_memory {memory_before} → {memory_after} (+{growth} bytes)"
        );
        assert!(attempts > 3 * LIMIT, "the storm was too small to test anything: {attempts} handshakes");
        assert!(refused_at_once > 0, "no handshake was refused at once with Retry-After");
        assert_eq!(retry_after.as_deref(), Some("5"));
        // The bound: the limit plus what arrived during one measurement second.
        assert!(entries <= 3 * LIMIT, "echo holds {entries} entries; limit {LIMIT}");
        // Unbounded, every attempt would have left at least its padded connect behind.
        let unbounded = attempts * PAD as u64;
        assert!(
            growth < unbounded / 3,
            "Redis grew by {growth} bytes; {attempts} handshakes of {PAD} bytes would be {unbounded}"
        );

        // A message on a socket opened before: closed with 1013, nothing appended.
        open.send_text("while full").await.expect("send");
        let code = open.expect_close(Duration::from_secs(15)).await.expect("closed");
        assert_eq!(code, Some(1013));
        let scraped = http::get(&addr, "/metrics").await.expect("metrics").body;
        assert!(metric(&scraped, "channel_backlog_refusals_total{channel=\"echo\",kind=\"handshake\"}") > 0.0, "{scraped}");
        assert!(metric(&scraped, "channel_backlog_refusals_total{channel=\"echo\",kind=\"message\"}") >= 1.0, "{scraped}");
        assert!(metric(&scraped, "channel_backlog{channel=\"echo\"}") >= LIMIT as f64, "{scraped}");

        // A worker that reads again: everything accepted is handled, and the channel takes
        // work again.
        drop(slow);
        stack.spawn_worker();
        let drained = eventually(Duration::from_secs(60), || async {
            let scraped = http::get(&addr, "/metrics").await.ok()?.body;
            (metric(&scraped, "channel_backlog{channel=\"echo\"}") == 0.0).then_some(())
        })
        .await;
        assert!(drained.is_some(), "the backlog was not handled once a worker was back");
        let mut client = stack.ws("/ws/echo/").await;
        client.send_text("hello again").await.expect("send");
        assert!(matches!(
            client.recv(Duration::from_secs(15)).await,
            Ok(switchyard_tests::Incoming::Text(t)) if t == "hello again"
        ));
    })
    .await
}
