//! The `connect-storm` scenario: how many WebSocket connections per second a server accepts.
//!
//! `--concurrency` workers open connections back to back for `--duration` seconds. By default
//! each connection is closed again right away (with a proper close handshake, so the server
//! keeps the TIME_WAIT); `--keep-open` holds them all until the end instead (bounded by the
//! open-files limit); `--echo` also does one message round trip per connection, proving the
//! application — not only the HTTP layer — accepted it. Source addresses rotate over
//! `--source-ips` loopback addresses so ephemeral ports do not run out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use crate::client;
use crate::duplex::Duplex;
use crate::fleet::ConnectFailures;
use crate::limits;
use crate::options::{self, CommonArgs};
use crate::procstat::{PidDelta, Watched};
use crate::protocol::{self, Incoming};
use crate::report::{self, LatencySummary, Recorder};
use crate::source::SourceAddrs;
use crate::target::Target;

/// `connect-storm` options.
#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Seconds to keep opening connections.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,

    /// Keep every connection open until the end instead of closing it at once.
    #[arg(long)]
    pub keep_open: bool,

    /// Do one message round trip on each connection before counting it.
    #[arg(long)]
    pub echo: bool,

    /// Stop after this many connections (default: no cap, or the open-files limit with
    /// --keep-open).
    #[arg(long)]
    pub max_connections: Option<u64>,

    /// Loopback source addresses to rotate over.
    #[arg(long, default_value_t = 32)]
    pub source_ips: u32,
}

/// Everything `connect-storm` measured: the JSON line.
#[derive(Debug, Serialize)]
pub struct StormReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub mode: &'static str,
    pub echo: bool,
    pub concurrency: usize,
    pub duration_s: f64,
    pub threads: usize,
    pub opened: u64,
    pub conns_per_sec: f64,
    pub connect_failures: u64,
    pub connect_failure_kinds: ConnectFailures,
    pub errors: u64,
    pub first_error: Option<String>,
    #[serde(flatten)]
    pub latency: LatencySummary,
    pub cpu_us_per_conn: Option<f64>,
    pub pids: Vec<PidDelta>,
}

struct Shared {
    target: Target,
    sources: SourceAddrs,
    deadline: Instant,
    max: u64,
    next: AtomicU64,
    opened: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    failures: Mutex<ConnectFailures>,
    recorder: Recorder,
    connect_timeout: Duration,
    echo: bool,
    keep_open: bool,
    message: Vec<u8>,
}

