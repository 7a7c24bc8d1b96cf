//! Connections held open for a whole run (`hold`, `broadcast`): opened a few hundred at a time,
//! each proven by one first exchange, then kept open — answering pings — until released together.
//!
//! Both scenarios count a connection only once the application, not just the kernel, has
//! answered it; both must tell a connect failure, a missing answer and a connection lost while
//! held apart, and must not let a burst of handshakes overflow the server's accept backlog. That
//! lifecycle lives here once; what a connection does with the frames it receives (and what a
//! lost one means) stays the scenario's.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, ConnectFailure};
use crate::duplex::Duplex;
use crate::fleet::ConnectFailures;
use crate::source::SourceAddrs;
use crate::target::Target;

/// How to open the connections.
pub struct Opening<'a> {
    /// The scenario, for the progress lines (`hold: 5000/20000 set up …`).
    pub scenario: &'static str,
    /// Connection i goes to `targets[i % len]` (at least one).
    pub targets: &'a [Target],
    pub sources: SourceAddrs,
    /// Connects + first exchanges in flight at once.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// No connection is started after this.
    pub deadline: Instant,
    /// A progress line every this many connections set up.
    pub progress_every: u64,
    pub first: FirstExchange,
}

/// The message that proves a connection is accepted, and how long its answer may take.
#[derive(Clone)]
pub struct FirstExchange {
    pub message: Arc<[u8]>,
    pub within: Duration,
    /// What the answer is called in the error text: `no {answer} within 15s`.
    pub answer: &'static str,
}

/// What a scenario gives each connection: its text-frame handler (which must notify the
/// `answered` it was handed when the first answer arrives), and what a connection lost while
/// held means to it.
pub struct Conn<T, D> {
    pub on_text: T,
    pub on_drop: D,
}

/// How the setup went.
#[derive(Debug)]
pub struct Setup {
    /// Connections answered, per target (same order as `Opening::targets`).
    pub ready_per_target: Vec<u64>,
    pub failures: ConnectFailures,
    /// Connected, but the first answer did not come in time (or the connection ended first).
    pub no_answer: u64,
    pub first_no_answer: Option<String>,
    pub setup_s: f64,
}

impl Setup {
    /// Connections answered, over every target.
    pub fn ready(&self) -> u64 {
        self.ready_per_target.iter().sum()
    }
}

/// The held connections, one task each, until [`Held::release`].
pub struct Held {
    tasks: JoinSet<()>,
    release_tx: watch::Sender<bool>,
}

/// How one connection's setup ended, as told to the coordinator.
enum Outcome {
    Ready { index: usize, took: Duration },
    ConnectFailed(ConnectFailure, anyhow::Error),
    NoAnswer(String),
}

impl Held {
    /// Opens `n` connections and waits until each has answered or failed (or was never started
    /// before the deadline). `conn(i, answered)` gives connection i its handlers; `on_ready(i,
    /// took)` is called (here, not on the connection's task) for each one answered, `took` being
    /// connect + first answer.
    pub async fn open<T, D>(
        n: usize,
        opening: Opening<'_>,
        mut conn: impl FnMut(usize, Arc<Notify>) -> Conn<T, D>,
        mut on_ready: impl FnMut(usize, Duration),
    ) -> (Held, Setup)
    where
        T: FnMut(&[u8]) + Send + 'static,
        D: FnOnce(anyhow::Error) + Send + 'static,
    {
        let targets = opening.targets;
        let (release_tx, release_rx) = watch::channel(false);
        let (setup_tx, mut setup_rx) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(opening.concurrency.max(1)));
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        let mut not_attempted = 0;
        for i in 0..n {
            let Ok(Ok(permit)) = tokio::time::timeout_at(opening.deadline, permits.clone().acquire_owned()).await
            else {
                not_attempted = (n - i) as u64;
                break;
            };
            let answered = Arc::new(Notify::new());
            let one = One {
                index: i,
                target: targets[i % targets.len()].clone(),
                source: opening.sources.ip_for(i as u64),
                connect_timeout: opening.connect_timeout,
                first: opening.first.clone(),
                setup_tx: setup_tx.clone(),
                release: release_rx.clone(),
            };
            tasks.spawn(one.run(permit, answered.clone(), conn(i, answered)));
        }
        drop(setup_tx);

        let mut setup = Setup {
            ready_per_target: vec![0; targets.len()],
            failures: ConnectFailures {
                not_attempted,
                ..ConnectFailures::default()
            },
            no_answer: 0,
            first_no_answer: None,
            setup_s: 0.0,
        };
        let mut done = not_attempted;
        let mut next_progress = opening.progress_every;
        while done < n as u64 {
            let Some(outcome) = setup_rx.recv().await else { break };
            match outcome {
                Outcome::Ready { index, took } => {
                    setup.ready_per_target[index % targets.len()] += 1;
                    on_ready(index, took);
                }
                Outcome::ConnectFailed(kind, err) => setup.failures.add(kind, &err),
                Outcome::NoAnswer(e) => {
                    setup.no_answer += 1;
                    setup.first_no_answer.get_or_insert(e);
                }
            }
            done += 1;
            if done >= next_progress {
                eprintln!("{}: {done}/{n} set up …", opening.scenario);
                next_progress += opening.progress_every;
            }
        }
        setup.setup_s = started.elapsed().as_secs_f64();
        (Held { tasks, release_tx }, setup)
    }

    /// Releases every connection (each closes with a close handshake, so the server keeps the
    /// TIME_WAIT) and waits for them, at most `bound`.
    pub async fn release(mut self, bound: Duration) {
        let _ = self.release_tx.send(true);
        // Closing is concurrent and each close waits at most 2 s; bound the whole join anyway.
        let _ = tokio::time::timeout(bound, async { while self.tasks.join_next().await.is_some() {} }).await;
        self.tasks.abort_all();
    }

    /// Drops every connection at once, without closing (the run is abandoned).
    pub fn abort(mut self) {
        let _ = self.release_tx.send(true);
        self.tasks.abort_all();
    }
}

/// One held connection's parameters and its line to the coordinator.
struct One {
    index: usize,
    target: Target,
    source: Option<IpAddr>,
    connect_timeout: Duration,
    first: FirstExchange,
    setup_tx: mpsc::UnboundedSender<Outcome>,
    release: watch::Receiver<bool>,
}

impl One {
    async fn run<T, D>(mut self, permit: OwnedSemaphorePermit, answered: Arc<Notify>, conn: Conn<T, D>)
    where
        T: FnMut(&[u8]) + Send + 'static,
        D: FnOnce(anyhow::Error),
    {
        let began = Instant::now();
        let ws = match client::connect(&self.target, self.source, self.connect_timeout).await {
            Ok(ws) => ws,
            Err((kind, err)) => {
                drop(permit);
                let _ = self.setup_tx.send(Outcome::ConnectFailed(kind, err));
                return;
            }
        };
        let mut duplex = Duplex::start(ws, conn.on_text);
        let first = &self.first;
        let outcome = duplex
            .exchange(first.message.to_vec(), &answered, first.within, first.answer)
            .await;
        drop(permit);
        if let Err(e) = outcome {
            let _ = self.setup_tx.send(Outcome::NoAnswer(format!("{e:#}")));
            duplex.abort();
            return;
        }
        let took = began.elapsed();
        let _ = self.setup_tx.send(Outcome::Ready {
            index: self.index,
            took,
        });
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
                (conn.on_drop)(e);
                duplex.abort();
            }
        }
    }
}
