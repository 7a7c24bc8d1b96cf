//! The stop signals, as a future.
//!
//! Each binary's `main` installs the handlers before it starts serving (a
//! SIGTERM that arrives during start-up is not lost) and hands the future to
//! `run(…, shutdown)`, mini-redis style: the library never touches signals, so
//! tests and embedders stop a server by completing any future they like.

use std::future::Future;

use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Installs SIGTERM and SIGINT handlers; the future completes with the first
/// of them to arrive.
pub fn stop_requested() -> std::io::Result<impl Future<Output = i32> + Send + 'static> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
    Ok(async move {
        let signal = signals.next().await.unwrap_or(SIGTERM);
        tracing::info!(signal = signal_name(signal), "stop requested");
        signal
    })
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "signal",
    }
}
