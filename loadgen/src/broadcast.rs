//! The `broadcast` scenario: N members in one room, spread over one or more interfaces, and K
//! broadcasts from a separate sender; how long until the *last* member has each one.
//!
//! A group send is where Switchyard (one PUBLISH, fan-out inside each interface) and
//! channels_redis (`group_send` through Redis to every member's channel) differ most, and the
//! figure a user feels is the time until everybody has the message. So: members are spread
//! round-robin over the `--url`s (one per interface), each joins the room and waits for
//! `{"joined": room}`; then one extra connection sends K `say` messages on a fixed schedule.
//! Each text is `r=<run> b=<k> t=<ns>` — this run's id, the broadcast number and the send time
//! in ns since an epoch of this process — so every delivery is matched to exactly one broadcast:
//! misses and duplicates are counted per (member, broadcast), and with `--protocol
//! switchyard-rooms` each member's `seq` numbers must also run without gaps or repeats.
//! Broadcasts from another run in the same room (another load process, a leftover) are
//! "foreign": ignored, but counted, and still part of the seq check.
//!
//! One process cannot hold more than ~19,000 sockets (20,000 open files per process), so more
//! members are refused with a hint to run several processes in the same room, each with its
//! own `--source-ip-offset`; each then reports its own members against its own broadcasts.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::client::{self, ConnectFailure};
use crate::duplex::Duplex;
use crate::fleet::ConnectFailures;
use crate::limits;
use crate::options::{self, MAX_SECONDS};
use crate::procstat::{PidDelta, Watched};
use crate::report::{self, fmt_us, LatencySummary};
use crate::source::SourceAddrs;
use crate::target::Target;

/// Most members one process may hold (the open-files limit is 20,000 and cannot be raised).
pub const MAX_MEMBERS: usize = 19_000;

/// Most broadcasts per run (the delivery table is members × broadcasts timestamps).
pub const MAX_BROADCASTS: usize = 1_000;

/// Which server-side rooms protocol the members and the sender speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoomsProtocol {
    /// Switchyard's `rooms` app: deliveries carry the room's broadcast number `seq`, which is
    /// checked for gaps and repeats.
    SwitchyardRooms,
    /// The Channels peer's rooms consumer (bench/peers): same JSON, no `seq`.
    ChannelsRooms,
}

impl RoomsProtocol {
    fn has_seq(self) -> bool {
        matches!(self, RoomsProtocol::SwitchyardRooms)
    }
}

/// `broadcast` options. The target and run flags are spelled like the other scenarios', but
/// `--url` is repeatable here (one per interface), so `CommonArgs` is not flattened in.
#[derive(Args, Debug, Clone)]
pub struct BroadcastArgs {
    /// WebSocket URL of a rooms endpoint (loopback only); repeat once per interface — members
    /// are spread round-robin, the sender uses the first.
    #[arg(long = "url", value_name = "URL", required = true)]
    pub urls: Vec<String>,

    /// Where the sender connects (loopback only); default: the first --url. A URL no member
    /// uses keeps the sender's own round trips off the interfaces that fan out.
    #[arg(long, value_name = "URL")]
    pub sender_url: Option<String>,

    /// Rooms protocol spoken by the server.
    #[arg(long, value_enum, default_value_t = RoomsProtocol::SwitchyardRooms)]
    pub protocol: RoomsProtocol,

    /// Room to join and broadcast to.
    #[arg(long, default_value = "bench")]
    pub room: String,

    /// Member connections (at most 19,000 per process).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,

    /// Broadcasts to send.
    #[arg(long, default_value_t = 50)]
    pub broadcasts: usize,

    /// Milliseconds between the starts of two broadcasts.
    #[arg(long, default_value_t = 200)]
    pub interval: u64,

    /// Seconds to wait after every member joined, before the first broadcast.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,

    /// After the last broadcast, seconds to wait for deliveries still missing.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,

    /// Seconds each member may take to get `{"joined": room}` after connecting.
    #[arg(long, default_value_t = 30.0)]
    pub answer_timeout: f64,

    /// Print one JSON line with all figures on stdout (human text goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// A name for the system under test, copied into the report (e.g. daphne, switchyard).
    #[arg(long, default_value = "")]
    pub label: String,

    /// Server process to sample for CPU (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Connect + join handshakes in flight at once while opening members.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,

    /// Seconds allowed for one TCP connect + WebSocket handshake.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// Seconds allowed for opening all members; those not started by then are skipped.
    #[arg(long, default_value_t = 300.0)]
    pub setup_timeout: f64,

