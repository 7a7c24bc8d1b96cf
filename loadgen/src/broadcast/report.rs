//! The `broadcast` report: every figure of a run as one JSON line, and as human text.
//!
//! The scripts (`scripts/bench-broadcast`, `bench/report.py`) read the JSON field names, so
//! they are all spelled here, next to how each is computed from the board, the setup tally and
//! the sender's window.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::args::{BroadcastArgs, RoomsProtocol, Settings};
use super::board::{Board, Figures};
use super::sender::Sent;
use crate::fleet::ConnectFailures;
use crate::held::Setup;
use crate::procstat::PidDelta;
use crate::report::{fmt_us, label_tag, LatencySummary};

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

impl BroadcastReport {
    /// Puts the run's parts together once every member is released.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        args: &BroadcastArgs,
        settings: &Settings,
        run_id: u64,
        threads: usize,
        setup: Setup,
        sender: Sent,
        board: &Board,
        have_pids: bool,
    ) -> BroadcastReport {
        let joined = setup.ready();
        let Sent {
            sent,
            window_s,
            pids,
            client_cpu_us: client_cpu,
            load_average,
            error: sender_error,
        } = sender;
        let figures = Figures::compute(board, args.members, sent);
        let server_cpu: u64 = pids.iter().map(|d| d.cpu_us).sum();
        let delivered = board.delivered.load(Ordering::Relaxed);
        let delivered_broadcasts = delivered as f64 / joined as f64;
        let per_broadcast = |cpu: u64| (delivered > 0).then(|| cpu as f64 / delivered_broadcasts);
        BroadcastReport {
            scenario: "broadcast",
            label: args.run.label.clone(),
            urls: args.urls.clone(),
            sender_url: settings.sender_target.url.clone(),
            protocol: args.protocol,
            room: args.room.clone(),
            run_id,
            members: args.members,
            joined_per_url: setup.ready_per_target,
            joined,
            connect_failures: setup.failures.total(),
            connect_failure_kinds: setup.failures,
            join_failures: setup.no_answer,
            setup_s: setup.setup_s,
            broadcasts: args.broadcasts,
            sent,
            interval_ms: args.interval,
            drain_timeout_s: settings.drain.as_secs_f64(),
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
            cpu_us_per_broadcast: if have_pids { per_broadcast(server_cpu) } else { None },
            cpu_us_per_delivery: (have_pids && delivered > 0).then(|| server_cpu as f64 / delivered as f64),
            server_cpu_pct: (have_pids && window_s > 0.0).then(|| server_cpu as f64 / window_s / 1e4),
            pids,
            client_cpu_us_per_broadcast: per_broadcast(client_cpu),
        }
    }
}

/// The report as human text.
pub(super) fn human(r: &BroadcastReport) -> String {
    let mut out = String::new();
    let label = label_tag(&r.label);
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
