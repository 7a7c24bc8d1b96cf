//! `switchyard-bench`: the command line over the load-tool scenarios (`rtt`, `hold`,
//! `connect-storm`, `broadcast`) and the reference server.
//!
//! It exists to parse flags, build the multi-threaded tokio runtime with `--threads` workers,
//! and turn a failed run into a clear message and a non-zero exit.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use switchyard_loadgen::{broadcast, hold, reference, rtt, storm};

/// Load tool for Switchyard and its Django Channels peers (chat-counter WebSocket protocol,
/// loopback targets only).
#[derive(Parser, Debug)]
#[command(name = "switchyard-bench", version, about)]
struct Cli {
    /// Tokio worker threads for the load tool.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Round trips over N connections: closed loop, or --rate messages/s per connection.
    Rtt(rtt::RttArgs),
    /// Open N idle connections, hold them, report server KiB per connection.
    Hold(hold::HoldArgs),
    /// Connections per second: open (and close, or keep) as fast as possible.
    ConnectStorm(storm::StormArgs),
    /// N members in one room over one or more interfaces; time from a group send to the last
    /// member's delivery (rooms protocol).
    Broadcast(broadcast::BroadcastArgs),
    /// Serve the chat counter from this tool (Rust, no Redis) to test or calibrate the tool.
    ReferenceServer(reference::ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("switchyard-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if cli.threads == 0 || cli.threads > 64 {
        bail!("--threads must be between 1 and 64");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .enable_all()
        .build()?;
    let threads = cli.threads;
    runtime.block_on(async move {
        match cli.scenario {
            Scenario::Rtt(args) => rtt::run(args, threads).await.map(|_| ()),
            Scenario::Hold(args) => hold::run(args, threads).await.map(|_| ()),
            Scenario::ConnectStorm(args) => storm::run(args, threads).await.map(|_| ()),
            Scenario::Broadcast(args) => broadcast::run(args, threads).await.map(|_| ()),
            Scenario::ReferenceServer(args) => reference::run(args).await,
        }
    })
}
