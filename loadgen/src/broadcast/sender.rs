//! The sender: one more connection, not a member, that says the K broadcasts on a fixed
//! schedule and then waits for the members to have them.
//!
//! Sending on a schedule (not as fast as possible) keeps one broadcast from queueing behind
//! the previous one unless the server is really slower than `--interval`; the send time of each
//! is written to the board before the frame leaves, and the server CPU is sampled over exactly
//! the window from the first send to the last delivery (or the drain deadline).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::args::{BroadcastArgs, Settings};
use super::board::Board;
use super::frames::say_text;
use crate::client;
use crate::duplex::Duplex;
use crate::procstat::{PidDelta, Watched};

/// What the sender did.
pub(super) struct Sent {
    pub sent: usize,
    pub window_s: f64,
    pub pids: Vec<PidDelta>,
    pub client_cpu_us: u64,
    pub load_average: Option<String>,
    /// Why the sender stopped early, or the first thing it received (it should receive nothing).
    pub error: Option<String>,
}

/// Connects the sender (to `--sender-url`, default the first `--url`) from `source`, sends
/// every broadcast and waits for the deliveries; `joined` members are expected to get each.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    args: &BroadcastArgs,
    settings: &Settings,
    source: Option<IpAddr>,
    board: &Arc<Board>,
    room: &str,
    run_id: u64,
    joined: u64,
    (watched, me): (&Watched, &Watched),
) -> Sent {
    let ws = match client::connect(&settings.sender_target, source, settings.connect_timeout).await {
        Ok(ws) => ws,
        Err((_, err)) => {
            let mut sent = Sent::nothing();
            sent.error = Some(format!("sender could not connect: {err:#}"));
            return sent;
        }
    };
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
        board,
        args,
        room,
        run_id,
        settings.settle,
        settings.drain,
        joined,
        (watched, me),
    )
    .await;
    sender.close(Duration::from_secs(2)).await;
    let problem = sender_problem.lock().ok().and_then(|p| p.clone());
    match outcome {
        Ok(sent) => Sent { error: problem, ..sent },
        Err((sent, e)) => Sent {
            error: Some(format!("{e:#}")),
            ..sent
        },
    }
}

impl Sent {
    fn nothing() -> Sent {
        Sent {
            sent: 0,
            window_s: 0.0,
            pids: Vec::new(),
            client_cpu_us: 0,
            load_average: None,
            error: None,
        }
    }
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
    let mut sent = Sent::nothing();
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