    /// Use source addresses 127.0.0.(2 + offset·k)…; give each concurrent load process its own.
    #[arg(long, default_value_t = 0)]
    pub source_ip_offset: u32,
}

/// A frame a member or the sender received, as far as the benchmark cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    /// `{"joined": room}` for our room.
    Joined,
    /// A broadcast of this run: number `k`, sent at `t_ns`.
    Ours { k: u64, t_ns: u64, seq: Option<u64> },
    /// A broadcast to our room from another run.
    Foreign { seq: Option<u64> },
    /// `{"error": …}`.
    Error,
    /// Anything else (another room, not JSON, a heartbeat).
    Other,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    joined: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The text of broadcast `k` of run `run`, sent at `t_ns`.
pub fn say_text(run: u64, k: u64, t_ns: u64) -> String {
    format!("r={run} b={k} t={t_ns}")
}

/// Parses [`say_text`]'s output: `(run, k, t_ns)`.
pub fn parse_say_text(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.split(' ');
    let run = parts.next()?.strip_prefix("r=")?.parse().ok()?;
    let k = parts.next()?.strip_prefix("b=")?.parse().ok()?;
    let t = parts.next()?.strip_prefix("t=")?.parse().ok()?;
    parts.next().is_none().then_some((run, k, t))
}

fn classify(payload: &[u8], room: &str, run: u64) -> Pushed {
    let Ok(frame) = serde_json::from_slice::<Frame<'_>>(payload) else {
        return Pushed::Other;
    };
    if frame.joined.as_deref() == Some(room) {
        return Pushed::Joined;
    }
    if frame.error.is_some() {
        return Pushed::Error;
    }
    match (frame.room.as_deref(), frame.text.as_deref()) {
        (Some(r), Some(text)) if r == room => match parse_say_text(text) {
            Some((r, k, t_ns)) if r == run => Pushed::Ours {
                k,
                t_ns,
                seq: frame.seq,
            },
            _ => Pushed::Foreign { seq: frame.seq },
        },
        _ => Pushed::Other,
    }
}

/// Every delivery of the run: one receive timestamp per (member, broadcast), plus counters.
/// Written lock-free by the members' reader tasks.
struct Board {
    epoch: std::time::Instant,
    broadcasts: usize,
    /// ns since `epoch` when the sender wrote broadcast k (0 = not sent).
    sent_ns: Vec<AtomicU64>,
    /// ns since `epoch` when member m got broadcast k, at `m * broadcasts + k` (0 = not yet).
    received_ns: Vec<AtomicU64>,
    joined: Vec<AtomicBool>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    corrupt: AtomicU64,
    foreign: AtomicU64,
    unexpected: AtomicU64,
    error_frames: AtomicU64,
    seq_gaps: AtomicU64,
    seq_repeats: AtomicU64,
    seq_absent: AtomicU64,
    dropped: AtomicU64,
    first_problem: Mutex<Option<String>>,
}

