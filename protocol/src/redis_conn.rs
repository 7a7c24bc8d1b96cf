//! Opening Redis connections: the client (URL, TLS files, credentials) and
//! connections with timeouts that fit each use.
//!
//! Every binary builds its client with [`open`], so `rediss://`, a private CA
//! (`--redis-ca-file`) and mutual TLS (`--redis-client-cert`/`--redis-client-key`)
//! behave the same everywhere, and a bad combination is refused before start,
//! naming the flag. [`check_at_start`] tells a wrong password or certificate
//! (fatal: retrying cannot fix it) from a Redis that is merely away (retried).
//!
//! Two kinds of connection exist on both sides:
//! - one **shared** multiplexed connection for ordinary commands; it reconnects
//!   by itself after an outage (redis-rs `ConnectionManager`),
//! - **dedicated** connections for blocking reads (`XREAD BLOCK`,
//!   `XREADGROUP BLOCK`), so a parked read never delays other commands. Their
//!   response timeout must outlast the block time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError,
    RedisResult, TlsCertificates,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Response timeout for ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis flags of every binary (interface, worker, `switchyard`), written
/// once and flattened into each one's command line.
#[derive(clap::Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL: `redis://[user:password@]host:port/db`, or `rediss://…` for TLS.
    #[arg(
        long = "redis-url",
        global = true,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub url: String,

    #[command(flatten)]
    pub tls: TlsFiles,
}

impl RedisArgs {
    /// The client for these flags (see [`open`]).
    pub fn client(&self) -> Result<Client, ConfigError> {
        open(&self.url, &self.tls)
    }

    /// The URL with its password hidden, for logs and `--check`.
    pub fn redacted(&self) -> RedisArgs {
        RedisArgs {
            url: redacted(&self.url),
            tls: self.tls.clone(),
        }
    }

    /// Opens the client and tries Redis once ([`check_at_start`]), logging the
    /// outcome: refused credentials or certificates are an error, a Redis that
    /// is merely unreachable is logged and left to the connections' retries.
    pub async fn open_at_start(&self) -> Result<Client, ConfigError> {
        let client = self.client()?;
        let shown = redacted(&self.url);
        match check_at_start(&client).await? {
            Contact::Ready => tracing::info!(redis = %shown, "redis reachable"),
            Contact::Unreachable(error) => {
                tracing::warn!(redis = %shown, %error, "redis unreachable at start: retrying in the background")
            }
        }
        Ok(client)
    }
}

/// TLS files for a `rediss://` URL; all optional (without a CA file the
/// system's trusted roots are used).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsFiles {
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

/// A Redis setting that cannot work; the message starts with the flag to fix.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

fn config_error(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

/// Builds the client from `--redis-url` and the TLS files. Checks everything
/// that can be checked without connecting: the URL, that TLS files come with a
/// `rediss://` URL, that the files are readable PEM, that cert and key come
/// together. Errors never contain the URL's password.
pub fn open(url: &str, tls: &TlsFiles) -> Result<Client, ConfigError> {
    let shown = redacted(url);
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
        return Err(config_error(
            "--redis-url",
            format!("`{shown}` must start with redis://, rediss:// or unix://"),
        ));
    }
    let info = url
        .into_connection_info()
        .map_err(|e| config_error("--redis-url", format!("`{shown}` is not a valid Redis URL: {e}")))?;
    let is_tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let files = [
        ("--redis-ca-file", &tls.ca_file),
        ("--redis-client-cert", &tls.client_cert),
        ("--redis-client-key", &tls.client_key),
    ];
    if !is_tls {
        if let Some((flag, _)) = files.iter().find(|(_, f)| f.is_some()) {
            return Err(config_error(
                flag,
                format!("needs a rediss:// (TLS) --redis-url, not `{shown}`"),
            ));
        }
        return Client::open(info).map_err(|e| config_error("--redis-url", format!("`{shown}`: {e}")));
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(_), None) => return Err(config_error("--redis-client-cert", "needs --redis-client-key as well")),
        (None, Some(_)) => return Err(config_error("--redis-client-key", "needs --redis-client-cert as well")),
        _ => {}
    }
    // rustls needs a crypto provider; install ours unless the process already has one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read_certificates("--redis-ca-file", path)?),
        None => None,
    };
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let client_cert = read_certificates("--redis-client-cert", cert)?;
            let client_key = read_file("--redis-client-key", key)?;
            PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
                config_error(
                    "--redis-client-key",
                    format!("{} holds no PEM private key: {e}", key.display()),
                )
            })?;
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        _ => None,
    };
    let certificates = TlsCertificates { client_tls, root_cert };
    Client::build_with_tls(info, certificates).map_err(|e| config_error("--redis-url", format!("`{shown}`: {e}")))
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| config_error(flag, format!("cannot read {}: {e}", path.display())))
}

