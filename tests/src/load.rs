//! Continuous chat load that checks exactly-once, in-order delivery.
//!
//! Why this exists: the restart guarantees (kill -9, SIGTERM, rolling restarts, supervisord)
//! only mean something under load. Each connection keeps a small window of messages in
//! flight and checks that the answers carry the counts 1, 2, 3, … with no gap (a lost
//! message), no repeat (a message applied twice) and no close. Counting lives in the chat
//! app's Redis session, so a message applied twice shows up as a skipped count even if the
//! interface suppresses the duplicate reply. Round-trip times are kept for percentiles.
//!
//! [`Load::start_echo`] runs the same on `/ws/echo/` (answers must repeat `message N` in
//! order) and, for Redis outage tests, takes a close from the server as an outcome, not an
//! error: the report says how many messages were sent and answered before which close code.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::stack::Stack;
use crate::ws::{self, Incoming, WsClient};

/// What one load connection did.
#[derive(Debug, Default)]
pub struct ConnReport {
    /// Messages sent.
    pub sent: u64,
    /// Messages answered (with counts 1..=answered, in order).
    pub answered: u64,
    /// Echo load only: the server closed the connection with this code, at this time.
    pub closed: Option<(u16, Instant)>,
    /// (when the answer arrived, round-trip time) per message.
    pub samples: Vec<(Instant, Duration)>,
}

/// Chat load over many connections: each keeps up to `window` messages unanswered and
/// checks that the answers carry the counts 1, 2, 3, … (no gap, no repeat, no close).
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    handles: Vec<JoinHandle<Result<ConnReport>>>,
}

impl Load {
    /// Opens `conns` connections to `url` (32 handshakes at a time), then starts them all.
    pub async fn start(url: &str, conns: usize, window: u64, reply_timeout: Duration) -> Result<Load> {
        Load::start_kind(url, conns, window, reply_timeout, false).await
    }

    /// [`Load::start`], then waits until `answers` have come back (within `within`):
    /// the load is under way. Panics otherwise.
    pub async fn start_going(
        url: &str,
        conns: usize,
        window: u64,
        reply_timeout: Duration,
        answers: u64,
        within: Duration,
    ) -> Load {
        let load = Load::start(url, conns, window, reply_timeout)
            .await
            .expect("load connections");
        assert!(
            load.wait_answered(answers, within).await,
            "load did not get going: {} answers",
            load.answered()
        );
        load
    }

    /// Echo load on `url` (a `/ws/echo/` route): the answers must be `message 1`,
    /// `message 2`, … in order; a close from the server ends the connection's run.
    pub async fn start_echo(url: &str, conns: usize, window: u64, reply_timeout: Duration) -> Result<Load> {
        Load::start_kind(url, conns, window, reply_timeout, true).await
    }

    async fn start_kind(url: &str, conns: usize, window: u64, reply_timeout: Duration, echo: bool) -> Result<Load> {
        let clients: Vec<Result<WsClient>> = futures::stream::iter(0..conns)
            .map(|_| ws::connect_retry(url, Duration::from_secs(60)))
            .buffer_unordered(32)
            .collect()
            .await;
        let clients = clients.into_iter().collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let handles = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                let (stop, answered) = (stop.clone(), answered.clone());
                tokio::spawn(async move {
                    let run = if echo {
                        run_echo_connection(client, window, reply_timeout, stop, answered).await
                    } else {
                        run_connection(client, window, reply_timeout, stop, answered).await
                    };
                    run.with_context(|| format!("connection {i}"))
                })
            })
            .collect();
        Ok(Load {
            stop,
            answered,
            handles,
        })
    }

    /// Messages answered so far, over all connections.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` messages have been answered in total; false on timeout.
    pub async fn wait_answered(&self, n: u64, timeout: Duration) -> bool {
        crate::wait::eventually(timeout, || async { (self.answered() >= n).then_some(()) })
            .await
            .is_some()
    }

    /// Answers per second over the next `window`.
    pub async fn rate(&self, window: Duration) -> f64 {
        let (n0, t0) = (self.answered(), Instant::now());
        tokio::time::sleep(window).await;
        (self.answered() - n0) as f64 / t0.elapsed().as_secs_f64()
    }

    /// Stops sending, waits for every outstanding answer, closes the sockets (1000).
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut conns = Vec::new();
        for h in self.handles {
            conns.push(match h.await {
                Ok(r) => r,
                Err(e) => Err(anyhow!("load task panicked: {e}")),
            });
        }
        LoadReport { conns }
    }
}

/// Kills worker `index` of `stack` (SIGKILL) while `load` runs; the load must go on (the
/// other workers take over what the dead one held) and finish with every message answered
/// exactly once and in order, the other workers still running. Returns the answers.
pub async fn survives_worker_kill9(stack: &mut Stack, load: Load, index: usize) -> u64 {
    let before = load.answered();
    stack.workers[index].kill9();
    eprintln!("[test] kill -9 {} after {before} answers", stack.workers[index].name());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = load.answered();
    assert!(
        after > before,
        "no progress after kill -9 ({before} answers before, {after} after)"
    );
    let total = load.finish().await.assert_exactly_once();
    eprintln!("[test] {total} messages answered exactly once, in order");
    for (i, w) in stack.workers.iter_mut().enumerate() {
        if i != index {
            assert!(w.is_running(), "{} died", w.name());
        }
    }
    total
}

