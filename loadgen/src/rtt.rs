//! The `rtt` scenario: message round trips over N connections, closed loop or at a fixed rate.
//!
//! Closed loop (no `--rate`): each connection sends, waits for its `{"count": n}`, sends again.
//! Fixed rate (`--rate R`): each connection sends on a schedule of R messages/s whether or not
//! answers have come back, and latency is measured from the *intended* send time, so a stalled
//! server shows up as latency instead of hiding as fewer samples (coordinated omission).
//! Counts must be 1, 2, 3 … per connection; anything else is reported as an order violation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::Ws;
use crate::duplex::Duplex;
use crate::fleet::{self, ConnectFailures};
use crate::limits;
use crate::options::{self, CommonArgs};
use crate::procstat::{PidDelta, Watched};
use crate::protocol::{self, Incoming, OrderCheck};
use crate::report::{self, fmt_us, LatencySummary, Recorder};
use crate::source::SourceAddrs;

/// `rtt` options.
#[derive(Args, Debug, Clone)]
pub struct RttArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Concurrent connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,

    /// Measured window, seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Warm-up before the measured window, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Messages per second per connection on a fixed schedule; omit for closed loop.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Size of each text message in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,

    /// After the window, seconds to wait for answers still outstanding.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,

    /// More chat-counter URLs (repeatable): the connections take `--url` and these in turn,
    /// e.g. several channels on several interfaces in one run.
    #[arg(long = "also-url", value_name = "URL")]
    pub also_urls: Vec<String>,
}

/// The timeline every connection follows.
#[derive(Debug, Clone, Copy)]
struct Plan {
    t0: Instant,
    start: Instant,
    end: Instant,
    drain_deadline: Instant,
    rate: Option<f64>,
    connections: usize,
}

impl Plan {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

#[derive(Default)]
struct ConnState {
    /// Send times (intended, for fixed rate) of messages not yet answered, oldest first.
    outstanding: VecDeque<Instant>,
    order: OrderCheck,
    replies: u64,
    replies_in_window: u64,
    unsolicited: u64,
}

struct Conn {
    state: Mutex<ConnState>,
    answered: Notify,
}

impl Conn {
    fn push(&self, t: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.outstanding.push_back(t);
        }
    }

    fn outstanding(&self) -> usize {
        self.state.lock().map_or(0, |s| s.outstanding.len())
    }

    async fn all_answered(&self) {
        loop {
            if self.outstanding() == 0 {
                return;
            }
            self.answered.notified().await;
        }
    }
}

#[derive(Debug, Default)]
struct ConnOutcome {
    sent: u64,
    unanswered: u64,
    error: Option<String>,
}

/// Everything `rtt` measured: the JSON line.
#[derive(Debug, Serialize)]
pub struct RttReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub mode: &'static str,
    pub connections: usize,
    pub connected: usize,
    pub connect_failures: u64,
    pub connect_failure_kinds: ConnectFailures,
    pub rate: Option<f64>,
    pub offered_msgs_per_sec: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub payload_bytes: usize,
    pub threads: usize,
    pub msgs: u64,
    pub msgs_per_sec: f64,
    #[serde(flatten)]
    pub latency: LatencySummary,
    pub sent_total: u64,
    pub answered_total: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub unanswered: u64,
    pub order_violations: u64,
    pub unsolicited: u64,
    pub cpu_us_per_msg: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub pids: Vec<PidCpu>,
    pub client_cpu_us_per_msg: Option<f64>,
}

/// One server process's share of the CPU.
#[derive(Debug, Serialize)]
pub struct PidCpu {
    pub pid: u32,
    pub name: String,
    pub cpu_us: u64,
    /// Of `cpu_us`, the part spent in the kernel (syscalls, scheduling, the TCP stack).
    pub sys_cpu_us: u64,
    pub cpu_us_per_msg: Option<f64>,
}

