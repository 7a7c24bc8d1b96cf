//! Command-line flags (each also an environment variable) and their checks.
//!
//! A wrong start command must fail loudly and early: every value is checked
//! before the server binds, and an error names the flag that is wrong.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use switchyard_cli::logging::LogFormat;
use switchyard_cli::seconds::{self, HOUR, THIRTY_DAYS};
use switchyard_cli::RedisArgs;

use crate::front::admission::OriginPattern;
use crate::front::forwarded::Cidr;
use crate::front::router::{Route, Routes};
use crate::front::static_files::Mount;
use crate::websocket::limits::ConnLimits;

/// Switchyard interface server: terminates HTTP and WebSocket connections and
/// hands every client event to workers over Redis streams.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchyard-interface", version)]
pub struct Config {
    /// Address to listen on (use 0.0.0.0:$PORT on platforms that assign a port).
    #[arg(long, env = "SWITCHYARD_BIND", default_value = "0.0.0.0:8000")]
    pub bind: SocketAddr,

    /// Serve `/metrics` and `/status` on this address only (e.g. 127.0.0.1:9000,
    /// a port the public cannot reach); the public `--bind` then keeps just
    /// `/healthz` and `/readyz` (404 for the others). The admin port serves all
    /// four. Default: everything on `--bind`.
    #[arg(long, env = "SWITCHYARD_ADMIN_BIND")]
    pub admin_bind: Option<SocketAddr>,

    /// Reverse proxies whose `X-Forwarded-For` / `Forwarded: for=` headers are
    /// believed, as CIDR blocks (`10.0.0.0/8`, `127.0.0.1/32`, `::1/128`; a bare
    /// address means just it), repeatable or comma-separated. A request from one
    /// of them gets the client address the headers name — in the scope workers
    /// see, in `--max-connections-per-ip` and in the logs; from anyone else the
    /// headers are ignored. Default: none (the TCP peer is the client).
    #[arg(long = "trusted-proxy", env = "SWITCHYARD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<Cidr>,

    /// The old readiness rule: `/readyz` also answers 503 while any routed
    /// channel has no live worker. Off by default: every interface shares the
    /// same workers, so a missing worker is not this interface's fault; the
    /// unserved channel's handshakes and requests get 503 at once instead.
    #[arg(long, env = "SWITCHYARD_READY_REQUIRES_WORKERS")]
    pub ready_requires_workers: bool,

    /// Share the port with other interface processes (SO_REUSEPORT): the kernel
    /// spreads new connections over them.
    #[arg(long, env = "SWITCHYARD_REUSE_PORT")]
    pub reuse_port: bool,

