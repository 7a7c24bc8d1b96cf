//! Worker flags (each also an environment variable) and their checks.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use globset::{Glob, GlobSet, GlobSetBuilder};
use switchyard_cli::logging::LogFormat;
use switchyard_cli::seconds::{self, HOUR, THIRTY_DAYS};
use switchyard_cli::{HistoryArgs, RedisArgs};

/// Switchyard worker: runs the consumers of the channels it serves, reading
/// them from Redis streams. Stop it with SIGTERM: it finishes what it holds
/// and exits 0, and no client socket notices.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchyard-worker", version)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub history: HistoryArgs,

    /// Prefix of every Redis key (must match the interfaces').
    #[arg(long, env = "SWITCHYARD_PREFIX", default_value = "switchyard")]
    pub prefix: String,

    /// Serve only channels matching this glob (repeatable, e.g. `chat`, `http.*`).
    #[arg(long = "only-channels", env = "SWITCHYARD_ONLY_CHANNELS", value_delimiter = ',')]
    pub only_channels: Vec<String>,

    /// Do not serve channels matching this glob (repeatable).
    #[arg(
        long = "exclude-channels",
        env = "SWITCHYARD_EXCLUDE_CHANNELS",
        value_delimiter = ','
    )]
    pub exclude_channels: Vec<String>,

    /// Messages handled at once by this process (across all connections).
    #[arg(long, env = "SWITCHYARD_CONCURRENCY", default_value_t = 512)]
    pub concurrency: usize,

    /// Shards read per channel at least (`P:chan:{CHANNEL:N}`); 0 = one per
    /// primary of a Redis Cluster, 1 on a single Redis. Workers also read every
    /// shard the interfaces announce, so this rarely needs setting.
    #[arg(long = "channel-shards", env = "SWITCHYARD_CHANNEL_SHARDS", default_value_t = 0)]
    pub channel_shards: u16,

    /// Seconds a message may stay unacknowledged with a live owner before any
    /// worker takes it over (backstop; dead workers are taken over at once).
    #[arg(long, env = "SWITCHYARD_CLAIM_IDLE", default_value = "60", value_parser = seconds::between(1.0, HOUR))]
    pub claim_idle: Duration,

    /// Deliveries an entry may have before it is given up: one delivered more
    /// often (each time its handler died or stalled without committing — a
    /// consumer that aborts the process, an out-of-memory kill) is moved to the
    /// dead-letter stream with its delivery count, and its connection is closed
    /// with 1011 (HTTP: answered 500). Panics and errors do not count: they are
    /// absorbed and answered the first time.
    #[arg(long = "max-deliveries", env = "SWITCHYARD_MAX_DELIVERIES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_deliveries: u32,

    /// On a single Redis, commit batches of at least this many plain WebSocket
    /// messages with WATCH/MULTI instead of a Lua script: less Redis CPU per
    /// message, one more round trip per batch (smaller batches keep the
    /// script's single one). 0 = always the script. Not used on a Redis
    /// Cluster or with --redis-wait-replicas.
    #[arg(long = "commit-watch-min", env = "SWITCHYARD_COMMIT_WATCH_MIN", default_value_t = 8)]
    pub commit_watch_min: usize,

    /// With the WATCH/MULTI commit (--commit-watch-min above 0): the new client
    /// messages one read returns, for a consumer that reads its session on
    /// every message (the chat counter), have their sessions read together
    /// under WATCH and commit in one MULTI/EXEC without reading them again:
    /// one round trip per batch instead of one per message, less Redis CPU.
    /// A batch's commit waits for its slowest handler, at most 10 ms (a later
    /// one commits on its own). false = each handler reads its own session.
    #[arg(long = "read-batches", env = "SWITCHYARD_READ_BATCHES", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub read_batches: bool,

    /// Seconds a session lives after its last use.
    #[arg(long, env = "SWITCHYARD_SESSION_TTL", default_value = "86400", value_parser = seconds::between(1.0, THIRTY_DAYS))]
    pub session_ttl: Duration,

    /// Seconds an interface's reply stream outlives the interface.
    #[arg(long, env = "SWITCHYARD_REPLY_TTL", default_value = "60", value_parser = seconds::between(5.0, THIRTY_DAYS))]
    pub reply_ttl: Duration,

    /// Seconds a graceful stop waits for in-flight messages.
    #[arg(long, env = "SWITCHYARD_DRAIN_TIMEOUT", default_value = "20", value_parser = seconds::between(0.0, HOUR))]
    pub drain_timeout: Duration,

    /// This worker's name in the channel streams' consumer group (default: host-pid-random).
    #[arg(long, env = "SWITCHYARD_WORKER_NAME")]
    pub name: Option<String>,

    /// Serve Prometheus metrics (`/metrics`, and `/healthz`) on this address,
    /// e.g. 127.0.0.1:9100 — an operators' port, never a public one. Also
    /// spelled `--admin-bind`, as on the interface.
    #[arg(long, visible_alias = "admin-bind", env = "SWITCHYARD_METRICS_BIND")]
    pub metrics_bind: Option<std::net::SocketAddr>,

    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Write the display demo (school `demo`, screens `demo-1`..`demo-3`) at
    /// start unless the school exists.
    #[arg(long, env = "DISPLAY_SEED_DEMO")]
    pub seed_display_demo: bool,

    /// Print the effective configuration and the channels served, then exit.
    #[arg(long)]
    pub check: bool,
}

