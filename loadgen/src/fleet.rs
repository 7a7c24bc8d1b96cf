//! Opening many connections at once, with bounded concurrency, counting failures by kind.
//!
//! Connect bursts are not what `rtt` measures, and an unbounded burst of thousands of SYNs
//! overflows the server's accept backlog; so connections are opened a few hundred at a time
//! before the measured window starts.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, ConnectFailure, Ws};
use crate::source::SourceAddrs;
use crate::target::Target;

/// Connect failures by kind, plus the first error text for the human report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ConnectFailures {
    pub tcp: u64,
    pub rejected: u64,
    pub handshake: u64,
    pub timeout: u64,
    /// Never started: the --setup-timeout deadline passed first.
    pub not_attempted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl ConnectFailures {
    /// Counts one failure.
    pub fn add(&mut self, kind: ConnectFailure, err: &anyhow::Error) {
        match kind {
            ConnectFailure::Tcp => self.tcp += 1,
            ConnectFailure::Rejected => self.rejected += 1,
            ConnectFailure::Handshake => self.handshake += 1,
            ConnectFailure::Timeout => self.timeout += 1,
        }
        if self.first_error.is_none() {
            self.first_error = Some(format!("{err:#}"));
        }
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.tcp + self.rejected + self.handshake + self.timeout + self.not_attempted
    }

    /// E.g. `3 (tcp 0, rejected 3, handshake 0, timeout 0; first: upgrade refused with HTTP 503)`.
    pub fn human(&self) -> String {
        let mut s = format!(
            "{} (tcp {}, rejected {}, handshake {}, timeout {}",
            self.total(),
            self.tcp,
            self.rejected,
            self.handshake,
            self.timeout
        );
        if self.not_attempted > 0 {
            s.push_str(&format!(", not attempted {}", self.not_attempted));
        }
        if let Some(e) = &self.first_error {
            s.push_str("; first: ");
            s.push_str(e);
        }
        s.push(')');
        s
    }
}

/// Opens `n` connections (numbered 0..n; connection i to `targets[i % len]`), at most
/// `concurrency` handshakes in flight, starting none after `deadline`. Returns the open ones
/// with their numbers, in number order.
pub async fn open_all(
    targets: &[Target],
    n: usize,
    sources: SourceAddrs,
    concurrency: usize,
    timeout: Duration,
    deadline: Instant,
) -> (Vec<(usize, Ws)>, ConnectFailures) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut failures = ConnectFailures::default();
    for i in 0..n {
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, permits.clone().acquire_owned()).await else {
            failures.not_attempted = (n - i) as u64;
            break;
        };
        // Connections take the targets in turn.
        let target = targets[i % targets.len()].clone();
        let source = sources.ip_for(i as u64);
        set.spawn(async move {
            let result = client::connect(&target, source, timeout).await;
            drop(permit);
            (i, result)
        });
    }
    let mut open = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(ws))) => open.push((i, ws)),
            Ok((_, Err((kind, err)))) => failures.add(kind, &err),
            Err(join_err) => failures.add(ConnectFailure::Handshake, &anyhow::anyhow!(join_err)),
        }
    }
    open.sort_by_key(|(i, _)| *i);
    (open, failures)
}
