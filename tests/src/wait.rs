//! Waiting without sleeping blindly: an overall time limit for a test, and polling for a
//! condition with a deadline.
//!
//! Why: the machine is small and shared, so fixed sleeps are either flaky or slow; every
//! wait in the harness and the tests polls with a generous deadline instead.

use std::future::Future;
use std::time::Duration;

/// Runs a test body with an overall time limit, so a hung test fails (and prints the process
/// logs) instead of hanging the suite.
pub async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("test exceeded its time limit of {limit:?}"),
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or gives up after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