    /// Most WebSocket connections open at once; an upgrade beyond it gets 503
    /// with Retry-After and no worker hears of it. 0 = unlimited. Default: the
    /// open-files limit (`ulimit -n`) minus 256, so the process keeps
    /// descriptors for accepting, Redis and plain HTTP.
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most WebSocket connections open at once from one client IP address;
    /// more get 429 with Retry-After. 0 = unlimited. Behind a reverse proxy
    /// every client has the proxy's address unless the proxy is listed in
    /// --trusted-proxy (then the forwarded client address counts).
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Seconds a client has to send a complete request head (request line and
    /// headers) before its TCP connection is closed: the slowloris guard. An
    /// idle keep-alive connection is closed after this long too.
    #[arg(long, env = "SWITCHYARD_HEADER_READ_TIMEOUT", default_value = "10", value_parser = seconds::between(MIN_TIMEOUT, HOUR))]
    pub header_read_timeout: Duration,

    /// Largest request head (request line and headers) in bytes; a larger one
    /// gets 431 Request Header Fields Too Large. Range 1024..=262144.
    #[arg(long, env = "SWITCHYARD_MAX_HEADER_SIZE", default_value_t = 16384)]
    pub max_header_size: usize,

    /// Origin allowed to open WebSockets, repeatable or comma-separated:
    /// `https://app.example.com`, or `https://*.example.com` for its subdomains.
    /// An upgrade from another Origin gets 403. Default: any origin. Requests
    /// without an Origin header (not from a browser) are always allowed.
    #[arg(long = "allowed-origin", env = "SWITCHYARD_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub allowed_origins: Vec<OriginPattern>,

    #[command(flatten)]
    pub redis: RedisArgs,

    /// Prefix of every Redis key, so deployments can share one Redis.
    #[arg(long, env = "SWITCHYARD_PREFIX", default_value = "switchyard")]
    pub prefix: String,

    /// Shards of each channel's stream (`P:chan:{CHANNEL:N}`): a connection's
    /// messages all go to one shard, so a busy channel spreads over the masters
    /// of a Redis Cluster. 0 = one per master (1 on a single Redis).
    #[arg(long = "channel-shards", env = "SWITCHYARD_CHANNEL_SHARDS", default_value_t = 0)]
    pub channel_shards: u16,

    /// Write the messages of one flush bound for the same channel shard as one
    /// stream entry (an `m` field each): one XADD, read and XACK per entry instead
    /// of per message. `false`: one message per entry, for workers older than
    /// packed entries (they handle only an entry's first message) — upgrade the
    /// workers first.
    #[arg(long, env = "SWITCHYARD_PACK_ENTRIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub pack_entries: bool,

    /// WebSocket route `PATH_PREFIX=CHANNEL`, repeatable; the longest matching
    /// prefix wins. Default: /ws/echo/=echo, /ws/chat/=chat, /ws/rooms/=rooms, /ws/display/=display.
    #[arg(long = "route", env = "SWITCHYARD_ROUTES", value_delimiter = ',', value_parser = parse_route)]
    pub routes: Vec<Route>,

    /// HTTP route `PATH_PREFIX=CHANNEL`, repeatable: requests under the prefix
    /// go to the channel's workers as `http.request`. Default (only when no
    /// route of either kind is given): /api/example/=http.example, /api/display/=http.display.
    #[arg(long = "http-route", env = "SWITCHYARD_HTTP_ROUTES", value_delimiter = ',', value_parser = parse_route)]
    pub http_routes: Vec<Route>,

    /// TOML file with `[routes]` (WebSocket) and `[http_routes]` tables
    /// (`"/ws/chat/" = "chat"`), added to --route and --http-route.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Static files `URL_PREFIX=DIR`, repeatable (e.g. `/static/=./static`).
    /// Default: /test/=web/test, /display/=web/display and /web/=web (the
    /// JavaScript client, /web/switchyard.js), for those that exist.
    #[arg(long = "static", env = "SWITCHYARD_STATIC", value_delimiter = ',', value_parser = parse_mount)]
    pub statics: Vec<Mount>,

    /// `Cache-Control: max-age` of static files, in seconds (0 → no-cache:
    /// browsers revalidate with the ETag every time).
    #[arg(long, env = "SWITCHYARD_STATIC_MAX_AGE", default_value_t = 0)]
    pub static_max_age: u64,

    /// Largest HTTP request body in bytes; larger ones get 413.
    #[arg(long, env = "SWITCHYARD_MAX_BODY", default_value_t = 10 << 20)]
    pub max_body: u64,

    /// Seconds an HTTP request waits for a worker to start answering (and,
    /// while a response streams, for its next piece) before 503.
    #[arg(long, env = "SWITCHYARD_HTTP_TIMEOUT", default_value = "60", value_parser = seconds::between(MIN_TIMEOUT, HOUR))]
    pub http_timeout: Duration,

    /// Seconds a WebSocket handshake waits for a worker's answer before 503.
    #[arg(long, env = "SWITCHYARD_CONNECT_TIMEOUT", default_value = "5", value_parser = seconds::between(MIN_TIMEOUT, HOUR))]
    pub connect_timeout: Duration,

    /// Largest WebSocket message (and frame) in bytes; larger ones close with 1009.
    #[arg(long, env = "SWITCHYARD_MAX_MESSAGE_SIZE", default_value_t = 1 << 20)]
    pub max_message_size: usize,

    /// Seconds between the pings the interface sends on every WebSocket, so
    /// proxies and load balancers do not cut quiet sockets (0: no pings).
    #[arg(long, env = "SWITCHYARD_PING_INTERVAL", default_value = "20", value_parser = seconds::between(0.0, HOUR))]
    pub ping_interval: Duration,

    /// Seconds without any frame from a client (data, ping, pong or close)
    /// after which its WebSocket is closed with 1001 "idle timeout": a client
    /// that no longer answers pings is gone. Must exceed --ping-interval (0: never).
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT", default_value = "60", value_parser = seconds::between(0.0, HOUR))]
    pub idle_timeout: Duration,

    /// Messages that may wait for one client that reads too slowly; one more
    /// closes its WebSocket with 1008 "send queue full" (0: unbounded).
    #[arg(long, env = "SWITCHYARD_MAX_SEND_QUEUE", default_value_t = 1024)]
    pub max_send_queue: usize,

    /// Seconds one write to a client may stay blocked before its WebSocket is
    /// dropped as a slow reader, without a close frame (0: no limit).
    #[arg(long, env = "SWITCHYARD_SEND_TIMEOUT", default_value = "30", value_parser = seconds::between(0.0, HOUR))]
    pub send_timeout: Duration,

    /// Messages per second one client may send on average; a client over it is
    /// closed with 1008 "message rate exceeded" (0: no limit).
    #[arg(long, env = "SWITCHYARD_MAX_MESSAGE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub max_message_rate: f64,

    /// Messages one client may send at once before --max-message-rate applies
    /// (0: as many as the rate, at least 1).
    #[arg(long, env = "SWITCHYARD_MESSAGE_BURST", default_value_t = 0)]
    pub message_burst: u32,

    /// Seconds a graceful shutdown may take before every socket is closed anyway.
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_TIMEOUT", default_value = "8", value_parser = seconds::between(MIN_TIMEOUT, HOUR))]
    pub shutdown_timeout: Duration,

    /// Seconds client messages are held while Redis is unreachable before the
    /// connection is closed with 1013 (try again later). Size it above your
    /// Redis failover time (Redis Cluster's node timeout plus the election,
    /// Sentinel's down-after plus the failover; managed Redis: 15-30 s).
    #[arg(long, env = "SWITCHYARD_REDIS_HOLD", default_value = "30", value_parser = seconds::between(MIN_TIMEOUT, HOUR))]
    pub redis_hold: Duration,

    /// Seconds a client message may stay unanswered before the interface looks
    /// at its stream entry: gone (Redis lost it) or pending to no live worker,
    /// it is appended again under the same sequence number (safe: workers apply
    /// each sequence number once); still unanswered --redis-hold later, the
    /// connection is closed with 1013. A message a live worker is still
    /// handling, or one still queued, is left alone. 0: never.
    #[arg(long, env = "SWITCHYARD_REDELIVER_AFTER", default_value = "30", value_parser = seconds::between(0.0, HOUR))]
    pub redeliver_after: Duration,

    /// Entries a channel may hold waiting for workers (queued and in hand,
    /// summed over its shards) before this interface refuses more: a new
    /// message closes its WebSocket with 1013, a handshake or HTTP request
    /// gets 503 with Retry-After. Keeps Redis memory bounded when workers are
    /// stopped or slow. Measured every second. 0: no limit.
    #[arg(long, env = "SWITCHYARD_MAX_BACKLOG", default_value_t = 100_000)]
    pub max_backlog: u64,

    /// CHANNEL=N: --max-backlog for one channel (the channel a route leads
    /// to); repeatable, or comma-separated in the env var.
    #[arg(long = "max-backlog-for", env = "SWITCHYARD_MAX_BACKLOG_FOR", value_delimiter = ',', value_parser = parse_backlog_override)]
    pub max_backlog_for: Vec<(String, u64)>,

    /// Seconds a group membership survives in Redis without being refreshed
    /// (presence counts). Only a backstop: the members of an interface that
    /// died are swept by the live interfaces and workers within ~10 s.
    #[arg(long, env = "SWITCHYARD_GROUP_EXPIRY", default_value = "86400", value_parser = seconds::between(1.0, THIRTY_DAYS))]
    pub group_expiry: Duration,

    /// Interface id (names its reply stream); random by default.
    #[arg(long, env = "SWITCHYARD_INTERFACE_ID")]
    pub id: Option<String>,

    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Print the effective configuration and exit.
    #[arg(long)]
    pub check: bool,
}

/// Routes used when none are given: the built-in apps of `switchyard-worker`.
const DEFAULT_ROUTES: [&str; 4] = [
    "/ws/echo/=echo",
    "/ws/chat/=chat",
    "/ws/rooms/=rooms",
    "/ws/display/=display",
];
/// The HTTP routes used when no route of either kind is given.
const DEFAULT_HTTP_ROUTES: [&str; 2] = ["/api/example/=http.example", "/api/display/=http.display"];

/// Bounds of --max-header-size: below 1 KiB ordinary browser requests fail;
/// above 256 KiB hyper's own read buffer limit would answer first.
const MIN_HEADER_SIZE: usize = 1024;
const MAX_HEADER_SIZE: usize = 256 << 10;

fn parse_route(text: &str) -> Result<Route, String> {
    Route::parse(text)
}

fn parse_mount(text: &str) -> Result<Mount, String> {
    Mount::parse(text)
}

fn parse_origin(text: &str) -> Result<OriginPattern, String> {
    OriginPattern::parse(text)
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    Cidr::parse(text)
}

/// The shortest timeout a flag takes: 0 would mean "fail at once".
const MIN_TIMEOUT: f64 = 0.001;

/// `CHANNEL=N` for --max-backlog-for.
fn parse_backlog_override(text: &str) -> Result<(String, u64), String> {
    let (channel, limit) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not CHANNEL=N"))?;
    if channel.is_empty() || channel.contains(char::is_whitespace) {
        return Err(format!("`{text}`: the channel name is empty or has spaces"));
    }
    let limit = limit
        .parse()
        .map_err(|_| format!("`{text}`: `{limit}` is not a number of entries (0: no limit)"))?;
    Ok((channel.to_owned(), limit))
}

/// Messages per second in [0, 1000000]; 0 turns the limit off.
fn parse_rate(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of messages per second"))?;
    if !(0.0..=1_000_000.0).contains(&value) {
        return Err(format!(
            "{value} is out of range [0, 1000000] messages per second (0: off)"
        ));
    }
    Ok(value)
}

impl Config {
    /// The WebSocket and HTTP route tables from flags, environment and
    /// --config, with the defaults when no route is given at all.
    pub fn route_tables(&self) -> anyhow::Result<(Routes, Routes)> {
        let mut websocket = self.routes.clone();
        let mut http = self.http_routes.clone();
        if let Some(path) = &self.config {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("--config: cannot read {}", path.display()))?;
            let file: ConfigFile =
                toml::from_str(&text).with_context(|| format!("--config: {} is not valid", path.display()))?;
            for (table, routes) in [(file.routes, &mut websocket), (file.http_routes, &mut http)] {
                for (prefix, channel) in table {
                    routes.push(Route::new(&prefix, &channel).map_err(|e| anyhow::anyhow!("--config: {e}"))?);
                }
            }
        }
        if websocket.is_empty() && http.is_empty() {
            websocket = DEFAULT_ROUTES
                .iter()
                .map(|r| Route::parse(r).expect("default routes are valid"))
                .collect();
            http = DEFAULT_HTTP_ROUTES
                .iter()
                .map(|r| Route::parse(r).expect("default HTTP routes are valid"))
                .collect();
        }
        Ok((Routes::new(websocket), Routes::new(http)))
    }

