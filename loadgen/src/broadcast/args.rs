//! The `broadcast` options and their bounds.
//!
//! `broadcast` is the one scenario with several targets (one `--url` per interface) and the
//! only one limited by how many sockets one process may hold, so its flags and checks are its
//! own; `run` gets them back as [`Settings`], every value already checked, before any socket is
//! opened.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::limits;
use crate::options::{self, RunArgs, MAX_SECONDS};
use crate::target::Target;

/// Most members one process may hold (the open-files limit is 20,000 and cannot be raised).
pub const MAX_MEMBERS: usize = 19_000;

/// Most broadcasts per run (the delivery table is members × broadcasts timestamps).
pub const MAX_BROADCASTS: usize = 1_000;

/// Which server-side rooms protocol the members and the sender speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoomsProtocol {
    /// Switchyard's `rooms` app: deliveries carry the room's broadcast number `seq`, which is
    /// checked for gaps and repeats.
    SwitchyardRooms,
    /// The Channels peer's rooms consumer (bench/peers): same JSON, no `seq`.
    ChannelsRooms,
}

impl RoomsProtocol {
    pub(super) fn has_seq(self) -> bool {
        matches!(self, RoomsProtocol::SwitchyardRooms)
    }
}

/// `broadcast` options. `--url` is repeatable here (one per interface), so only the run flags
/// (`RunArgs`), not `CommonArgs`, are flattened in.
#[derive(Args, Debug, Clone)]
pub struct BroadcastArgs {
    /// WebSocket URL of a rooms endpoint (loopback only); repeat once per interface — members
    /// are spread round-robin, the sender uses the first.
    #[arg(long = "url", value_name = "URL", required = true)]
    pub urls: Vec<String>,

    /// Where the sender connects (loopback only); default: the first --url. A URL no member
    /// uses keeps the sender's own round trips off the interfaces that fan out.
    #[arg(long, value_name = "URL")]
    pub sender_url: Option<String>,

    /// Rooms protocol spoken by the server.
    #[arg(long, value_enum, default_value_t = RoomsProtocol::SwitchyardRooms)]
    pub protocol: RoomsProtocol,

    /// Room to join and broadcast to.
    #[arg(long, default_value = "bench")]
    pub room: String,

    /// Member connections (at most 19,000 per process).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,

    /// Broadcasts to send.
    #[arg(long, default_value_t = 50)]
    pub broadcasts: usize,

    /// Milliseconds between the starts of two broadcasts.
    #[arg(long, default_value_t = 200)]
    pub interval: u64,

    /// Seconds to wait after every member joined, before the first broadcast.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,

    /// After the last broadcast, seconds to wait for deliveries still missing.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,

    /// Seconds each member may take to get `{"joined": room}` after connecting.
    #[arg(long, default_value_t = 30.0)]
    pub answer_timeout: f64,

    #[command(flatten)]
    pub run: RunArgs,
}

/// The checked options: durations converted, targets parsed and loopback-checked.
pub(super) struct Settings {
    pub targets: Vec<Target>,
    pub sender_target: Target,
    pub settle: Duration,
    pub drain: Duration,
    pub answer_timeout: Duration,
    pub connect_timeout: Duration,
    pub setup_timeout: Duration,
}

impl BroadcastArgs {
    /// Checks every option (the first bad one is the error) and converts them.
    pub(super) fn check(&self) -> Result<Settings> {
        let targets = self.urls.iter().map(|u| Target::parse(u)).collect::<Result<Vec<_>>>()?;
        if targets.is_empty() {
            bail!("give at least one --url");
        }
        let sender_target = match &self.sender_url {
            Some(url) => Target::parse(url)?,
            None => targets[0].clone(),
        };
        if self.members == 0 {
            bail!("--members must be at least 1");
        }
        if self.members > MAX_MEMBERS {
            bail!(
                "{} members do not fit in one process: it may hold at most {MAX_MEMBERS} sockets (open-files \
                 limit 20,000 per process). Run {} processes in the same --room, each with --members ≤ {MAX_MEMBERS} \
                 and its own --source-ip-offset (0, 1, 2 …); each reports its own members against its own \
                 broadcasts and counts the others' as foreign.",
                self.members,
                self.members.div_ceil(MAX_MEMBERS)
            );
        }
        limits::check_connections(self.members as u64 + 1)?;
        if self.broadcasts == 0 || self.broadcasts > MAX_BROADCASTS {
            bail!("--broadcasts must be between 1 and {MAX_BROADCASTS}");
        }
        if self.interval > 60_000 {
            bail!("--interval must be at most 60000 ms");
        }
        let schedule = Duration::from_millis(self.interval).saturating_mul(self.broadcasts as u32);
        if schedule.as_secs_f64() > MAX_SECONDS {
            bail!("--broadcasts × --interval must stay under {MAX_SECONDS} s");
        }
        let room_ok = (1..=64).contains(&self.room.len())
            && self
                .room
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !room_ok {
            bail!("--room must be 1–64 letters, digits, '-', '_' or '.' (valid for both Switchyard and Channels)");
        }
        let settle = options::seconds("--settle", self.settle, 0.0, 600.0)?;
        let drain = options::seconds("--drain-timeout", self.drain_timeout, 0.0, MAX_SECONDS)?;
        let answer_timeout = options::seconds("--answer-timeout", self.answer_timeout, 0.1, 600.0)?;
        let connect_timeout = self.run.connect_timeout()?;
        let setup_timeout = self.run.setup_timeout()?;
        Ok(Settings {
            targets,
            sender_target,
            settle,
            drain,
            answer_timeout,
            connect_timeout,
            setup_timeout,
        })
    }
}
