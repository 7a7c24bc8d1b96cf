//! `switchyard`: operations commands for a running deployment.
//!
//! - `status`: per channel backlog, pending, live workers; per interface its
//!   connections — exits non-zero when a channel has no live worker;
//! - `send-group`: sends a text frame to every member of a group.

mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_protocol::groups::{self, GroupFrame};
use switchyard_protocol::{redis_conn, Keys};

/// Switchyard operations: inspect a deployment and send to groups.
#[derive(Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    /// Redis URL of the deployment.
    #[arg(long, global = true, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    redis_url: String,

    /// PEM file of the CA that signs the Redis server's certificate (needs a rediss:// URL).
    #[arg(long, global = true, env = "REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,

    /// PEM client certificate for mutual TLS with Redis (with --redis-client-key).
    #[arg(long, global = true, env = "REDIS_CLIENT_CERT")]
    redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(long, global = true, env = "REDIS_CLIENT_KEY")]
    redis_client_key: Option<PathBuf>,

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
    /// Sends a text frame to every member of GROUP (one publish).
    SendGroup {
        group: String,
        message: String,
        /// MESSAGE is a JSON object: add the broadcast's sequence number as "seq".
        #[arg(long)]
        json: bool,
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
    let tls = redis_conn::TlsFiles {
        ca_file: cli.redis_ca_file,
        client_cert: cli.redis_client_cert,
        client_key: cli.redis_client_key,
    };
    let client = redis_conn::open(&cli.redis_url, &tls)?;
    if let redis_conn::Contact::Unreachable(error) = redis_conn::check_at_start(&client).await? {
        anyhow::bail!(
            "--redis-url: cannot reach Redis at {}: {error}",
            redis_conn::redacted(&cli.redis_url)
        );
    }
    let mut con = redis_conn::shared(&client)?;
    let keys = Keys::new(cli.prefix);
    match cli.command {
        Command::Status { json } => status::run(&mut con, &keys, json).await,
        Command::SendGroup { group, message, json } => {
            let frame = if json {
                match serde_json::from_str::<serde_json::Value>(&message) {
                    Ok(serde_json::Value::Object(_)) => GroupFrame::JsonWithSeq(message),
                    _ => anyhow::bail!("--json: MESSAGE must be a JSON object"),
                }
            } else {
                GroupFrame::Text(message)
            };
            let seq = groups::group_send(&mut con, &keys, &group, &frame).await?;
            println!("sent to group {group} (broadcast #{seq})");
            Ok(ExitCode::SUCCESS)
        }
    }
}