impl WorkerConfig {
    /// Checks what clap cannot; the error names the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.redis.client()?;
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            bail!("--prefix: must be non-empty without spaces");
        }
        if self.concurrency == 0 || self.concurrency > 100_000 {
            bail!("--concurrency: {} is out of range 1..=100000", self.concurrency);
        }
        if self.channel_shards > switchyard_protocol::shards::MAX_SHARDS {
            bail!(
                "--channel-shards: {} is above the limit of {}",
                self.channel_shards,
                switchyard_protocol::shards::MAX_SHARDS
            );
        }
        if let Some(name) = &self.name {
            if name.is_empty() || name.contains(char::is_whitespace) {
                bail!("--name: `{name}` may not be empty or contain spaces");
            }
        }
        globs("--only-channels", &self.only_channels)?;
        globs("--exclude-channels", &self.exclude_channels)?;
        Ok(())
    }

    /// Whether this process serves `channel`.
    pub fn serves(&self, channel: &str) -> anyhow::Result<bool> {
        let only = globs("--only-channels", &self.only_channels)?;
        let exclude = globs("--exclude-channels", &self.exclude_channels)?;
        Ok((self.only_channels.is_empty() || only.is_match(channel)) && !exclude.is_match(channel))
    }

    /// This worker's name in the channel streams' consumer group (`--name`).
    pub fn member_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".into());
            let random = uuid::Uuid::new_v4().simple().to_string();
            format!("{host}-{}-{}", std::process::id(), &random[..6])
        })
    }

    /// The configuration as `--check` prints it: the Redis password hidden.
    pub fn redacted(&self) -> WorkerConfig {
        WorkerConfig {
            redis: self.redis.redacted(),
            ..self.clone()
        }
    }
}

fn globs(flag: &str, patterns: &[String]) -> anyhow::Result<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(Glob::new(pattern).with_context(|| format!("{flag}: `{pattern}` is not a valid glob"))?);
    }
    builder.build().with_context(|| format!("{flag}: invalid globs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> WorkerConfig {
        let mut argv = vec!["switchyard-worker"];
        argv.extend_from_slice(args);
        WorkerConfig::parse_from(argv)
    }

    #[test]
    fn channel_globs() {
        let c = config(&["--only-channels", "chat*", "--exclude-channels", "chat.slow"]);
        assert!(c.serves("chat").unwrap());
        assert!(!c.serves("chat.slow").unwrap());
        assert!(!c.serves("echo").unwrap());
        assert!(config(&[]).serves("anything").unwrap());
    }

    #[test]
    fn refuses_bad_values_naming_the_flag() {
        let error = config(&["--concurrency", "0"]).validate().unwrap_err().to_string();
        assert!(error.contains("--concurrency"), "{error}");
        let error = WorkerConfig::try_parse_from(["switchyard-worker", "--max-deliveries", "0"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--max-deliveries"), "{error}");
        assert_eq!(config(&[]).max_deliveries, 5);
        let error = config(&["--only-channels", "a[b"]).validate().unwrap_err().to_string();
        assert!(error.contains("--only-channels"), "{error}");
        let error = config(&["--redis-url", "redis://u:secret@h:1/", "--redis-ca-file", "ca.pem"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--redis-ca-file:") && !error.contains("secret"),
            "{error}"
        );
    }

    #[test]
    fn check_output_hides_the_redis_password() {
        let shown = format!("{:?}", config(&["--redis-url", "redis://sy:secret@h:1/"]).redacted());
        assert!(
            shown.contains("redis://sy:***@h:1/") && !shown.contains("secret"),
            "{shown}"
        );
    }
}