impl Board {
    fn new(members: usize, broadcasts: usize) -> Self {
        let atomics = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Board {
            epoch: std::time::Instant::now(),
            broadcasts,
            sent_ns: atomics(broadcasts),
            received_ns: atomics(members * broadcasts),
            joined: (0..members).map(|_| AtomicBool::new(false)).collect(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            error_frames: AtomicU64::new(0),
            seq_gaps: AtomicU64::new(0),
            seq_repeats: AtomicU64::new(0),
            seq_absent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            first_problem: Mutex::new(None),
        }
    }

    /// ns since the epoch, never 0 (0 marks "nothing yet").
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn problem(&self, what: impl FnOnce() -> String) {
        if let Ok(mut first) = self.first_problem.lock() {
            if first.is_none() {
                *first = Some(what());
            }
        }
    }

    /// Member `m` got broadcast `k` (claimed sent at `t_ns`) at `now`.
    fn record(&self, m: usize, k: u64, t_ns: u64, now: u64) {
        let Some(k) = usize::try_from(k).ok().filter(|&k| k < self.broadcasts) else {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.sent_ns[k].load(Ordering::Acquire) != t_ns {
            // The text does not carry the time the sender wrote down for this broadcast.
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            self.problem(|| format!("member {m}: broadcast {k} arrived with a send time that was never sent"));
            return;
        }
        let slot = &self.received_ns[m * self.broadcasts + k];
        if slot
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Checks one member's seq numbers run 1 apart (over every broadcast to the room, ours or
    /// not); the first one seen is the baseline.
    fn check_seq(&self, last: &mut Option<u64>, seq: Option<u64>, want_seq: bool) {
        let Some(seq) = seq else {
            if want_seq {
                self.seq_absent.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        match *last {
            Some(prev) if seq == prev + 1 => {}
            Some(prev) if seq > prev => {
                self.seq_gaps.fetch_add(seq - prev - 1, Ordering::Relaxed);
            }
            Some(_) => {
                self.seq_repeats.fetch_add(1, Ordering::Relaxed);
                return; // keep the higher baseline
            }
            None => {}
        }
        *last = Some(seq);
    }
}

/// Latency over the broadcasts or over every delivery (all in microseconds).
fn summarise(values: impl IntoIterator<Item = u64>) -> LatencySummary {
    let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3) else {
        return LatencySummary::default();
    };
    for v in values {
        h.saturating_record(v.clamp(1, 600_000_000));
    }
    LatencySummary::from_histogram(&h)
}

/// Everything `broadcast` measured: the JSON line.
#[derive(Debug, Serialize)]
pub struct BroadcastReport {
    pub scenario: &'static str,
    pub label: String,
    pub urls: Vec<String>,
    pub sender_url: String,
    pub protocol: RoomsProtocol,
    pub room: String,
    pub run_id: u64,
    pub members: usize,
    /// Members that joined, per URL (same order as `urls`).
    pub joined_per_url: Vec<u64>,
    pub joined: u64,
    pub connect_failures: u64,
    pub connect_failure_kinds: ConnectFailures,
    pub join_failures: u64,
    pub setup_s: f64,
    pub broadcasts: usize,
    pub sent: usize,
    pub interval_ms: u64,
    /// How long after the last send deliveries were waited for; later ones count as missing.
    pub drain_timeout_s: f64,
    pub threads: usize,
    /// Joined members × sent broadcasts.
    pub expected: u64,
    /// Distinct (member, broadcast) deliveries.
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Broadcasts that did not reach every joined member.
    pub incomplete_broadcasts: u64,
    pub seq_gaps: u64,
    pub seq_repeats: u64,
    /// Deliveries without `seq` although the protocol promises one.
    pub seq_absent: u64,
    /// Deliveries whose text did not match a broadcast of this run as sent.
    pub corrupt: u64,
    pub foreign: u64,
    pub error_frames: u64,
    pub unexpected_frames: u64,
    /// Members whose connection ended before the run was over.
    pub dropped: u64,
    pub first_problem: Option<String>,
    pub sender_error: Option<String>,
    /// Send → last member's delivery, one sample per broadcast.
    pub last_delivery: LatencySummary,
    /// Send → first member's delivery, one sample per broadcast.
    pub first_delivery: LatencySummary,
    /// Send → delivery, one sample per (member, broadcast).
    pub member_latency: LatencySummary,
    /// Seconds from the first send until the last delivery (or the drain deadline).
    pub window_s: f64,
    /// /proc/loadavg (1, 5, 15 min) at the first send: the shared machine's other load.
    pub load_average: Option<String>,
    /// Server CPU in the window per delivered broadcast (deliveries ÷ joined members), so a
    /// server still working off a backlog at the drain deadline is not flattered.
    pub cpu_us_per_broadcast: Option<f64>,
    /// Server CPU in the window per (member, broadcast) delivery.
    pub cpu_us_per_delivery: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub pids: Vec<PidDelta>,
    /// This load tool's CPU per delivered broadcast (it shares the machine's cores).
    pub client_cpu_us_per_broadcast: Option<f64>,
}

/// How one member's setup ended.
enum Setup {
    Joined(usize),
    ConnectFailed(ConnectFailure, anyhow::Error),
    NoJoin(String),
}

/// Runs the scenario and prints its report.
pub async fn run(args: BroadcastArgs, threads: usize) -> Result<BroadcastReport> {
    let targets = args.urls.iter().map(|u| Target::parse(u)).collect::<Result<Vec<_>>>()?;
    if targets.is_empty() {
        bail!("give at least one --url");
    }
    let sender_target = match &args.sender_url {
        Some(url) => Target::parse(url)?,
        None => targets[0].clone(),
    };
    if args.members == 0 {
        bail!("--members must be at least 1");
    }
    if args.members > MAX_MEMBERS {
        bail!(
            "{} members do not fit in one process: it may hold at most {MAX_MEMBERS} sockets (open-files \
             limit 20,000 per process). Run {} processes in the same --room, each with --members ≤ {MAX_MEMBERS} \
             and its own --source-ip-offset (0, 1, 2 …); each reports its own members against its own \
             broadcasts and counts the others' as foreign.",
            args.members,
            args.members.div_ceil(MAX_MEMBERS)
        );
    }
    limits::check_connections(args.members as u64 + 1)?;
    if args.broadcasts == 0 || args.broadcasts > MAX_BROADCASTS {
        bail!("--broadcasts must be between 1 and {MAX_BROADCASTS}");
    }
    if args.interval > 60_000 {
        bail!("--interval must be at most 60000 ms");
    }
    let schedule = Duration::from_millis(args.interval).saturating_mul(args.broadcasts as u32);
    if schedule.as_secs_f64() > MAX_SECONDS {
        bail!("--broadcasts × --interval must stay under {MAX_SECONDS} s");
    }
    let room_ok = (1..=64).contains(&args.room.len())
        && args
            .room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !room_ok {
        bail!("--room must be 1–64 letters, digits, '-', '_' or '.' (valid for both Switchyard and Channels)");
    }
    let settle = options::seconds("--settle", args.settle, 0.0, 600.0)?;
    let drain = options::seconds("--drain-timeout", args.drain_timeout, 0.0, MAX_SECONDS)?;
    let answer_timeout = options::seconds("--answer-timeout", args.answer_timeout, 0.1, 600.0)?;
    let connect_timeout = options::seconds("--connect-timeout", args.connect_timeout, 0.001, 120.0)?;
    let setup_timeout = options::seconds("--setup-timeout", args.setup_timeout, 0.1, MAX_SECONDS)?;
    let watched = Watched::new(&args.pids)?;
    let me = Watched::new(&[std::process::id()])?;
    let sources = SourceAddrs::for_connections(args.source_ip_offset, args.members as u64 + 1);
    let run_id = run_id();
    let board = Arc::new(Board::new(args.members, args.broadcasts));
    let room: Arc<str> = Arc::from(args.room.as_str());

    eprintln!(
        "broadcast: opening {} members over {} from {} and joining room {:?} …",
        args.members,
        args.urls.join(", "),
        sources.describe(),
        args.room
    );
    let setup_deadline = Instant::now() + setup_timeout;
    let (release_tx, release_rx) = watch::channel(false);
    let (setup_tx, mut setup_rx) = mpsc::unbounded_channel::<Setup>();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let join_message = Arc::new(serde_json::json!({ "join": &*room }).to_string().into_bytes());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut not_attempted = 0;
    for i in 0..args.members {
        let Ok(Ok(permit)) = tokio::time::timeout_at(setup_deadline, permits.clone().acquire_owned()).await else {
            not_attempted = (args.members - i) as u64;
            break;
        };
        let member = Member {
            index: i,
            target: targets[i % targets.len()].clone(),
            source: sources.ip_for(i as u64),
            connect_timeout,
            answer_timeout,
            join_message: join_message.clone(),
            room: room.clone(),
            run_id,
            protocol: args.protocol,
            board: board.clone(),
            setup_tx: setup_tx.clone(),
            release: release_rx.clone(),
        };
        tasks.spawn(member.run(permit));
    }
    drop(setup_tx);

    let mut failures = ConnectFailures {
        not_attempted,
        ..ConnectFailures::default()
    };
    let mut joined_per_url = vec![0u64; targets.len()];
    let mut join_failures = 0u64;
    let mut first_join_failure = None;
    let mut done = not_attempted;
    let mut next_progress = 2000;
    while done < args.members as u64 {
        let Some(setup) = setup_rx.recv().await else { break };
        match setup {
            Setup::Joined(i) => joined_per_url[i % targets.len()] += 1,
            Setup::ConnectFailed(kind, err) => failures.add(kind, &err),
            Setup::NoJoin(e) => {
                join_failures += 1;
                first_join_failure.get_or_insert(e);
            }
        }
        done += 1;
        if done >= next_progress {
            eprintln!("broadcast: {done}/{} members set up …", args.members);
            next_progress += 2000;
        }
    }
    let setup_s = started.elapsed().as_secs_f64();
    let joined: u64 = joined_per_url.iter().sum();
    if let Some(e) = first_join_failure {
        board.problem(|| format!("join failed: {e}"));
    }
    if joined == 0 {
        let _ = release_tx.send(true);
        tasks.abort_all();
        bail!(
            "no member joined: connect failures {}, join failures {join_failures}{}",
            failures.human(),
            board
                .first_problem
                .lock()
                .ok()
                .and_then(|p| p.clone())
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
    }
    eprintln!(
        "broadcast: {joined} members joined in {setup_s:.1} s ({}); sending {} broadcasts every {} ms …",
        joined_per_url
            .iter()
            .zip(&args.urls)
            .map(|(n, u)| format!("{n} on {u}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.broadcasts,
        args.interval
    );

    // The sender: one more connection, not a member (on the first URL unless --sender-url).
    let (sent, sender_error, window_s, pids_delta, client_cpu, load_average) = {
        let sender_ws = client::connect(&sender_target, sources.ip_for(args.members as u64), connect_timeout).await;
        match sender_ws {
            Err((_, err)) => (
                0,
                Some(format!("sender could not connect: {err:#}")),
                0.0,
                None,
                0,
                None,
            ),
            Ok(ws) => {
                let sender_problem = Arc::new(Mutex::new(None::<String>));
                let on_text = {
                    let problem = sender_problem.clone();
                    let board = board.clone();
                    move |payload: &[u8]| {
                        // The sender is no member: anything it gets is an error or noise.
                        board.unexpected.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut p) = problem.lock() {
                            if p.is_none() {
                                *p = Some(format!("sender got {}", String::from_utf8_lossy(payload)));
                            }
                        }
                    }
                };
                let mut sender = Duplex::start(ws, on_text);
                let outcome = send_all(
                    &mut sender,
                    &board,
                    &args,
                    &room,
                    run_id,
                    settle,
                    drain,
                    joined,
                    (&watched, &me),
                )
                .await;
                sender.close(Duration::from_secs(2)).await;
                let problem = sender_problem.lock().ok().and_then(|p| p.clone());
                match outcome {
                    Ok(o) => (
                        o.sent,
                        problem,
                        o.window_s,
                        Some(o.pids),
                        o.client_cpu_us,
                        o.load_average,
                    ),
                    Err((o, e)) => (
                        o.sent,
                        Some(format!("{e:#}")),
                        o.window_s,
                        Some(o.pids),
                        o.client_cpu_us,
                        o.load_average,
                    ),
                }
            }
        }
    };

    let _ = release_tx.send(true);
    // Closing is concurrent and each close waits at most 2 s; bound the whole join anyway.
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    let figures = Figures::compute(&board, args.members, sent);
    let pids = pids_delta.unwrap_or_default();
    let server_cpu: u64 = pids.iter().map(|d| d.cpu_us).sum();
    let delivered = board.delivered.load(Ordering::Relaxed);
    let delivered_broadcasts = delivered as f64 / joined as f64;
    let per_broadcast = |cpu: u64| (delivered > 0).then(|| cpu as f64 / delivered_broadcasts);
    let report = BroadcastReport {
        scenario: "broadcast",
        label: args.label.clone(),
        urls: args.urls.clone(),
        sender_url: sender_target.url.clone(),
        protocol: args.protocol,
        room: args.room.clone(),
        run_id,
        members: args.members,
        joined_per_url,
        joined,
        connect_failures: failures.total(),
        connect_failure_kinds: failures,
        join_failures,
        setup_s,
        broadcasts: args.broadcasts,
        sent,
        interval_ms: args.interval,
        drain_timeout_s: drain.as_secs_f64(),
        threads,
        expected: figures.expected,
        delivered: board.delivered.load(Ordering::Relaxed),
        missing: figures.expected.saturating_sub(board.delivered.load(Ordering::Relaxed)),
        duplicates: board.duplicates.load(Ordering::Relaxed),
        incomplete_broadcasts: figures.incomplete,
        seq_gaps: board.seq_gaps.load(Ordering::Relaxed),
        seq_repeats: board.seq_repeats.load(Ordering::Relaxed),
        seq_absent: board.seq_absent.load(Ordering::Relaxed),
        corrupt: board.corrupt.load(Ordering::Relaxed),
        foreign: board.foreign.load(Ordering::Relaxed),
        error_frames: board.error_frames.load(Ordering::Relaxed),
        unexpected_frames: board.unexpected.load(Ordering::Relaxed),
        dropped: board.dropped.load(Ordering::Relaxed),
        first_problem: board.first_problem.lock().ok().and_then(|p| p.clone()),
        sender_error,
        last_delivery: figures.last,
        first_delivery: figures.first,
        member_latency: figures.member,
        window_s,
        load_average,
        cpu_us_per_broadcast: if watched.is_empty() {
            None
        } else {
            per_broadcast(server_cpu)
        },
        cpu_us_per_delivery: (!watched.is_empty() && delivered > 0).then(|| server_cpu as f64 / delivered as f64),
        server_cpu_pct: (!watched.is_empty() && window_s > 0.0).then(|| server_cpu as f64 / window_s / 1e4),
        pids,
        client_cpu_us_per_broadcast: per_broadcast(client_cpu),
    };
    report::emit(&human(&report), &report, args.json)?;
    Ok(report)
}

/// A run id unlikely to repeat: the wall clock in ns mixed with the PID.
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 40)) & ((1 << 53) - 1)
}

/// What the sender did.
struct Sent {
    sent: usize,
    window_s: f64,
    pids: Vec<PidDelta>,
    client_cpu_us: u64,
    load_average: Option<String>,
}

/// Sends every broadcast on schedule, then waits until every joined member has every one (or
/// the drain deadline); samples CPU from the first send to that point.
#[allow(clippy::too_many_arguments)]
async fn send_all(
    sender: &mut Duplex,
    board: &Board,
    args: &BroadcastArgs,
    room: &str,
    run_id: u64,
    settle: Duration,
    drain: Duration,
    joined: u64,
    (watched, me): (&Watched, &Watched),
) -> std::result::Result<Sent, (Sent, anyhow::Error)> {
    let interval = Duration::from_millis(args.interval);
    let start = Instant::now() + settle;
    let mut sent = Sent {
        sent: 0,
        window_s: 0.0,
        pids: Vec::new(),
        client_cpu_us: 0,
        load_average: None,
    };
    if let Err(e) = sender.service_until(tokio::time::sleep_until(start)).await {
        return Err((sent, e));
    }
    let before = (watched.sample(), me.sample(), Instant::now());
    sent.load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let mut failure = None;
    for k in 0..args.broadcasts {
        let intended = start + interval.saturating_mul(k as u32);
        if let Err(e) = sender.service_until(tokio::time::sleep_until(intended)).await {
            failure = Some(e);
            break;
        }
        let t_ns = board.now_ns();
        board.sent_ns[k].store(t_ns, Ordering::Release);
        let text = say_text(run_id, k as u64, t_ns);
        let message = serde_json::json!({ "say": text, "room": room })
            .to_string()
            .into_bytes();
        if let Err(e) = sender.send_text(message).await {
            board.sent_ns[k].store(0, Ordering::Release);
            failure = Some(e);
            break;
        }
        sent.sent += 1;
    }
    let expected = joined * sent.sent as u64;
    let deadline = Instant::now() + drain;
    let everything_in = async {
        while board.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if let Err(e) = sender.service_until(everything_in).await {
        failure.get_or_insert(e);
        // The sender's connection ended; the members may still be receiving.
        while board.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let after = (watched.sample(), me.sample(), Instant::now());
    sent.window_s = after.2.duration_since(before.2).as_secs_f64();
    sent.pids = watched.delta(&before.0, &after.0);
    sent.client_cpu_us = me.delta(&before.1, &after.1).iter().map(|d| d.cpu_us).sum();
    match failure {
        None => Ok(sent),
        Some(e) => Err((sent, e)),
    }
}

/// The latency figures, computed from the board once the run is over.
struct Figures {
    expected: u64,
    incomplete: u64,
    last: LatencySummary,
    first: LatencySummary,
    member: LatencySummary,
}

impl Figures {
    fn compute(board: &Board, members: usize, sent: usize) -> Figures {
        let joined: Vec<usize> = (0..members)
            .filter(|&m| board.joined[m].load(Ordering::Relaxed))
            .collect();
        let mut last = Vec::with_capacity(sent);
        let mut first = Vec::with_capacity(sent);
        let mut all = Vec::with_capacity(joined.len() * sent);
        let mut incomplete = 0;
        let mut expected = 0;
        for k in 0..sent {
            let sent_at = board.sent_ns[k].load(Ordering::Acquire);
            if sent_at == 0 {
                continue;
            }
            expected += joined.len() as u64;
            let mut got = 0;
            let (mut lo, mut hi) = (u64::MAX, 0);
            for &m in &joined {
                let at = board.received_ns[m * board.broadcasts + k].load(Ordering::Relaxed);
                if at == 0 {
                    continue;
                }
                got += 1;
                let us = at.saturating_sub(sent_at) / 1_000;
                all.push(us);
                lo = lo.min(us);
                hi = hi.max(us);
            }
            if got < joined.len() {
                incomplete += 1;
            }
            if got > 0 {
                last.push(hi);
                first.push(lo);
            }
        }
        Figures {
            expected,
            incomplete,
            last: summarise(last),
            first: summarise(first),
            member: summarise(all),
        }
    }
}

/// One member connection's parameters and reporting handles.
struct Member {
    index: usize,
    target: Target,
    source: Option<IpAddr>,
    connect_timeout: Duration,
    answer_timeout: Duration,
    join_message: Arc<Vec<u8>>,
    room: Arc<str>,
    run_id: u64,
    protocol: RoomsProtocol,
    board: Arc<Board>,
    setup_tx: mpsc::UnboundedSender<Setup>,
    release: watch::Receiver<bool>,
}

impl Member {
    async fn run(mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        let ws = match client::connect(&self.target, self.source, self.connect_timeout).await {
            Ok(ws) => ws,
            Err((kind, err)) => {
                drop(permit);
                let _ = self.setup_tx.send(Setup::ConnectFailed(kind, err));
                return;
            }
        };
        let joined = Arc::new(Notify::new());
        let on_text = {
            let joined = joined.clone();
            let board = self.board.clone();
            let room = self.room.clone();
            let (m, run_id, want_seq) = (self.index, self.run_id, self.protocol.has_seq());
            let mut last_seq = None;
            move |payload: &[u8]| {
                // The receive time first: parsing is part of the client's cost, not the server's.
                let now = board.now_ns();
                match classify(payload, &room, run_id) {
                    Pushed::Ours { k, t_ns, seq } => {
                        board.check_seq(&mut last_seq, seq, want_seq);
                        board.record(m, k, t_ns, now);
                    }
                    Pushed::Foreign { seq } => {
                        board.check_seq(&mut last_seq, seq, want_seq);
                        board.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                    Pushed::Joined => joined.notify_one(),
                    Pushed::Error => {
                        board.error_frames.fetch_add(1, Ordering::Relaxed);
                        board.problem(|| format!("member {m} got {}", String::from_utf8_lossy(payload)));
                    }
                    Pushed::Other => {
                        board.unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        };
        let mut duplex = Duplex::start(ws, on_text);
        let join = async {
            duplex.send_text(self.join_message.to_vec()).await?;
            match duplex
                .service_until(tokio::time::timeout(self.answer_timeout, joined.notified()))
                .await?
            {
                Ok(()) => Ok(()),
                Err(_) => bail!("no {{\"joined\"}} within {:?}", self.answer_timeout),
            }
        };
        let outcome: Result<()> = join.await;
        drop(permit);
        if let Err(e) = outcome {
            let _ = self.setup_tx.send(Setup::NoJoin(format!("{e:#}")));
            duplex.abort();
            return;
        }
        self.board.joined[self.index].store(true, Ordering::Relaxed);
        let _ = self.setup_tx.send(Setup::Joined(self.index));
        drop(self.setup_tx);
        let release = &mut self.release;
        // A dropped sender also means "release" (the coordinator is gone).
        let released = duplex
            .service_until(async move {
                let _ = release.wait_for(|r| *r).await;
            })
            .await;
        match released {
            Ok(()) => {
                duplex.close(Duration::from_secs(2)).await;
            }
            Err(e) => {
                self.board.dropped.fetch_add(1, Ordering::Relaxed);
                self.board.problem(|| format!("member {} dropped: {e:#}", self.index));
                duplex.abort();
            }
        }
    }
}

fn human(r: &BroadcastReport) -> String {
    let mut out = String::new();
    let label = if r.label.is_empty() {
        String::new()
    } else {
        format!(" [{}]", r.label)
    };
    out.push_str(&format!(
        "broadcast{label} — room {:?}, {:?}, {}\n",
        r.room,
        r.protocol,
        r.urls.join(" + ")
    ));
    out.push_str(&format!(
        "  members       {}/{} joined in {:.1} s (per URL {:?}); connect failures {}; join failures {}; dropped {}\n",
        r.joined,
        r.members,
        r.setup_s,
        r.joined_per_url,
        r.connect_failure_kinds.human(),
        r.join_failures,
        r.dropped
    ));
    out.push_str(&format!(
        "  broadcasts    {}/{} sent every {} ms from {}, {} client threads{}\n",
        r.sent,
        r.broadcasts,
        r.interval_ms,
        r.sender_url,
        r.threads,
        r.sender_error
            .as_ref()
            .map(|e| format!(" (sender: {e})"))
            .unwrap_or_default()
    ));
    if let Some(load) = &r.load_average {
        out.push_str(&format!("  machine       load average {load} at the first send\n"));
    }
    out.push_str(&format!("  last member   {}\n", r.last_delivery.human()));
    out.push_str(&format!("  first member  {}\n", r.first_delivery.human()));
    out.push_str(&format!("  every member  {}\n", r.member_latency.human()));
    out.push_str(&format!(
        "  deliveries    {}/{} (missing {}, duplicates {}, incomplete broadcasts {}); seq gaps {}, repeats {}, absent {}; \
         corrupt {}, foreign {}, error frames {}, unexpected {}\n",
        r.delivered,
        r.expected,
        r.missing,
        r.duplicates,
        r.incomplete_broadcasts,
        r.seq_gaps,
        r.seq_repeats,
        r.seq_absent,
        r.corrupt,
        r.foreign,
        r.error_frames,
        r.unexpected_frames
    ));
    if let Some(p) = &r.first_problem {
        out.push_str(&format!("  first problem {p}\n"));
    }
    if let Some(cpu) = r.cpu_us_per_broadcast {
        let total: u64 = r.pids.iter().map(|p| p.cpu_us).sum();
        let per_pid: Vec<String> = r
            .pids
            .iter()
            .map(|p| {
                let share = p.cpu_us as f64 / total.max(1) as f64;
                format!("{} {}: {}", p.name, p.pid, fmt_us((cpu * share).round() as u64))
            })
            .collect();
        let sys: u64 = r.pids.iter().map(|p| p.sys_cpu_us).sum();
        out.push_str(&format!(
            "  server CPU    {} per delivered broadcast ({:.1} µs per delivery), {:.0}% of it in the kernel \
             ({:.0}% of one core over {:.1} s) — {}\n",
            fmt_us(cpu.round() as u64),
            r.cpu_us_per_delivery.unwrap_or(0.0),
            100.0 * sys as f64 / total.max(1) as f64,
            r.server_cpu_pct.unwrap_or(0.0),
            r.window_s,
            per_pid.join(", ")
        ));
    }
    if let Some(cpu) = r.client_cpu_us_per_broadcast {
        out.push_str(&format!(
            "  client CPU    {} per delivered broadcast (this load tool)\n",
            fmt_us(cpu.round() as u64)
        ));
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn say_text_round_trips() {
        let t = say_text(42, 7, 123_456_789);
        assert_eq!(parse_say_text(&t), Some((42, 7, 123_456_789)));
        assert_eq!(parse_say_text("r=1 b=2"), None);
        assert_eq!(parse_say_text("r=1 b=2 t=3 x"), None);
        assert_eq!(parse_say_text("hello"), None);
    }

    #[test]
    fn classifies_frames() {
        let ours = br#"{"room":"bench","text":"r=9 b=3 t=100","seq":17}"#;
        assert_eq!(
            classify(ours, "bench", 9),
            Pushed::Ours {
                k: 3,
                t_ns: 100,
                seq: Some(17)
            }
        );
        assert_eq!(classify(ours, "bench", 8), Pushed::Foreign { seq: Some(17) });
        assert_eq!(classify(ours, "other", 9), Pushed::Other);
        assert_eq!(classify(br#"{"joined":"bench"}"#, "bench", 9), Pushed::Joined);
        assert_eq!(classify(br#"{"error":"nope"}"#, "bench", 9), Pushed::Error);
        assert_eq!(classify(b"not json", "bench", 9), Pushed::Other);
        // Key order and escapes do not matter.
        let escaped = br#"{"seq":1,"text":"r=9 b=0 t=5","room":"ben\u0063h"}"#;
        assert_eq!(
            classify(escaped, "bench", 9),
            Pushed::Ours {
                k: 0,
                t_ns: 5,
                seq: Some(1)
            }
        );
    }

    #[test]
    fn board_counts_misses_duplicates_and_seq_breaks() {
        let b = Board::new(2, 3);
        for k in 0..3 {
            b.sent_ns[k].store(10 + k as u64, Ordering::Release);
        }
        b.joined[0].store(true, Ordering::Relaxed);
        b.joined[1].store(true, Ordering::Relaxed);
        b.record(0, 0, 10, 1_010_000);
        b.record(0, 0, 10, 1_020_000); // duplicate
        b.record(0, 1, 11, 2_011_000);
        b.record(0, 2, 12, 3_012_000);
        b.record(1, 0, 10, 5_010_000);
        b.record(1, 2, 99, 5_020_000); // wrong send time
        b.record(1, 7, 10, 5_020_000); // no such broadcast
        assert_eq!(b.delivered.load(Ordering::Relaxed), 4);
        assert_eq!(b.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(b.corrupt.load(Ordering::Relaxed), 2);
        let f = Figures::compute(&b, 2, 3);
        assert_eq!(f.expected, 6);
        assert_eq!(f.incomplete, 2);
        assert_eq!(f.last.samples, 3);
        assert!((5_000..=5_020).contains(&f.last.max_us), "{:?}", f.last);
        assert_eq!(f.member.samples, 4);

        let mut last = None;
        for seq in [5, 6, 8, 8, 9] {
            b.check_seq(&mut last, Some(seq), true);
        }
        b.check_seq(&mut last, None, true);
        assert_eq!(b.seq_gaps.load(Ordering::Relaxed), 1);
        assert_eq!(b.seq_repeats.load(Ordering::Relaxed), 1);
        assert_eq!(b.seq_absent.load(Ordering::Relaxed), 1);
    }
}
