//! Echo load that rides out faults, and the readings a chaos run checks afterwards.
//!
//! Why this exists: `tests/tests/chaos.rs` kills workers, restarts Redis and restarts an
//! interface while clients keep talking, then checks that nothing was lost, doubled or
//! reordered. [`crate::load::Load`] fails a connection on its first close, which is right
//! for the restart tests but not here: an interface restart closes its sockets with 1001
//! by design, and a real client reconnects. So each [`ChaosLoad`] client numbers its
//! messages (`c<client> <seq>`), keeps a window of them in flight on `/ws/echo/`, checks
//! every echo against the oldest unanswered one (order), counts what comes back twice,
//! counts each close by its code, writes off what was in flight when a close came (it was
//! sent to a process that is gone), reconnects and carries on with its next numbers.
//! [`rss_kib`] and [`stream_figures`] read what the run left behind: process memory and
//! the channel stream's backlog.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use redis::Value;
use switchyard_protocol::xinfo::parse_groups;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ws::{self, Incoming, WsClient};

/// How long a client keeps trying to (re)connect before it gives up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);
/// How often a waiting client looks at the stop flag.
const POLL: Duration = Duration::from_millis(250);
/// How long a client reads on after a failed send, to learn why the socket went.
const AFTER_SEND_ERROR: Duration = Duration::from_secs(3);
/// Problem descriptions kept per client (the counts are always complete).
const MAX_NOTES: usize = 5;

/// What one chaos client saw over the whole run, across reconnects.
#[derive(Debug, Default, Clone)]
pub struct ClientReport {
    pub client: usize,
    /// Index of the interface it talks to.
    pub interface: usize,
    pub sent: u64,
    /// Messages echoed exactly once, in order.
    pub answered: u64,
    /// Echoes of a message already answered.
    pub duplicates: u64,
    /// Echoes that overtook an older unanswered message.
    pub out_of_order: u64,
    /// Frames that are not an echo of one of this client's messages.
    pub foreign: u64,
    /// In flight when the server closed with 1001 (going away: an interface restart).
    pub lost_to_1001: u64,
    /// In flight when the socket was closed any other way.
    pub lost_other: u64,
    /// Still unanswered when the client gave up waiting at the end.
    pub unanswered: u64,
    /// Server-side endings by close code (`"1001"`, …; `"none"`: a close frame without a
    /// code; `"no close frame"`: the stream ended or broke without one).
    pub closes: BTreeMap<String, u64>,
    pub reconnects: u64,
    /// Time spent without a socket (reconnecting), in total.
    pub offline: Duration,
    /// The first few problems, in words.
    pub notes: Vec<String>,
}

impl ClientReport {
    fn note(&mut self, text: String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(text);
        }
    }
}

/// Sequence-numbered echo load over many clients that reconnect after a close.
pub struct ChaosLoad {
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
    progress: Arc<Vec<AtomicU64>>,
    handles: Vec<JoinHandle<ClientReport>>,
}

impl ChaosLoad {
    /// Starts `clients` clients on `ws://<addr><path>`, client `i` on `addrs[i % addrs.len()]`,
    /// each keeping up to `window` messages in flight. After [`ChaosLoad::finish`] a client
    /// waits up to `quiet` for its last answers.
    pub fn start(addrs: &[String], path: &str, clients: usize, window: usize, quiet: Duration) -> ChaosLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicUsize::new(0));
        let progress: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
        let handles = (0..clients)
            .map(|client| {
                let interface = client % addrs.len();
                let mut c = Client {
                    url: format!("ws://{}{path}", addrs[interface]),
                    window: window.max(1),
                    quiet,
                    stop: stop.clone(),
                    connected: connected.clone(),
                    progress: progress.clone(),
                    in_flight: VecDeque::new(),
                    next_seq: 1,
                    last_answered: 0,
                    report: ClientReport {
                        client,
                        interface,
                        ..ClientReport::default()
                    },
                };
                tokio::spawn(async move {
                    c.run().await;
                    c.report
                })
            })
            .collect();
        ChaosLoad {
            stop,
            connected,
            progress,
            handles,
        }
    }

    /// Clients with an open socket right now.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Answers so far, per client.
    pub fn progress(&self) -> Vec<u64> {
        self.progress.iter().map(|p| p.load(Ordering::Relaxed)).collect()
    }

    /// Answers so far over all clients.
    pub fn answered(&self) -> u64 {
        self.progress().iter().sum()
    }

    /// Waits until every client has had an answer since `since` (a [`ChaosLoad::progress`]
    /// snapshot); on timeout returns the clients that did not.
    pub async fn wait_all_progress(&self, since: &[u64], timeout: Duration) -> Result<(), Vec<usize>> {
        let stalled = || -> Vec<usize> {
            self.progress()
                .iter()
                .zip(since)
                .enumerate()
                .filter(|(_, (now, then))| now <= then)
                .map(|(i, _)| i)
                .collect()
        };
        match crate::wait::eventually(timeout, || async { stalled().is_empty().then_some(()) }).await {
            Some(()) => Ok(()),
            None => Err(stalled()),
        }
    }

    /// Stops sending; each client waits (up to `quiet`) for its outstanding answers,
    /// closes with 1000 and reports.
    pub async fn finish(self) -> Vec<ClientReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut reports = Vec::new();
        for (client, handle) in self.handles.into_iter().enumerate() {
            reports.push(handle.await.unwrap_or_else(|e| ClientReport {
                client,
                notes: vec![format!("client task failed: {e}")],
                ..ClientReport::default()
            }));
        }
        reports
    }
}