/// The outcome of a [`Load`].
pub struct LoadReport {
    pub conns: Vec<Result<ConnReport>>,
}

impl LoadReport {
    /// One line per failed connection (empty when none failed).
    pub fn failures(&self) -> Vec<String> {
        self.conns
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
            .collect()
    }

    /// Messages answered over all connections.
    pub fn total(&self) -> u64 {
        self.conns.iter().flatten().map(|c| c.answered).sum()
    }

    /// Connections that got no answer at all.
    pub fn idle_connections(&self) -> usize {
        self.conns.iter().flatten().filter(|c| c.answered == 0).count()
    }

    /// Asserts that every connection got answers, each exactly once and in order, and was
    /// never closed; returns the number of messages answered.
    pub fn assert_exactly_once(&self) -> u64 {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{} of {} connections failed:\n{}",
            failures.len(),
            self.conns.len(),
            failures.join("\n")
        );
        assert_eq!(self.idle_connections(), 0, "a connection got no answer at all");
        self.total()
    }

    /// The `q` quantile (0..1) of the round-trip times of answers that arrived in
    /// `[from, to]`, with the number of such answers.
    pub fn quantile(&self, from: Instant, to: Instant, q: f64) -> Option<(Duration, usize)> {
        let mut rtts: Vec<Duration> = self
            .conns
            .iter()
            .flatten()
            .flat_map(|c| c.samples.iter())
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, rtt)| *rtt)
            .collect();
        if rtts.is_empty() {
            return None;
        }
        rtts.sort();
        let index = ((rtts.len() as f64 * q).ceil() as usize).clamp(1, rtts.len()) - 1;
        Some((rtts[index], rtts.len()))
    }
}

/// Sends `burst` chat messages on each client without waiting, then checks that each
/// connection's answers carry the counts 1..=burst in order (whichever workers handled them).
pub async fn bursts_answered_in_order(clients: Vec<WsClient>, burst: u64, reply_timeout: Duration) {
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                for m in 1..=burst {
                    c.feed_text(format!("conn {i} burst {m}")).await?;
                }
                c.flush().await?;
                let mut counts = Vec::new();
                for _ in 1..=burst {
                    counts.push(c.recv_count(reply_timeout).await?);
                }
                c.close().await;
                anyhow::Ok(counts)
            })
        })
        .collect();
    let expected: Vec<u64> = (1..=burst).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let counts = t.await.unwrap().unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        assert_eq!(counts, expected, "connection {i} saw its counts out of order");
    }
}

async fn run_connection(
    mut client: WsClient,
    window: u64,
    reply_timeout: Duration,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Result<ConnReport> {
    let mut report = ConnReport::default();
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    let mut sent = 0u64;
    loop {
        if !stop.load(Ordering::SeqCst) && (in_flight.len() as u64) < window {
            sent += 1;
            client
                .send_text(format!("message {sent}"))
                .await
                .with_context(|| format!("sending message {sent}"))?;
            in_flight.push_back(Instant::now());
            continue;
        }
        let Some(sent_at) = in_flight.pop_front() else {
            break;
        };
        let expected = report.answered + 1;
        let count = client
            .recv_count(reply_timeout)
            .await
            .with_context(|| format!("waiting for the answer to message {expected} ({sent} sent)"))?;
        if count != expected {
            bail!(
                "expected count {expected} but got {count} ({})",
                if count > expected {
                    "a gap: lost or applied twice"
                } else {
                    "a repeat"
                }
            );
        }
        let now = Instant::now();
        report.samples.push((now, now - sent_at));
        report.answered = expected;
        answered.fetch_add(1, Ordering::Relaxed);
    }
    report.sent = sent;
    client.close().await;
    Ok(report)
}

async fn run_echo_connection(
    mut client: WsClient,
    window: u64,
    reply_timeout: Duration,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Result<ConnReport> {
    let mut report = ConnReport::default();
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    // False once a send failed: the server is closing, read why.
    let mut sending = true;
    loop {
        if sending && !stop.load(Ordering::SeqCst) && (in_flight.len() as u64) < window {
            match client.send_text(format!("message {}", report.sent + 1)).await {
                Ok(()) => {
                    report.sent += 1;
                    in_flight.push_back(Instant::now());
                    continue;
                }
                Err(_) => sending = false,
            }
        }
        if sending && in_flight.is_empty() {
            break;
        }
        let expected = report.answered + 1;
        let incoming = client
            .recv(reply_timeout)
            .await
            .with_context(|| format!("waiting for the answer to message {expected} ({} sent)", report.sent))?;
        match incoming {
            Incoming::Text(text) => {
                let Some(sent_at) = in_flight.pop_front() else {
                    bail!("answer {text:?} to nothing ({} sent, all answered)", report.sent);
                };
                if text != format!("message {expected}") {
                    bail!("expected `message {expected}` but got {text:?}");
                }
                let now = Instant::now();
                report.samples.push((now, now - sent_at));
                report.answered = expected;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Incoming::Close(code, _) => {
                report.closed = Some((code.unwrap_or(1005), Instant::now()));
                return Ok(report);
            }
            other => bail!("{other:?} after {} answers of {} sent", report.answered, report.sent),
        }
    }
    client.close().await;
    Ok(report)
}
