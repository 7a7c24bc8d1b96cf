//! The Redis flags of every binary (interface, worker, `switchyard`), written
//! once and flattened into each one's command line: the URL (one server or a
//! cluster), the TLS files, and how many replicas a write waits for.

use std::path::PathBuf;

use switchyard_protocol::redis_conn::{self, check_at_start, redacted, ConfigError, Contact, RedisClient, TlsFiles};

/// The Redis flags.
#[derive(clap::Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL: `redis://[user:password@]host:port/db`, `rediss://…` for TLS,
    /// or a Redis Cluster by some of its nodes: `redis+cluster://[user:password@]host:port,host:port`
    /// (`rediss+cluster://…` for TLS).
    #[arg(
        long = "redis-url",
        global = true,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub url: String,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Replicas that must hold a write before it counts (Redis `WAIT`): the
    /// worker's commit steps and the interface's appends wait for them, so a
    /// failover that promotes a replica loses nothing acknowledged. 0: don't wait
    /// (replication is asynchronous). Writes fail while fewer replicas answer.
    #[arg(
        long = "redis-wait-replicas",
        global = true,
        env = "SWITCHYARD_REDIS_WAIT_REPLICAS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub wait_replicas: u32,
}

/// TLS files for a `rediss://` URL; all optional (without a CA file the
/// system's trusted roots are used).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM file of the CA that signs the Redis server's certificate (for a
    /// private CA; needs a rediss:// URL). Default: the system's trusted roots.
    #[arg(long = "redis-ca-file", value_name = "PATH", global = true, env = "REDIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS with Redis (with --redis-client-key).
    #[arg(
        long = "redis-client-cert",
        value_name = "PATH",
        global = true,
        env = "REDIS_CLIENT_CERT"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --redis-client-cert.
    #[arg(
        long = "redis-client-key",
        value_name = "PATH",
        global = true,
        env = "REDIS_CLIENT_KEY"
    )]
    pub client_key: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

impl RedisArgs {
    /// The client for these flags (see [`redis_conn::open`]).
    pub fn client(&self) -> Result<RedisClient, ConfigError> {
        redis_conn::open(&self.url, &self.tls.files())
    }

    /// The URL with its password hidden, for logs and `--check`.
    pub fn redacted(&self) -> RedisArgs {
        RedisArgs {
            url: redacted(&self.url),
            ..self.clone()
        }
    }

    /// Opens the client and tries Redis once ([`check_at_start`]), logging the
    /// outcome: refused credentials or certificates are an error, a Redis that
    /// is merely unreachable is logged and left to the connections' retries.
    pub async fn open_at_start(&self) -> Result<RedisClient, ConfigError> {
        let client = self.client()?;
        let shown = redacted(&self.url);
        match check_at_start(&client).await? {
            Contact::Ready => {
                tracing::info!(redis = %shown, cluster = client.is_cluster(), "redis reachable")
            }
            Contact::Unreachable(error) => {
                tracing::warn!(redis = %shown, %error, "redis unreachable at start: retrying in the background")
            }
        }
        Ok(client)
    }
}