/// Runs the scenario and prints its report.
pub async fn run(args: RttArgs, threads: usize) -> Result<RttReport> {
    let target = args.common.target()?;
    let mut targets = vec![target.clone()];
    for url in &args.also_urls {
        targets.push(crate::target::Target::parse(url)?);
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    limits::check_connections(args.connections as u64)?;
    let duration = options::seconds("--duration", args.duration, 0.1, options::MAX_SECONDS)?;
    let warmup = options::seconds("--warmup", args.warmup, 0.0, 600.0)?;
    let drain = options::seconds("--drain-timeout", args.drain_timeout, 0.0, 120.0)?;
    let connect_timeout = args.common.run.connect_timeout()?;
    let setup_deadline = args.common.run.setup_deadline()?;
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0 && rate <= 100_000.0) {
            bail!("--rate must be > 0 and ≤ 100000 messages/s per connection, got {rate}");
        }
    }
    if args.payload_bytes > 1 << 20 {
        bail!("--payload-bytes must be at most 1 MiB");
    }
    let watched = Watched::new(&args.common.run.pids)?;
    let me = Watched::new(&[std::process::id()])?;
    let sources = SourceAddrs::for_connections(args.common.run.source_ip_offset, args.connections as u64);

    eprintln!(
        "rtt: opening {} connections to {} from {} …",
        args.connections,
        target.url,
        sources.describe()
    );
    let (open, failures) = fleet::open_all(
        &targets,
        args.connections,
        sources,
        args.common.run.connect_concurrency,
        connect_timeout,
        setup_deadline,
    )
    .await;
    let connected = open.len();
    if connected == 0 {
        bail!("no connection could be opened: {}", failures.human());
    }
    eprintln!(
        "rtt: {connected} connected; warm-up {:.1} s, measuring {:.1} s …",
        warmup.as_secs_f64(),
        duration.as_secs_f64()
    );

    let t0 = Instant::now() + Duration::from_millis(50);
    let plan = Plan {
        t0,
        start: t0 + warmup,
        end: t0 + warmup + duration,
        drain_deadline: t0 + warmup + duration + drain,
        rate: args.rate,
        connections: connected,
    };
    let recorder = Arc::new(Recorder::new(threads.max(1) * 8));

    let sampler = {
        let watched = watched.clone();
        let me = me.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(plan.start).await;
            let before = (watched.sample(), me.sample(), Instant::now());
            tokio::time::sleep_until(plan.end).await;
            let after = (watched.sample(), me.sample(), Instant::now());
            (before, after)
        })
    };

    let message = protocol::message(args.payload_bytes);
    let mut conns = Vec::with_capacity(connected);
    let mut set = JoinSet::new();
    for (slot, (_number, ws)) in open.into_iter().enumerate() {
        let conn = Arc::new(Conn {
            state: Mutex::new(ConnState::default()),
            answered: Notify::new(),
        });
        conns.push(conn.clone());
        let recorder = recorder.clone();
        let message = message.clone();
        set.spawn(drive(slot, ws, conn, plan, recorder, message));
    }
    let mut outcomes = Vec::with_capacity(connected);
    while let Some(joined) = set.join_next().await {
        outcomes.push(joined.unwrap_or_else(|e| ConnOutcome {
            error: Some(format!("connection task failed: {e}")),
            ..ConnOutcome::default()
        }));
    }
    let ((pids_before, me_before, at_start), (pids_after, me_after, at_end)) = sampler.await?;

    let mut msgs = 0;
    let mut answered_total = 0;
    let mut order_violations = 0;
    let mut unsolicited = 0;
    for conn in &conns {
        if let Ok(s) = conn.state.lock() {
            msgs += s.replies_in_window;
            answered_total += s.replies;
            order_violations += s.order.violations;
            unsolicited += s.unsolicited;
        }
    }
    let sent_total: u64 = outcomes.iter().map(|o| o.sent).sum();
    let unanswered: u64 = outcomes.iter().map(|o| o.unanswered).sum();
    let errors = outcomes.iter().filter(|o| o.error.is_some()).count() as u64;
    let first_error = outcomes.iter().find_map(|o| o.error.clone());

    let window = at_end.duration_since(at_start).as_secs_f64().max(1e-9);
    let per_msg = |cpu_us: u64| (msgs > 0).then(|| cpu_us as f64 / msgs as f64);
    let deltas: Vec<PidDelta> = watched.delta(&pids_before, &pids_after);
    let server_cpu: u64 = deltas.iter().map(|d| d.cpu_us).sum();
    let client_cpu: u64 = me.delta(&me_before, &me_after).iter().map(|d| d.cpu_us).sum();

    let report = RttReport {
        scenario: "rtt",
        label: args.common.run.label.clone(),
        url: std::iter::once(target.url.clone())
            .chain(args.also_urls.iter().cloned())
            .collect::<Vec<_>>()
            .join(" + "),
        mode: if args.rate.is_some() {
            "fixed-rate"
        } else {
            "closed-loop"
        },
        connections: args.connections,
        connected,
        connect_failures: failures.total(),
        connect_failure_kinds: failures,
        rate: args.rate,
        offered_msgs_per_sec: args.rate.map(|r| r * connected as f64),
        duration_s: duration.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        payload_bytes: args.payload_bytes,
        threads,
        msgs,
        msgs_per_sec: msgs as f64 / window,
        latency: recorder.summary(),
        sent_total,
        answered_total,
        errors,
        first_error,
        unanswered,
        order_violations,
        unsolicited,
        cpu_us_per_msg: if watched.is_empty() { None } else { per_msg(server_cpu) },
        server_cpu_pct: (!watched.is_empty()).then(|| server_cpu as f64 / window / 1e4),
        pids: deltas
            .iter()
            .map(|d| PidCpu {
                pid: d.pid,
                name: d.name.clone(),
                cpu_us: d.cpu_us,
                sys_cpu_us: d.sys_cpu_us,
                cpu_us_per_msg: per_msg(d.cpu_us),
            })
            .collect(),
        client_cpu_us_per_msg: per_msg(client_cpu),
    };
    report::emit(&human(&report), &report, args.common.run.json)?;
    Ok(report)
}