/// How a socket ended, as seen from the client.
enum Ending {
    /// The server sent a close frame (with this code, if any).
    Closed(Option<u16>),
    /// The stream ended or broke without a close frame.
    Broken(String),
}

struct Client {
    url: String,
    window: usize,
    quiet: Duration,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
    progress: Arc<Vec<AtomicU64>>,
    /// Sent and not yet answered on the current socket, oldest first.
    in_flight: VecDeque<u64>,
    next_seq: u64,
    /// Highest sequence number answered so far (on any socket).
    last_answered: u64,
    report: ClientReport,
}

impl Client {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    async fn run(&mut self) {
        let mut first = true;
        while !self.stopping() {
            let offline_since = Instant::now();
            let mut socket = match ws::connect_retry(&self.url, CONNECT_PATIENCE).await {
                Ok(socket) => socket,
                Err(e) => {
                    self.report.note(format!("gave up connecting: {e:#}"));
                    return;
                }
            };
            if first {
                first = false;
            } else {
                self.report.reconnects += 1;
                self.report.offline += offline_since.elapsed();
            }
            self.connected.fetch_add(1, Ordering::Relaxed);
            let ending = self.serve(&mut socket).await;
            self.connected.fetch_sub(1, Ordering::Relaxed);
            match ending {
                None => {
                    socket.close().await;
                    return;
                }
                Some(ending) => self.on_ending(ending),
            }
        }
    }

    /// Talks on one socket until the run is over (`None`) or the socket ends.
    async fn serve(&mut self, socket: &mut WsClient) -> Option<Ending> {
        let mut quiet_until: Option<Instant> = None;
        loop {
            if self.stopping() {
                let until = *quiet_until.get_or_insert_with(|| Instant::now() + self.quiet);
                if self.in_flight.is_empty() || Instant::now() >= until {
                    self.report.unanswered += self.in_flight.len() as u64;
                    if !self.in_flight.is_empty() {
                        let seqs: Vec<u64> = self.in_flight.iter().copied().collect();
                        self.report
                            .note(format!("no answer within the quiet period to {seqs:?}"));
                    }
                    return None;
                }
            } else if self.in_flight.len() < self.window {
                let seq = self.next_seq;
                if let Err(e) = socket.send_text(self.text(seq)).await {
                    return Some(self.after_send_error(socket, seq, e).await);
                }
                self.next_seq += 1;
                self.report.sent += 1;
                self.in_flight.push_back(seq);
                continue;
            }
            match socket.recv(POLL).await {
                Err(_) => {} // nothing yet: look at the stop flag again
                Ok(frame) => {
                    if let Some(ending) = self.on_frame(frame) {
                        return Some(ending);
                    }
                }
            }
        }
    }

