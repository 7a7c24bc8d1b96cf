//! The `hold` scenario: open N idle connections, hold them, and measure the servers' memory per
//! connection.
//!
//! Each connection sends one message and waits for `{"count": 1}` (so it is really accepted by
//! the application, not just by the kernel), then idles — still answering pings and reading
//! heartbeats — for `--hold` seconds. The RSS of the `--pid` processes before opening and at the
//! end of the hold gives KiB per connection. Source addresses are spread over 127.0.0.0/8 and
//! the per-process open-files limit is checked up front.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::client::{self, ConnectFailure};
use crate::duplex::Duplex;
use crate::fleet::ConnectFailures;
use crate::limits;
use crate::options::{self, CommonArgs};
use crate::procstat::{PidDelta, Watched};
use crate::protocol::{self, Incoming};
use crate::report::{self, LatencySummary, Recorder};
use crate::source::SourceAddrs;
use crate::target::Target;

/// `hold` options.
#[derive(Args, Debug, Clone)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Idle connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,

    /// Seconds to hold them once all are open.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,

    /// Seconds each connection may take to get its first answer (after connecting).
    #[arg(long, default_value_t = 15.0)]
    pub answer_timeout: f64,

    /// Size of the one message each connection sends.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
}

/// Everything `hold` measured: the JSON line.
#[derive(Debug, Serialize)]
pub struct HoldReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub connections: usize,
    pub connected: u64,
    pub connect_failures: u64,
    pub connect_failure_kinds: ConnectFailures,
    pub no_answer: u64,
    pub dropped_during_hold: u64,
    pub order_violations: u64,
    pub hold_s: f64,
    pub setup_s: f64,
    pub setup_conns_per_sec: f64,
    pub setup_latency: LatencySummary,
    pub threads: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_conn: Option<f64>,
    pub pids: Vec<PidDelta>,
    pub client_rss_kib: u64,
}

/// How one connection's setup ended.
enum Setup {
    Ok,
    ConnectFailed(ConnectFailure, anyhow::Error),
    NoAnswer(String),
}

/// Runs the scenario and prints its report.
pub async fn run(args: HoldArgs, threads: usize) -> Result<HoldReport> {
    let target = args.common.target()?;
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    limits::check_connections(args.connections as u64)?;
    let hold = options::seconds("--hold", args.hold, 0.0, options::MAX_SECONDS)?;
    let answer_timeout = options::seconds("--answer-timeout", args.answer_timeout, 0.1, 300.0)?;
    let connect_timeout = args.common.run.connect_timeout()?;
    let setup_deadline = args.common.run.setup_deadline()?;
    if args.payload_bytes > 1 << 20 {
        bail!("--payload-bytes must be at most 1 MiB");
    }
    let watched = Watched::new(&args.common.run.pids)?;
    let sources = SourceAddrs::for_connections(args.common.run.source_ip_offset, args.connections as u64);
    let before = watched.sample();

    eprintln!(
        "hold: opening {} connections to {} from {} …",
        args.connections,
        target.url,
        sources.describe()
    );
    let (release_tx, release_rx) = watch::channel(false);
    let (setup_tx, mut setup_rx) = mpsc::unbounded_channel::<Setup>();
    let dropped = Arc::new(AtomicU64::new(0));
    let violations = Arc::new(AtomicU64::new(0));
    let recorder = Arc::new(Recorder::new(threads.max(1) * 8));
    let permits = Arc::new(Semaphore::new(args.common.run.connect_concurrency.max(1)));
    let message = protocol::message(args.payload_bytes);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut not_attempted = 0;
    for i in 0..args.connections {
        let Ok(Ok(permit)) = tokio::time::timeout_at(setup_deadline, permits.clone().acquire_owned()).await else {
            not_attempted = (args.connections - i) as u64;
            break;
        };
        let conn = HoldConn {
            slot: i,
            target: target.clone(),
            source: sources.ip_for(i as u64),
            connect_timeout,
            answer_timeout,
            message: message.clone(),
            setup_tx: setup_tx.clone(),
            release: release_rx.clone(),
            dropped: dropped.clone(),
            violations: violations.clone(),
            recorder: recorder.clone(),
        };
        tasks.spawn(async move {
            conn.run(permit).await;
        });
    }
    drop(setup_tx);

    let mut failures = ConnectFailures {
        not_attempted,
        ..ConnectFailures::default()
    };
    let mut connected = 0u64;
    let mut no_answer = 0u64;
    let mut first_no_answer = None;
    let mut next_progress = 5000;
    while let Some(setup) = setup_rx.recv().await {
        match setup {
            Setup::Ok => connected += 1,
            Setup::ConnectFailed(kind, err) => failures.add(kind, &err),
            Setup::NoAnswer(e) => {
                no_answer += 1;
                first_no_answer.get_or_insert(e);
            }
        }
        let done = connected + failures.total() + no_answer;
        if done == args.connections as u64 {
            break;
        }
        if done >= next_progress {
            eprintln!("hold: {done}/{} set up …", args.connections);
            next_progress += 5000;
        }
    }
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!(
        "hold: {connected} connections answered in {setup_s:.1} s; holding {:.1} s …",
        hold.as_secs_f64()
    );
    tokio::time::sleep(hold).await;
    let after = watched.sample();
    let dropped_during_hold = dropped.load(Ordering::Relaxed);
    let client_rss_kib = Watched::new(&[std::process::id()])?
        .sample()
        .values()
        .map(|s| s.rss_kib)
        .sum();

    let _ = release_tx.send(true);
    // Closing is concurrent and each close waits at most 2 s; bound the whole join anyway.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    let deltas = watched.delta(&before, &after);
    let rss_before: u64 = deltas.iter().map(|d| d.rss_before_kib).sum();
    let rss_after: u64 = deltas.iter().map(|d| d.rss_after_kib).sum();
    let have_pids = !watched.is_empty();
    if let Some(e) = first_no_answer {
        if failures.first_error.is_none() {
            failures.first_error = Some(format!("no answer: {e}"));
        }
    }
    let report = HoldReport {
        scenario: "hold",
        label: args.common.run.label.clone(),
        url: target.url.clone(),
        connections: args.connections,
        connected,
        connect_failures: failures.total(),
        connect_failure_kinds: failures,
        no_answer,
        dropped_during_hold,
        order_violations: violations.load(Ordering::Relaxed),
        hold_s: hold.as_secs_f64(),
        setup_s,
        setup_conns_per_sec: connected as f64 / setup_s.max(1e-9),
        setup_latency: recorder.summary(),
        threads,
        rss_before_kib: have_pids.then_some(rss_before),
        rss_after_kib: have_pids.then_some(rss_after),
        kib_per_conn: (have_pids && connected > 0).then(|| (rss_after as f64 - rss_before as f64) / connected as f64),
        pids: deltas,
        client_rss_kib,
    };
    report::emit(&human(&report), &report, args.common.run.json)?;
    Ok(report)
}