    /// The static mounts: --static, or /test/=web/test, /display/=web/display
    /// and /web/=web for those directories that exist.
    pub fn static_mounts(&self) -> Vec<Mount> {
        if !self.statics.is_empty() {
            return self.statics.clone();
        }
        ["/test/=web/test", "/display/=web/display", "/web/=web"]
            .iter()
            .map(|m| Mount::parse(m).expect("valid"))
            .filter(|m| m.dir.is_dir())
            .collect()
    }

    /// Checks what clap cannot; the error names the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.redis.client()?;
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            bail!("--prefix: must be non-empty without spaces");
        }
        if self.max_message_size < 125 {
            bail!(
                "--max-message-size: {} is too small (at least 125 bytes)",
                self.max_message_size
            );
        }
        if !(MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&self.max_header_size) {
            bail!(
                "--max-header-size: {} is out of range [{MIN_HEADER_SIZE}, {MAX_HEADER_SIZE}] bytes",
                self.max_header_size
            );
        }
        if let (Some(ping), Some(idle)) = (
            seconds::off_if_zero(self.ping_interval),
            seconds::off_if_zero(self.idle_timeout),
        ) {
            if idle <= ping {
                bail!(
                    "--idle-timeout: {} s must exceed --ping-interval ({} s), or a quiet client \
                     is closed before it was even pinged",
                    idle.as_secs_f64(),
                    ping.as_secs_f64()
                );
            }
        }
        if self.message_burst > 0 && self.max_message_rate == 0.0 {
            bail!("--message-burst: needs --max-message-rate");
        }
        if self.channel_shards > switchyard_protocol::shards::MAX_SHARDS {
            bail!(
                "--channel-shards: {} is above the limit of {}",
                self.channel_shards,
                switchyard_protocol::shards::MAX_SHARDS
            );
        }
        if let Some(id) = &self.id {
            if id.is_empty() || id.contains(['!', '{', '}', ' ']) {
                bail!("--id: `{id}` may not be empty or contain '!', '{{', '}}' or spaces");
            }
        }
        if let Some(admin) = self.admin_bind {
            if admin == self.bind {
                bail!("--admin-bind: {admin} is --bind itself; give the admin endpoints a port of their own");
            }
        }
        if self.max_body == 0 {
            bail!("--max-body: must be at least 1 byte");
        }
        for mount in &self.statics {
            if !mount.dir.is_dir() {
                bail!("--static: {} is not a directory", mount.dir.display());
            }
        }
        let (routes, http_routes) = self.route_tables()?;
        let routed: Vec<_> = routes.channels().into_iter().chain(http_routes.channels()).collect();
        for (channel, _) in &self.max_backlog_for {
            if !routed.iter().any(|c| **c == **channel) {
                bail!("--max-backlog-for: no route leads to channel `{channel}`");
            }
        }
        Ok(())
    }

    /// The backlog limit of `channel` (`None`: no limit).
    pub fn backlog_limit(&self, channel: &str) -> Option<u64> {
        let limit = self
            .max_backlog_for
            .iter()
            .rev()
            .find(|(c, _)| c == channel)
            .map_or(self.max_backlog, |(_, limit)| *limit);
        (limit > 0).then_some(limit)
    }

    /// The WebSocket connection ceiling in force: `None` = unlimited.
    pub fn effective_max_connections(&self) -> Option<usize> {
        match self.max_connections {
            Some(0) => None,
            Some(n) => Some(n),
            None => crate::front::admission::default_max_connections(),
        }
    }

    /// The per-connection limits of established WebSockets (built once, at start).
    pub fn conn_limits(&self) -> ConnLimits {
        let rate = self.max_message_rate;
        let burst = if self.message_burst == 0 {
            rate.max(1.0)
        } else {
            f64::from(self.message_burst)
        };
        ConnLimits {
            ping_interval: seconds::off_if_zero(self.ping_interval),
            idle_timeout: seconds::off_if_zero(self.idle_timeout),
            max_send_queue: self.max_send_queue,
            send_timeout: seconds::off_if_zero(self.send_timeout),
            message_rate: (rate > 0.0).then_some((rate, burst)),
        }
    }

    /// The configuration as `--check` prints it: the Redis password hidden.
    pub fn redacted(&self) -> Config {
        Config {
            redis: self.redis.redacted(),
            ..self.clone()
        }
    }
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    routes: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    http_routes: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod admission_flag_tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["switchyard-interface"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
    }

    fn config(args: &[&str]) -> Config {
        parse(args).expect("flags parse")
    }

    #[test]
    fn defaults() {
        let c = config(&[]);
        assert_eq!(c.max_connections_per_ip, 0);
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.max_header_size, 16384);
        assert!(c.allowed_origins.is_empty());
        assert_eq!(
            c.effective_max_connections(),
            crate::front::admission::default_max_connections()
        );
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn max_connections_zero_is_unlimited() {
        assert_eq!(config(&["--max-connections", "0"]).effective_max_connections(), None);
        assert_eq!(config(&["--max-connections", "7"]).effective_max_connections(), Some(7));
    }

    #[test]
    fn origins_repeat_and_split_on_commas() {
        let c = config(&[
            "--allowed-origin",
            "https://a.example.com,https://*.example.org",
            "--allowed-origin",
            "http://localhost:8000",
        ]);
        assert_eq!(c.allowed_origins.len(), 3);
    }

    #[test]
    fn refuses_bad_values_naming_the_flag() {
        for (flag, value) in [
            ("--max-connections", "-1"),
            ("--max-connections", "many"),
            ("--max-connections-per-ip", "-3"),
            ("--header-read-timeout", "0"),
            ("--header-read-timeout", "soon"),
            ("--max-header-size", "big"),
            ("--allowed-origin", "example.com"),
            ("--allowed-origin", "https://example.com/app"),
        ] {
            let error = parse(&[&format!("{flag}={value}")]).expect_err(value).to_string();
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
        for size in ["100", "1023", "262145"] {
            let error = config(&["--max-header-size", size]).validate().unwrap_err().to_string();
            assert!(error.contains("--max-header-size"), "{error}");
        }
        config(&["--max-header-size", "1024"])
            .validate()
            .expect("lower bound is valid");
    }
}

