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
use tokio::sync::Notify;

use crate::fleet::ConnectFailures;
use crate::held::{Conn, FirstExchange, Held, Opening, Setup};
use crate::limits;
use crate::options::{self, CommonArgs};
use crate::procstat::{PidDelta, Watched};
use crate::protocol::{self, Incoming};
use crate::report::{self, LatencySummary, Recorder};
use crate::source::SourceAddrs;

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
    let dropped = Arc::new(AtomicU64::new(0));
    let violations = Arc::new(AtomicU64::new(0));
    let recorder = Recorder::new(threads.max(1) * 8);
    let opening = Opening {
        scenario: "hold",
        targets: std::slice::from_ref(&target),
        sources,
        concurrency: args.common.run.connect_concurrency,
        connect_timeout,
        deadline: setup_deadline,
        progress_every: 5000,
        first: FirstExchange {
            message: protocol::message(args.payload_bytes).into(),
            within: answer_timeout,
            answer: "answer",
        },
    };
    let conn = |_, answered: Arc<Notify>| {
        let violations = violations.clone();
        let mut order = protocol::OrderCheck::default();
        let dropped = dropped.clone();
        Conn {
            on_text: move |payload: &[u8]| {
                if let Incoming::Count(count) = protocol::classify(payload) {
                    if !order.observe(count) {
                        violations.fetch_add(1, Ordering::Relaxed);
                    }
                    answered.notify_one();
                }
            },
            on_drop: move |_| {
                dropped.fetch_add(1, Ordering::Relaxed);
            },
        }
    };
    let on_ready = |slot, took: Duration| {
        recorder.record(slot, u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    };
    let (held, setup) = Held::open(args.connections, opening, conn, on_ready).await;
    let connected = setup.ready();
    let Setup {
        mut failures,
        no_answer,
        first_no_answer,
        setup_s,
        ..
    } = setup;
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

    held.release(Duration::from_secs(30)).await;

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

fn human(r: &HoldReport) -> String {
    let mut out = String::new();
    let label = report::label_tag(&r.label);
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