/// One held connection's parameters and reporting handles.
struct HoldConn {
    slot: usize,
    target: Target,
    source: Option<std::net::IpAddr>,
    connect_timeout: Duration,
    answer_timeout: Duration,
    message: Vec<u8>,
    setup_tx: mpsc::UnboundedSender<Setup>,
    release: watch::Receiver<bool>,
    dropped: Arc<AtomicU64>,
    violations: Arc<AtomicU64>,
    recorder: Arc<Recorder>,
}

impl HoldConn {
    async fn run(mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        let began = Instant::now();
        let ws = match client::connect(&self.target, self.source, self.connect_timeout).await {
            Ok(ws) => ws,
            Err((kind, err)) => {
                drop(permit);
                let _ = self.setup_tx.send(Setup::ConnectFailed(kind, err));
                return;
            }
        };
        let answered = Arc::new(Notify::new());
        let on_text = {
            let answered = answered.clone();
            let violations = self.violations.clone();
            let mut order = protocol::OrderCheck::default();
            move |payload: &[u8]| {
                if let Incoming::Count(count) = protocol::classify(payload) {
                    if !order.observe(count) {
                        violations.fetch_add(1, Ordering::Relaxed);
                    }
                    answered.notify_one();
                }
            }
        };
        let mut duplex = Duplex::start(ws, on_text);
        let first = async {
            duplex.send_text(self.message.clone()).await?;
            match duplex
                .service_until(tokio::time::timeout(self.answer_timeout, answered.notified()))
                .await?
            {
                Ok(()) => Ok(()),
                Err(_) => bail!("no answer within {:?}", self.answer_timeout),
            }
        };
        let outcome: Result<()> = first.await;
        drop(permit);
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.recorder.record(self.slot, micros);
                let _ = self.setup_tx.send(Setup::Ok);
            }
            Err(e) => {
                let _ = self.setup_tx.send(Setup::NoAnswer(format!("{e:#}")));
                duplex.abort();
                return;
            }
        }
        drop(self.setup_tx);
        let release = &mut self.release;
        // A dropped sender also means "release" (the coordinator is gone).
        let released = duplex
            .service_until(async move {
                let _ = release.wait_for(|r| *r).await;
            })
            .await;
        match released {
            Ok(_) => {
                duplex.close(Duration::from_secs(2)).await;
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                duplex.abort();
            }
        }
    }
}

fn human(r: &HoldReport) -> String {
    let mut out = String::new();
    let label = if r.label.is_empty() {
        String::new()
    } else {
        format!(" [{}]", r.label)
    };
    out.push_str(&format!("hold{} — {}\n", label, r.url));
    out.push_str(&format!(
        "  connections   {}/{} answered in {:.1} s ({:.0} conn/s); connect failures {}; no answer {}\n",
        r.connected,
        r.connections,
        r.setup_s,
        r.setup_conns_per_sec,
        r.connect_failure_kinds.human(),
        r.no_answer
    ));
    out.push_str(&format!(
        "  setup         connect + first answer: {}\n",
        r.setup_latency.human()
    ));
    out.push_str(&format!(
        "  hold          {:.1} s; dropped during hold {}; order violations {}\n",
        r.hold_s, r.dropped_during_hold, r.order_violations
    ));
    if let (Some(b), Some(a)) = (r.rss_before_kib, r.rss_after_kib) {
        out.push_str(&format!(
            "  server RSS    {} KiB → {} KiB = {:.1} KiB per connection\n",
            b,
            a,
            r.kib_per_conn.unwrap_or(0.0)
        ));
        for p in &r.pids {
            out.push_str(&format!(
                "                {} {}: {} → {} KiB\n",
                p.name, p.pid, p.rss_before_kib, p.rss_after_kib
            ));
        }
    }
    out.push_str(&format!("  client RSS    {} KiB (this load tool)\n", r.client_rss_kib));
    out.trim_end().to_string()
}