#[cfg(test)]
mod limit_flag_tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, String> {
        let argv = std::iter::once("switchyard-interface").chain(args.iter().copied());
        let config = Config::try_parse_from(argv).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults() {
        let limits = config(&[]).unwrap().conn_limits();
        assert_eq!(
            limits,
            ConnLimits {
                ping_interval: Some(Duration::from_secs(20)),
                idle_timeout: Some(Duration::from_secs(60)),
                max_send_queue: 1024,
                send_timeout: Some(Duration::from_secs(30)),
                message_rate: None,
            }
        );
    }

    #[test]
    fn backlog_limits_per_channel() {
        let config = config(&["--max-backlog", "500", "--max-backlog-for", "chat=20,echo=0"]).unwrap();
        assert_eq!(config.backlog_limit("chat"), Some(20));
        assert_eq!(config.backlog_limit("echo"), None, "0 turns it off");
        assert_eq!(config.backlog_limit("rooms"), Some(500));
        assert_eq!(self::config(&[]).unwrap().backlog_limit("chat"), Some(100_000));
        let unknown = self::config(&["--max-backlog-for", "nope=3"]).unwrap_err();
        assert!(
            unknown.contains("--max-backlog-for") && unknown.contains("nope"),
            "{unknown}"
        );
        let malformed = self::config(&["--max-backlog-for", "chat"]).unwrap_err();
        assert!(malformed.contains("CHANNEL=N"), "{malformed}");
    }