/// Runs the scenario and prints its report.
pub async fn run(args: StormArgs, threads: usize) -> Result<StormReport> {
    let target = args.common.target()?;
    let duration = options::seconds("--duration", args.duration, 0.1, options::MAX_SECONDS)?;
    let connect_timeout = args.common.run.connect_timeout()?;
    if args.concurrency == 0 || args.concurrency > 10_000 {
        bail!("--concurrency must be between 1 and 10000");
    }
    limits::check_connections(args.concurrency as u64)?;
    let fd_room = limits::open_files_limit()
        .unwrap_or(u64::MAX)
        .saturating_sub(limits::RESERVED_FDS);
    let max = match (args.max_connections, args.keep_open) {
        (Some(m), true) => {
            limits::check_connections(m)?;
            m
        }
        (Some(m), false) => m,
        (None, true) => fd_room,
        (None, false) => u64::MAX,
    };
    let watched = Watched::new(&args.common.run.pids)?;
    let sources = SourceAddrs::loopback(args.common.run.source_ip_offset, args.source_ips.clamp(1, 65_000), true);
    eprintln!(
        "connect-storm: {} workers for {:.1} s against {} from {} …",
        args.concurrency,
        duration.as_secs_f64(),
        target.url,
        sources.describe()
    );

    let started = Instant::now();
    let shared = Arc::new(Shared {
        target: target.clone(),
        sources,
        deadline: started + duration,
        max,
        next: AtomicU64::new(0),
        opened: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        failures: Mutex::new(ConnectFailures::default()),
        recorder: Recorder::new(threads.max(1) * 8),
        connect_timeout,
        echo: args.echo,
        keep_open: args.keep_open,
        message: protocol::message(64),
    });
    let before = watched.sample();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        workers.spawn(worker(w, shared.clone()));
    }
    let mut kept = Vec::new();
    while let Some(joined) = workers.join_next().await {
        if let Ok(list) = joined {
            kept.extend(list);
        }
    }
    let elapsed = started.elapsed().min(duration).as_secs_f64().max(1e-9);
    let after = watched.sample();
    if !kept.is_empty() {
        eprintln!("connect-storm: closing {} kept connections …", kept.len());
        let mut closing = tokio::task::JoinSet::new();
        for duplex in kept {
            closing.spawn(duplex.close(Duration::from_secs(2)));
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while closing.join_next().await.is_some() {}
        })
        .await;
    }

    let opened = shared.opened.load(Ordering::Relaxed);
    let deltas = watched.delta(&before, &after);
    let cpu: u64 = deltas.iter().map(|d| d.cpu_us).sum();
    let failures = shared.failures.lock().await.clone();
    let report = StormReport {
        scenario: "connect-storm",
        label: args.common.run.label.clone(),
        url: target.url.clone(),
        mode: if args.keep_open { "keep-open" } else { "open-close" },
        echo: args.echo,
        concurrency: args.concurrency,
        duration_s: duration.as_secs_f64(),
        threads,
        opened,
        conns_per_sec: opened as f64 / elapsed,
        connect_failures: failures.total(),
        connect_failure_kinds: failures,
        errors: shared.errors.load(Ordering::Relaxed),
        first_error: shared.first_error.lock().await.clone(),
        latency: shared.recorder.summary(),
        cpu_us_per_conn: (!watched.is_empty() && opened > 0).then(|| cpu as f64 / opened as f64),
        pids: deltas,
    };
    report::emit(&human(&report), &report, args.common.run.json)?;
    Ok(report)
}

/// Opens connections back to back until the deadline; returns those kept open.
async fn worker(w: usize, shared: Arc<Shared>) -> Vec<Duplex> {
    let mut kept = Vec::new();
    loop {
        if Instant::now() >= shared.deadline {
            break;
        }
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= shared.max {
            break;
        }
        let began = Instant::now();
        let ws = match client::connect(&shared.target, shared.sources.ip_for(n), shared.connect_timeout).await {
            Ok(ws) => ws,
            Err((kind, err)) => {
                shared.failures.lock().await.add(kind, &err);
                // Do not spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let answered = Arc::new(Notify::new());
        let on_text = {
            let answered = answered.clone();
            move |payload: &[u8]| {
                if let Incoming::Count(_) = protocol::classify(payload) {
                    answered.notify_one();
                }
            }
        };
        let mut duplex = Duplex::start(ws, on_text);
        if shared.echo {
            let echoed = duplex
                .exchange(shared.message.clone(), &answered, shared.connect_timeout, "answer")
                .await;
            if let Err(e) = echoed {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.first_error.lock().await.get_or_insert(format!("{e:#}"));
                duplex.abort();
                continue;
            }
        }
        if began < shared.deadline {
            shared.opened.fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
            shared.recorder.record(w, micros);
        }
        if shared.keep_open {
            kept.push(duplex);
        } else {
            duplex.close(Duration::from_secs(2)).await;
        }
    }
    kept
}

fn human(r: &StormReport) -> String {
    let mut out = String::new();
    let label = report::label_tag(&r.label);
    out.push_str(&format!(
        "connect-storm {}{}{} — {}\n",
        r.mode,
        if r.echo { " +echo" } else { "" },
        label,
        r.url
    ));
    out.push_str(&format!(
        "  opened        {} in {:.1} s = {:.1} conn/s with {} in flight\n",
        r.opened, r.duration_s, r.conns_per_sec, r.concurrency
    ));
    out.push_str(&format!("  handshake     {}\n", r.latency.human()));
    out.push_str(&format!(
        "  failures      connect {}; echo errors {}{}\n",
        r.connect_failure_kinds.human(),
        r.errors,
        r.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    ));
    if let Some(cpu) = r.cpu_us_per_conn {
        out.push_str(&format!("  server CPU    {cpu:.0} µs per connection\n"));
    }
    out.trim_end().to_string()
}
