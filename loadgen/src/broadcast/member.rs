//! The members: connections that join the room, then only listen until the run is over.
//!
//! A member counts only once the server confirmed its join (`{"joined": room}`), so setup
//! waits for that answer (`held.rs` opens, holds and releases them); from then on each member's
//! reader task writes every delivery straight to the board, and a member whose connection ends
//! before it is released is counted as dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::args::{BroadcastArgs, Settings};
use super::board::Board;
use super::frames::{classify, Pushed};
use crate::held::{Conn, FirstExchange, Held, Opening, Setup};
use crate::source::SourceAddrs;

/// Opens `--members` connections spread round-robin over the targets, each joining the room,
/// and waits until every one has joined or failed (or the setup deadline passed).
pub(super) async fn open(
    args: &BroadcastArgs,
    settings: &Settings,
    sources: SourceAddrs,
    room: &Arc<str>,
    run_id: u64,
    board: &Arc<Board>,
) -> (Held, Setup) {
    let opening = Opening {
        scenario: "broadcast",
        targets: &settings.targets,
        sources,
        concurrency: args.run.connect_concurrency,
        connect_timeout: settings.connect_timeout,
        deadline: Instant::now() + settings.setup_timeout,
        progress_every: 2000,
        first: FirstExchange {
            message: serde_json::json!({ "join": &**room }).to_string().into_bytes().into(),
            within: settings.answer_timeout,
            answer: "{\"joined\"}",
        },
    };
    let want_seq = args.protocol.has_seq();
    let member = |m: usize, joined: Arc<Notify>| {
        let (board, dropped_board) = (board.clone(), board.clone());
        let room = room.clone();
        let mut last_seq = None;
        let on_text = move |payload: &[u8]| {
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
        };
        let on_drop = move |e: anyhow::Error| {
            dropped_board.dropped.fetch_add(1, Ordering::Relaxed);
            dropped_board.problem(|| format!("member {m} dropped: {e:#}"));
        };
        Conn { on_text, on_drop }
    };
    let on_joined = |m: usize, _| board.joined[m].store(true, Ordering::Relaxed);
    let (held, setup) = Held::open(args.members, opening, member, on_joined).await;
    if let Some(e) = &setup.first_no_answer {
        board.problem(|| format!("join failed: {e}"));
    }
    (held, setup)
}
