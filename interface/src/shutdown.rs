//! Graceful shutdown: one signal that every task can wait for.
//!
//! SIGTERM flips the interface into draining: the listener stops, /readyz says
//! 503, and every connection task says goodbye on its own schedule before the
//! deadline. Tasks hold a [`Shutdown`] and `await` [`Shutdown::draining`].

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<Instant>>,
}

/// The sending side, held by `main`.
pub struct Trigger {
    tx: watch::Sender<Option<Instant>>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(None);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    /// Starts draining; connections must be closed by `now + within`.
    pub fn start(&self, within: Duration) {
        self.tx.send_replace(Some(Instant::now() + within));
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
}