/// Reads a PEM file that must hold at least one certificate.
fn read_certificates(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read_file(flag, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(flag, format!("{} is not valid PEM: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(config_error(
            flag,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

/// The URL with its password replaced by `***`, for logs and `--check`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The last '@' ends the credentials, even if a password holds a raw '@'.
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let (credentials, host) = rest.split_at(at);
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{host}"),
        None => url.to_string(),
    }
}

/// What a first contact with Redis showed.
#[derive(Debug)]
pub enum Contact {
    /// Redis answered PING.
    Ready,
    /// Redis could not be reached (refused, timed out, name not found); the
    /// process starts anyway and its connections keep retrying.
    Unreachable(RedisError),
}

/// One PING at start. Credentials or certificates that Redis refuses are an
/// error (retrying cannot fix them), naming the flag; an unreachable Redis is not.
pub async fn check_at_start(client: &Client) -> Result<Contact, ConfigError> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(CONNECT_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    let ping = async {
        let mut con = client.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    };
    let error = match tokio::time::timeout(CONNECT_TIMEOUT * 2, ping).await {
        Ok(Ok(_)) => return Ok(Contact::Ready),
        Ok(Err(error)) => error,
        Err(_) => {
            let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to PING");
            return Ok(Contact::Unreachable(timeout.into()));
        }
    };
    if is_auth_error(&error) {
        return Err(config_error(
            "--redis-url (REDIS_URL)",
            format!("Redis refused the user or password: {error}"),
        ));
    }
    if is_tls_error(&error) {
        return Err(config_error(
            "--redis-url / --redis-ca-file / --redis-client-cert",
            format!("TLS with Redis failed: {error}"),
        ));
    }
    Ok(Contact::Unreachable(error))
}

fn is_auth_error(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// A certificate or handshake failure. redis-rs hides the rustls error inside
/// an I/O error, so only its text tells it apart from a network failure.
fn is_tls_error(error: &RedisError) -> bool {
    if error.kind() != ErrorKind::Io || error.is_connection_refusal() || error.is_timeout() {
        return false;
    }
    let text = error.to_string().to_ascii_lowercase();
    [
        "certificate",
        "received fatal alert",
        "peer is incompatible",
        "peer misbehaved",
        "handshake",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// The shared, self-reconnecting connection. It connects lazily, so a process
/// can start while Redis is away and catch up when it returns.
pub fn shared(client: &Client) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// A dedicated connection for blocking reads of up to `block`.
pub async fn blocking(client: &Client, block: Duration) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(block + COMMAND_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Backoff for reconnect loops: 50 ms doubling up to 2 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(50),
        }
    }
}

impl Backoff {
    /// Sleeps for the current delay and doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(2));
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redacted("redis://sy:secret@h:1/"), "redis://sy:***@h:1/");
        assert_eq!(redacted("rediss://:p@ss@h:1/0"), "rediss://:***@h:1/0");
        assert_eq!(redacted("redis://h:1/"), "redis://h:1/");
        assert_eq!(redacted("redis://user@h:1/"), "redis://user@h:1/");
    }

    #[test]
    fn refuses_tls_files_without_rediss() {
        let tls = TlsFiles {
            ca_file: Some("/nonexistent".into()),
            ..TlsFiles::default()
        };
        let error = open("redis://u:secret@127.0.0.1:1/", &tls).unwrap_err().to_string();
        assert!(error.starts_with("--redis-ca-file:"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn refuses_unreadable_or_half_given_files() {
        let tls = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let error = open("rediss://127.0.0.1:1/", &tls).unwrap_err().to_string();
        assert!(error.starts_with("--redis-ca-file: cannot read"), "{error}");
        let tls = TlsFiles {
            client_cert: Some("/nonexistent/c.pem".into()),
            ..TlsFiles::default()
        };
        let error = open("rediss://127.0.0.1:1/", &tls).unwrap_err().to_string();
        assert!(error.starts_with("--redis-client-cert:"), "{error}");
        let empty = std::env::temp_dir().join(format!("switchyard-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, b"").unwrap();
        let tls = TlsFiles {
            ca_file: Some(empty.clone()),
            ..TlsFiles::default()
        };
        let error = open("rediss://127.0.0.1:1/", &tls).unwrap_err().to_string();
        let _ = std::fs::remove_file(&empty);
        assert!(error.contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn opens_plain_and_tls_urls() {
        assert!(open("redis://u:p@127.0.0.1:1/", &TlsFiles::default()).is_ok());
        assert!(open("rediss://127.0.0.1:1/", &TlsFiles::default()).is_ok());
        let error = open("http://h/", &TlsFiles::default()).unwrap_err().to_string();
        assert!(error.starts_with("--redis-url:"), "{error}");
    }
}