/// One connection's whole run.
async fn drive(
    slot: usize,
    ws: Ws,
    conn: Arc<Conn>,
    plan: Plan,
    recorder: Arc<Recorder>,
    message: Vec<u8>,
) -> ConnOutcome {
    let on_text = {
        let conn = conn.clone();
        move |payload: &[u8]| {
            let Incoming::Count(count) = protocol::classify(payload) else {
                return;
            };
            let now = Instant::now();
            if let Ok(mut s) = conn.state.lock() {
                s.order.observe(count);
                s.replies += 1;
                match s.outstanding.pop_front() {
                    Some(sent_at) if plan.in_window(sent_at) => {
                        let micros = now.duration_since(sent_at).as_micros();
                        recorder.record(slot, u64::try_from(micros).unwrap_or(u64::MAX));
                    }
                    Some(_) => {}
                    None => s.unsolicited += 1,
                }
                if plan.in_window(now) {
                    s.replies_in_window += 1;
                }
            }
            conn.answered.notify_one();
        }
    };
    let mut duplex = Duplex::start(ws, on_text);
    let mut outcome = ConnOutcome::default();
    let result = match plan.rate {
        None => closed_loop(&mut duplex, &conn, &plan, &message, &mut outcome).await,
        Some(rate) => fixed_rate(&mut duplex, &conn, &plan, rate, slot, &message, &mut outcome).await,
    };
    outcome.unanswered = conn.outstanding() as u64;
    match result {
        Ok(()) => {
            duplex.close(Duration::from_secs(2)).await;
        }
        Err(e) => {
            outcome.error = Some(format!("{e:#}"));
            duplex.abort();
        }
    }
    outcome
}

