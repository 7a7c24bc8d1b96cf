//! Command-line options shared by every scenario (target, output, server PIDs, connecting).
//!
//! Kept in structs flattened into each subcommand so the scripts can pass the same flags to
//! `rtt`, `hold`, `connect-storm` and `broadcast`, and so every bound is checked in one place.
//! `broadcast` takes several `--url`s, so the target ([`CommonArgs`]) and the rest
//! ([`RunArgs`]) are separate.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::target::Target;

/// Longest run any scenario accepts, in seconds: every run is bounded in time.
pub const MAX_SECONDS: f64 = 3600.0;

/// Options every one-target scenario takes: the target, and [`RunArgs`].
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// WebSocket URL of the chat-counter endpoint (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws/chat/", env = "SWITCHYARD_BENCH_URL")]
    pub url: String,

    #[command(flatten)]
    pub run: RunArgs,
}

impl CommonArgs {
    /// The parsed, loopback-checked target.
    pub fn target(&self) -> Result<Target> {
        Target::parse(&self.url)
    }
}

/// Options every scenario takes besides its target: output, server PIDs, connecting.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Print one JSON line with all figures on stdout (human text goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// A name for the system under test, copied into the report (e.g. daphne, switchyard).
    #[arg(long, default_value = "")]
    pub label: String,

    /// Server process to sample for CPU (and RSS, for `hold`) (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Handshakes in flight at once while opening connections (`broadcast`: connect + join).
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,

    /// Seconds allowed for one TCP connect + WebSocket handshake.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// Seconds allowed for opening all connections; those not started by then are skipped
    /// (counted as `not_attempted`) and the run goes on with the ones that are open.
    #[arg(long, default_value_t = 300.0)]
    pub setup_timeout: f64,

    /// Use source addresses 127.0.0.(2 + offset·k)…; give each concurrent load process its own.
    #[arg(long, default_value_t = 0)]
    pub source_ip_offset: u32,
}

impl RunArgs {
    /// The connect timeout as a Duration (checked).
    pub fn connect_timeout(&self) -> Result<Duration> {
        seconds("--connect-timeout", self.connect_timeout, 0.001, 120.0)
    }

    /// The time allowed for opening all connections (checked).
    pub fn setup_timeout(&self) -> Result<Duration> {
        seconds("--setup-timeout", self.setup_timeout, 0.1, MAX_SECONDS)
    }

    /// The deadline for starting new connections, from now.
    pub fn setup_deadline(&self) -> Result<tokio::time::Instant> {
        Ok(tokio::time::Instant::now() + self.setup_timeout()?)
    }
}

/// Checks a seconds value lies in `[min, max]` and converts it.
pub fn seconds(name: &str, value: f64, min: f64, max: f64) -> Result<Duration> {
    if !value.is_finite() || value < min || value > max {
        bail!("{name} must be between {min} and {max} seconds, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}
