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
//!
//! The files follow one run: `args.rs` (options and their bounds), `member.rs` (open the
//! members and join them), `sender.rs` (say the broadcasts on schedule), with `frames.rs` (what
//! a delivery says) and `board.rs` (who got what, when) between them, and `report.rs` at the
//! end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::procstat::Watched;
use crate::report::emit;
use crate::source::SourceAddrs;

mod args;
mod board;
mod frames;
mod member;
mod report;
mod sender;

pub use args::{BroadcastArgs, RoomsProtocol, MAX_BROADCASTS, MAX_MEMBERS};
pub use frames::{parse_say_text, say_text};
pub use report::BroadcastReport;

use board::Board;

/// Runs the scenario and prints its report.
pub async fn run(args: BroadcastArgs, threads: usize) -> Result<BroadcastReport> {
    let settings = args.check()?;
    let watched = Watched::new(&args.run.pids)?;
    let me = Watched::new(&[std::process::id()])?;
    let sources = SourceAddrs::for_connections(args.run.source_ip_offset, args.members as u64 + 1);
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
    let (members, setup) = member::open(&args, &settings, sources, &room, run_id, &board).await;
    let joined = setup.ready();
    if joined == 0 {
        members.abort();
        bail!(
            "no member joined: connect failures {}, join failures {}{}",
            setup.failures.human(),
            setup.no_answer,
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
        "broadcast: {joined} members joined in {:.1} s ({}); sending {} broadcasts every {} ms …",
        setup.setup_s,
        setup
            .ready_per_target
            .iter()
            .zip(&args.urls)
            .map(|(n, u)| format!("{n} on {u}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.broadcasts,
        args.interval
    );

    // The sender: one more connection, not a member (on the first URL unless --sender-url).
    let source = sources.ip_for(args.members as u64);
    let sent = sender::run(&args, &settings, source, &board, &room, run_id, joined, (&watched, &me)).await;
    members.release(Duration::from_secs(60)).await;

    let report = BroadcastReport::new(
        &args,
        &settings,
        run_id,
        threads,
        setup,
        sent,
        &board,
        !watched.is_empty(),
    );
    emit(&report::human(&report), &report, args.run.json)?;
    Ok(report)
}

/// A run id unlikely to repeat: the wall clock in ns mixed with the PID.
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 40)) & ((1 << 53) - 1)
}