async fn closed_loop(
    duplex: &mut Duplex,
    conn: &Conn,
    plan: &Plan,
    message: &[u8],
    outcome: &mut ConnOutcome,
) -> Result<()> {
    duplex.service_until(tokio::time::sleep_until(plan.t0)).await?;
    loop {
        let now = Instant::now();
        if now >= plan.end {
            return Ok(());
        }
        conn.push(now);
        duplex.send_text(message.to_vec()).await?;
        outcome.sent += 1;
        let answered = duplex
            .service_until(tokio::time::timeout_at(plan.drain_deadline, conn.all_answered()))
            .await?;
        if answered.is_err() {
            return Ok(()); // counted as unanswered
        }
    }
}

async fn fixed_rate(
    duplex: &mut Duplex,
    conn: &Conn,
    plan: &Plan,
    rate: f64,
    slot: usize,
    message: &[u8],
    outcome: &mut ConnOutcome,
) -> Result<()> {
    let period = Duration::from_secs_f64(1.0 / rate);
    // Spread the connections' schedules evenly over one period to avoid lock-step bursts.
    let phase = period.mul_f64(slot as f64 / plan.connections.max(1) as f64);
    let mut k: u32 = 0;
    loop {
        let intended = plan.t0 + phase + period.mul_f64(f64::from(k));
        if intended >= plan.end {
            break;
        }
        duplex.service_until(tokio::time::sleep_until(intended)).await?;
        conn.push(intended);
        duplex.send_text(message.to_vec()).await?;
        outcome.sent += 1;
        k = k.saturating_add(1);
    }
    // Errors here only mean the drain deadline passed; the rest counts as unanswered.
    let _ = duplex
        .service_until(tokio::time::timeout_at(plan.drain_deadline, conn.all_answered()))
        .await?;
    Ok(())
}

fn human(r: &RttReport) -> String {
    let mut out = String::new();
    let label = report::label_tag(&r.label);
    out.push_str(&format!("rtt {}{} — {}\n", r.mode, label, r.url));
    out.push_str(&format!(
        "  connections   {}/{} open, connect failures {}\n",
        r.connected,
        r.connections,
        r.connect_failure_kinds.human()
    ));
    if let Some(rate) = r.rate {
        out.push_str(&format!(
            "  schedule      {rate} msg/s per connection = {:.0} msg/s offered\n",
            r.offered_msgs_per_sec.unwrap_or(0.0)
        ));
    }
    out.push_str(&format!(
        "  window        {:.1} s after {:.1} s warm-up, {} B messages, {} client threads\n",
        r.duration_s, r.warmup_s, r.payload_bytes, r.threads
    ));
    out.push_str(&format!(
        "  throughput    {} answers in window = {:.1} msg/s\n",
        r.msgs, r.msgs_per_sec
    ));
    out.push_str(&format!("  latency       {}\n", r.latency.human()));
    out.push_str(&format!(
        "  correctness   order violations {}, unsolicited {}, unanswered {}, failed connections {}{}\n",
        r.order_violations,
        r.unsolicited,
        r.unanswered,
        r.errors,
        r.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    ));
    if let Some(cpu) = r.cpu_us_per_msg {
        let per_pid: Vec<String> = r
            .pids
            .iter()
            .map(|p| {
                format!(
                    "{} {}: {}",
                    p.name,
                    p.pid,
                    fmt_us(p.cpu_us_per_msg.unwrap_or(0.0).round() as u64)
                )
            })
            .collect();
        out.push_str(&format!(
            "  server CPU    {:.1} µs/msg ({:.0}% of one core) — {}\n",
            cpu,
            r.server_cpu_pct.unwrap_or(0.0),
            per_pid.join(", ")
        ));
    }
    if let Some(cpu) = r.client_cpu_us_per_msg {
        out.push_str(&format!("  client CPU    {cpu:.1} µs/msg (this load tool)\n"));
    }
    out.trim_end().to_string()
}