    /// A send failed: the server is probably closing. Reads what is left to learn how.
    async fn after_send_error(&mut self, socket: &mut WsClient, seq: u64, error: anyhow::Error) -> Ending {
        let deadline = Instant::now() + AFTER_SEND_ERROR;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match socket.recv(left).await {
                Ok(frame) => {
                    if let Some(ending) = self.on_frame(frame) {
                        return ending;
                    }
                }
                Err(_) => return Ending::Broken(format!("sending message {seq} failed: {error:#}")),
            }
        }
    }

    fn text(&self, seq: u64) -> String {
        format!("c{} {seq}", self.report.client)
    }

    fn on_frame(&mut self, frame: Incoming) -> Option<Ending> {
        match frame {
            Incoming::Text(text) => {
                self.on_echo(&text);
                None
            }
            Incoming::Binary(b) => {
                self.report.foreign += 1;
                self.report
                    .note(format!("unexpected binary frame of {} bytes", b.len()));
                None
            }
            Incoming::Close(code, _) => Some(Ending::Closed(code)),
            Incoming::Ended(why) => Some(Ending::Broken(why)),
        }
    }

    fn on_echo(&mut self, text: &str) {
        let seq = text
            .strip_prefix(&format!("c{} ", self.report.client))
            .and_then(|n| n.parse::<u64>().ok());
        let Some(seq) = seq else {
            self.report.foreign += 1;
            self.report.note(format!("unexpected frame {text:?}"));
            return;
        };
        if seq <= self.last_answered && !self.in_flight.contains(&seq) {
            self.report.duplicates += 1;
            self.report.note(format!("message {seq} answered again"));
            return;
        }
        match self.in_flight.iter().position(|&s| s == seq) {
            Some(0) => {}
            Some(at) => {
                self.report.out_of_order += 1;
                self.report.note(format!(
                    "message {seq} answered before {:?}",
                    self.in_flight.iter().take(at).collect::<Vec<_>>()
                ));
            }
            None => {
                self.report.foreign += 1;
                self.report
                    .note(format!("echo of message {seq}, which is not in flight"));
                return;
            }
        }
        self.in_flight.retain(|&s| s != seq);
        self.last_answered = self.last_answered.max(seq);
        self.report.answered += 1;
        self.progress[self.report.client].fetch_add(1, Ordering::Relaxed);
    }

    fn on_ending(&mut self, ending: Ending) {
        let lost = self.in_flight.len() as u64;
        self.in_flight.clear();
        let key = match ending {
            Ending::Closed(Some(code)) => code.to_string(),
            Ending::Closed(None) => "none".to_string(),
            Ending::Broken(why) => {
                self.report.note(format!("socket ended without a close frame: {why}"));
                "no close frame".to_string()
            }
        };
        if key == "1001" {
            self.report.lost_to_1001 += lost;
        } else {
            self.report.lost_other += lost;
            self.report
                .note(format!("closed ({key}) with {lost} messages in flight"));
        }
        *self.report.closes.entry(key).or_default() += 1;
    }
}

/// Resident set size of a process in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS line in /proc/{pid}/status"))
}

/// What Redis holds for one stream and its consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFigures {
    /// `XLEN`: entries still stored (trimming is approximate, so not always 0).
    pub length: u64,
    /// Delivered to a consumer and not acknowledged (`XPENDING`).
    pub pending: u64,
    /// Entries after the group's last-delivered id: never handed to a consumer.
    pub undelivered: u64,
    /// What Redis itself says is undelivered (`XINFO GROUPS` lag; `None` when it cannot
    /// tell). `switchyard status` shows this as the backlog.
    pub redis_lag: Option<u64>,
}

/// Length, pending and undelivered entries of `stream` for consumer group `group`.
pub fn stream_figures(con: &mut impl redis::ConnectionLike, stream: &str, group: &str) -> Result<StreamFigures> {
    let length: u64 = redis::cmd("XLEN").arg(stream).query(con)?;
    let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query(con)?;
    let info = parse_groups(&groups)
        .into_iter()
        .find(|info| info.name == group)
        .ok_or_else(|| anyhow!("no consumer group {group} on {stream}"))?;
    let last_delivered = info
        .last_delivered
        .ok_or_else(|| anyhow!("group {group} on {stream} has no last-delivered id"))?;
    let summary: Value = redis::cmd("XPENDING").arg(stream).arg(group).query(con)?;
    let pending = match &summary {
        Value::Array(items) => items.first().and_then(|v| redis::from_redis_value(v.clone()).ok()),
        _ => None,
    }
    .ok_or_else(|| anyhow!("unexpected XPENDING answer {summary:?}"))?;
    let after: Vec<Value> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({last_delivered}"))
        .arg("+")
        .query(con)?;
    Ok(StreamFigures {
        length,
        pending,
        undelivered: after.len() as u64,
        redis_lag: info.lag,
    })
}
