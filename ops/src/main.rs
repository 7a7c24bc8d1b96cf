//! `switchyard`: operations commands for a running deployment.
//!
//! - `status`: per channel (and per shard) backlog, pending, live workers;
//!   per interface its connections; the Redis Cluster's shards — exits
//!   non-zero when a channel has no live worker;
//! - `send-group`: sends a text frame to every member of a group.

mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_cli::{HistoryArgs, RedisArgs};
use switchyard_protocol::groups::{self, GroupFrame};
use switchyard_protocol::{redis_conn, Keys};

/// Switchyard operations: inspect a deployment and send to groups.
#[derive(Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    #[command(flatten)]
    redis: RedisArgs,

    /// Key prefix of the deployment.
    #[arg(long, global = true, env = "SWITCHYARD_PREFIX", default_value = "switchyard")]
    prefix: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Channels (backlog, pending, live workers) and interfaces (connections).
    Status {
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Sends a text frame to every member of GROUP (one publish), keeping it in
    /// the group's history.
    SendGroup {
        group: String,
        message: String,
        /// MESSAGE is a JSON object: add the broadcast's "seq", "epoch" and "group".
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        history: HistoryArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchyard: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("switchyard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = cli.redis.client()?;
    if let redis_conn::Contact::Unreachable(error) = redis_conn::check_at_start(&client).await? {
        anyhow::bail!(
            "--redis-url: cannot reach Redis at {}: {error}",
            redis_conn::redacted(&cli.redis.url)
        );
    }
    let mut con = client.shared()?;
    let keys = Keys::new(cli.prefix);
    match cli.command {
        Command::Status { json } => status::run(&mut con, &keys, json).await,
        Command::SendGroup {
            group,
            message,
            json,
            history,
        } => {
            let frame = if json {
                match serde_json::from_str::<serde_json::Value>(&message) {
                    Ok(serde_json::Value::Object(_)) => GroupFrame::JsonWithSeq(message),
                    _ => anyhow::bail!("--json: MESSAGE must be a JSON object"),
                }
            } else {
                GroupFrame::Text(message)
            };
            let seq = groups::group_send(&mut con, &keys, history.history(), &group, &frame).await?;
            if cli.redis.wait_replicas > 0 {
                let key = keys.group_seq(&group);
                redis_conn::wait_for_replicas(
                    &con,
                    [key.as_str()],
                    cli.redis.wait_replicas,
                    std::time::Duration::from_secs(2),
                )
                .await?;
            }
            println!("sent to group {group} (broadcast #{seq})");
            Ok(ExitCode::SUCCESS)
        }
    }
}
