//! A consumer's panic or error is absorbed: the message is answered and
//! committed, the worker goes on.
//!
//! The Channels deploy guide promises that the worker "will absorb tracebacks
//! from inside consumers". Without this, a panic would end the handler's task
//! with the entry pending and unanswered: its connection would wait for a
//! `done` that never comes, and every worker that took the entry over would
//! panic again. So the consumer (and an HTTP app, and its response body) runs
//! under `catch_unwind`; a panic, an error it returns, or a Redis error that
//! retrying cannot fix (`WRONGTYPE`, a script error: a bug, not an outage) is
//! logged with the panic message, channel, connection and entry id, counted
//! (`worker_consumer_failures{channel, kind}`), and answered — WebSocket: close
//! 1011, HTTP: 500 — through the normal commit, whose `done` lets the
//! connection's next message go.
//!
//! What cannot be caught (an abort, the kernel's out-of-memory kill) is what
//! the delivery limit (`--max-deliveries`, in `dispatch`) is for.
//!
//! The binary also replaces the default panic hook ([`install_panic_hook`]):
//! a panic is one log line (JSON with `--log-format json`) with its message
//! and location, never a backtrace printed to stderr. With `RUST_BACKTRACE`
//! set, the default hook symbolises a backtrace on each panic, which loads the
//! binary's debug information into memory for good: in the chaos run a debug
//! worker went from 20 to 165 MiB RSS at its first absorbed panic.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;
use redis::{RedisError, RetryMethod};

use crate::runtime::Worker;

/// How a consumer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Panic,
    Error,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Panic => "panic",
            Failure::Error => "error",
        }
    }
}

/// Runs `future`, turning a panic into `Err(panic message)`.
pub async fn catch<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

/// The text a panic was raised with (`panic!("…")`, `unwrap` on `None`, …).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// Logs every panic of the process as one `tracing` line (message, location,
/// thread) instead of the default hook's stderr print and backtrace.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = panic_message(info.payload());
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        tracing::error!(panic = %message, %location, %thread, "panicked");
    }));
}

/// Whether a Redis error a consumer returned is worth running the message
/// again for (the connection, the cluster, a failover), rather than a bug.
pub fn retryable(error: &RedisError) -> bool {
    !matches!(error.retry_method(), RetryMethod::NoRetry)
}

/// Logs and counts one absorbed failure.
pub fn report(worker: &Worker, channel: &str, entry: &str, conn: &str, failure: Failure, error: &str, answer: &str) {
    worker.metrics.consumer_failed(channel, failure.label());
    tracing::error!(
        kind = failure.label(),
        error,
        channel,
        conn,
        entry,
        "consumer failed; {answer}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_its_message() {
        let ok = catch(async { 7 }).await;
        assert_eq!(ok, Ok(7));
        let text = catch(async { panic!("boom {}", 1) }).await;
        assert_eq!(text, Err::<(), _>("boom 1".to_owned()));
        let fixed = catch(async { panic!("static boom") }).await;
        assert_eq!(fixed, Err::<(), _>("static boom".to_owned()));
        let empty: Vec<u8> = std::hint::black_box(Vec::new());
        let indexed = catch(async move { empty[3] }).await;
        assert!(indexed.is_err_and(|m| m.contains("index out of bounds")));
    }

    #[test]
    fn only_outages_are_retried() {
        let io = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(retryable(&io));
        let client = RedisError::from((redis::ErrorKind::Client, "bug"));
        assert!(!retryable(&client));
    }
}
