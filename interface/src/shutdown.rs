//! Graceful shutdown: one signal every task can wait for, and one wait for
//! the tasks that must finish.
//!
//! When the `shutdown` future given to [`crate::run`] completes, the
//! interface starts draining: the listener stops, /readyz says 503, and every
//! connection task says goodbye on its own schedule before the deadline. Tasks
//! hold a [`Shutdown`] and `await` [`Shutdown::draining`].
//!
//! Every task that owns a client (an HTTP connection, a WebSocket) also holds
//! a [`TaskGuard`]; `run` waits until the last guard is dropped (the
//! mini-redis way: a channel whose senders are the guards, closed when the
//! last one goes), so it neither polls nor exits under a live socket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Waits for draining to start.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<Instant>>,
    /// Where guards come from; emptied when draining starts.
    guards: Arc<Mutex<Option<mpsc::Sender<()>>>>,
}

/// Held by a task that must finish before the process exits.
#[derive(Clone)]
pub struct TaskGuard {
    _alive: mpsc::Sender<()>,
}

/// The sending side, held by [`crate::run`].
pub struct Trigger {
    tx: watch::Sender<Option<Instant>>,
    guards: Arc<Mutex<Option<mpsc::Sender<()>>>>,
    finished: mpsc::Receiver<()>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(None);
    let (alive, finished) = mpsc::channel(1);
    let guards = Arc::new(Mutex::new(Some(alive)));
    (
        Trigger {
            tx,
            guards: guards.clone(),
            finished,
        },
        Shutdown { rx, guards },
    )
}

impl Trigger {
    /// Starts draining; connections must be closed by `now + within`.
    pub fn start(&self, within: Duration) {
        self.tx.send_replace(Some(Instant::now() + within));
        // No new guards: once the ones out there are dropped, all is finished.
        lock(&self.guards).take();
    }

    /// Resolves when every [`TaskGuard`] has been dropped (after [`Trigger::start`]).
    pub async fn finished(&mut self) {
        while self.finished.recv().await.is_some() {}
    }
}

impl Shutdown {
    pub fn is_draining(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// Resolves when draining starts, with the deadline.
    pub async fn draining(&mut self) -> Instant {
        loop {
            if let Some(deadline) = *self.rx.borrow_and_update() {
                return deadline;
            }
            if self.rx.changed().await.is_err() {
                // The trigger is gone: treat as an immediate shutdown.
                return Instant::now();
            }
        }
    }

    /// A guard for a task that must finish before the process exits; `None`
    /// once draining has started (nothing new may begin then).
    pub fn guard(&self) -> Option<TaskGuard> {
        lock(&self.guards).clone().map(|alive| TaskGuard { _alive: alive })
    }
}

fn lock(guards: &Mutex<Option<mpsc::Sender<()>>>) -> std::sync::MutexGuard<'_, Option<mpsc::Sender<()>>> {
    guards.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finished_waits_for_the_last_guard() {
        let (mut trigger, shutdown) = channel();
        let first = shutdown.guard().expect("not draining yet");
        let second = first.clone();
        trigger.start(Duration::from_secs(1));
        assert!(shutdown.is_draining());
        assert!(shutdown.guard().is_none(), "no new guards while draining");
        drop(first);
        let waited = tokio::time::timeout(Duration::from_millis(50), trigger.finished()).await;
        assert!(waited.is_err(), "a guard is still held");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), trigger.finished())
            .await
            .expect("finished once every guard is gone");
    }

    #[tokio::test]
    async fn draining_resolves_with_the_deadline() {
        let (trigger, mut shutdown) = channel();
        let before = Instant::now();
        trigger.start(Duration::from_secs(3));
        let deadline = shutdown.draining().await;
        assert!(deadline >= before + Duration::from_secs(3));
    }
}
