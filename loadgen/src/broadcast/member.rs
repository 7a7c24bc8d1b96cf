//! The members: connections that join the room, then only listen until the run is over.
//!
//! A member counts only once the server confirmed its join (`{"joined": room}`), so setup
//! waits for that answer, a few hundred handshakes at a time; from then on each member's
//! reader task writes every delivery straight to the board, and a member whose connection ends
//! before it is released is counted as dropped.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::args::{BroadcastArgs, RoomsProtocol, Settings};
use super::board::Board;
use super::frames::{classify, Pushed};
use crate::client::{self, ConnectFailure};
use crate::duplex::Duplex;
use crate::fleet::ConnectFailures;
use crate::source::SourceAddrs;
use crate::target::Target;

/// How one member's setup ended.
enum Setup {
    Joined(usize),
    ConnectFailed(ConnectFailure, anyhow::Error),
    NoJoin(String),
}

/// Every member task, each holding its connection until [`Members::release`].
pub(super) struct Members {
    tasks: JoinSet<()>,
    release_tx: watch::Sender<bool>,
}

/// How the setup went.
pub(super) struct Joined {
    /// Members that joined, per URL (same order as the `--url`s).
    pub per_url: Vec<u64>,
    pub failures: ConnectFailures,
    pub join_failures: u64,
    pub setup_s: f64,
}

impl Joined {
    /// Members that joined, over every URL.
    pub(super) fn total(&self) -> u64 {
        self.per_url.iter().sum()
    }
}

impl Members {
    /// Opens `--members` connections spread round-robin over the targets, each joining the
    /// room, and waits until every one has joined or failed (or the setup deadline passed).
    pub(super) async fn open(
        args: &BroadcastArgs,
        settings: &Settings,
        sources: &SourceAddrs,
        room: &Arc<str>,
        run_id: u64,
        board: &Arc<Board>,
    ) -> (Members, Joined) {
        let targets = &settings.targets;
        let (connect_timeout, answer_timeout) = (settings.connect_timeout, settings.answer_timeout);
        let setup_deadline = Instant::now() + settings.setup_timeout;
        let (release_tx, release_rx) = watch::channel(false);
        let (setup_tx, mut setup_rx) = mpsc::unbounded_channel::<Setup>();
        let permits = Arc::new(Semaphore::new(args.run.connect_concurrency.max(1)));
        let join_message = Arc::new(serde_json::json!({ "join": &**room }).to_string().into_bytes());
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
        if let Some(e) = first_join_failure {
            board.problem(|| format!("join failed: {e}"));
        }
        let joined = Joined {
            per_url: joined_per_url,
            failures,
            join_failures,
            setup_s,
        };
        (Members { tasks, release_tx }, joined)
    }

    /// Releases every member (each closes with a close handshake) and waits for them, bounded.
    pub(super) async fn release(mut self) {
        let _ = self.release_tx.send(true);
        // Closing is concurrent and each close waits at most 2 s; bound the whole join anyway.
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }

    /// Drops every member at once (the run is abandoned).
    pub(super) fn abort(mut self) {
        let _ = self.release_tx.send(true);
        self.tasks.abort_all();
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