    #[test]
    fn outage_defaults_ride_out_a_failover() {
        let config = config(&[]).unwrap();
        assert!(config.redis_hold >= Duration::from_secs(30));
        assert_eq!(config.redeliver_after, Duration::from_secs(30));
    }

    #[test]
    fn zero_turns_limits_off() {
        let off = ["--ping-interval", "0", "--idle-timeout", "0", "--send-timeout", "0"];
        let limits = config(&off).unwrap().conn_limits();
        assert_eq!(
            (limits.ping_interval, limits.idle_timeout, limits.send_timeout),
            (None, None, None)
        );
        // Either alone may be off.
        assert!(config(&["--ping-interval", "0", "--idle-timeout", "5"]).is_ok());
        assert!(config(&["--ping-interval", "90", "--idle-timeout", "0"]).is_ok());
    }

    #[test]
    fn idle_timeout_must_exceed_the_ping_interval() {
        let error = config(&["--ping-interval", "30", "--idle-timeout", "30"]).unwrap_err();
        assert!(error.starts_with("--idle-timeout:"), "{error}");
        assert!(config(&["--ping-interval", "0.5", "--idle-timeout", "1.5"]).is_ok());
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (flag, value) in [
            ("--ping-interval", "-1"),
            ("--idle-timeout", "soon"),
            ("--send-timeout", "4000"),
            ("--max-send-queue", "-3"),
            ("--max-message-rate", "-1"),
            ("--message-burst", "x"),
        ] {
            let error = config(&[&format!("{flag}={value}")]).unwrap_err();
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
        let error = config(&["--message-burst", "5"]).unwrap_err();
        assert!(error.starts_with("--message-burst:"), "{error}");
    }

    #[test]
    fn proxy_admin_and_readiness_flags() {
        let c = config(&[
            "--trusted-proxy",
            "10.0.0.0/8,127.0.0.1",
            "--trusted-proxy",
            "::1/128",
            "--admin-bind",
            "127.0.0.1:9000",
            "--ready-requires-workers",
        ])
        .unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        assert_eq!(c.admin_bind, Some("127.0.0.1:9000".parse().unwrap()));
        assert!(c.ready_requires_workers);
        let defaults = config(&[]).unwrap();
        assert!(
            defaults.trusted_proxies.is_empty() && defaults.admin_bind.is_none() && !defaults.ready_requires_workers
        );
        for (flag, value) in [
            ("--trusted-proxy", "10.0.0.0/40"),
            ("--trusted-proxy", "proxy.local"),
            ("--admin-bind", "nine"),
        ] {
            let error = config(&[&format!("{flag}={value}")]).unwrap_err();
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
        let error = config(&["--bind", "127.0.0.1:8000", "--admin-bind", "127.0.0.1:8000"]).unwrap_err();
        assert!(error.starts_with("--admin-bind:"), "{error}");
    }

    #[test]
    fn burst_defaults_to_the_rate() {
        let limits = config(&["--max-message-rate", "20"]).unwrap().conn_limits();
        assert_eq!(limits.message_rate, Some((20.0, 20.0)));
        let limits = config(&["--max-message-rate", "0.5"]).unwrap().conn_limits();
        assert_eq!(limits.message_rate, Some((0.5, 1.0)));
        let limits = config(&["--max-message-rate", "2", "--message-burst", "8"])
            .unwrap()
            .conn_limits();
        assert_eq!(limits.message_rate, Some((2.0, 8.0)));
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        let config = Config::try_parse_from(["switchyard-interface"]).unwrap();
        // Names only: setting them would race with the other tests.
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for name in [
            "SWITCHYARD_PING_INTERVAL",
            "SWITCHYARD_IDLE_TIMEOUT",
            "SWITCHYARD_MAX_SEND_QUEUE",
            "SWITCHYARD_SEND_TIMEOUT",
            "SWITCHYARD_MAX_MESSAGE_RATE",
            "SWITCHYARD_MESSAGE_BURST",
            "SWITCHYARD_ADMIN_BIND",
            "SWITCHYARD_TRUSTED_PROXIES",
            "SWITCHYARD_READY_REQUIRES_WORKERS",
        ] {
            assert!(help.contains(name), "{name} missing from --help");
        }
        assert!(config.validate().is_ok());
    }
}
