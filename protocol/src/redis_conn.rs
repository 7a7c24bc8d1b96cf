//! Opening Redis connections: the client (URL, TLS files, credentials) and
//! connections with timeouts that fit each use, on one Redis or a Redis Cluster.
//!
//! Every binary builds its client with [`open`] (through the flags of the
//! `switchyard-cli` crate), so `rediss://`, a private CA (`--redis-ca-file`),
//! mutual TLS (`--redis-client-cert`/`--redis-client-key`) and a cluster
//! (`redis+cluster://host:port,host:port…`) behave the same everywhere, and a
//! bad combination is refused before start, naming the flag.
//! [`check_at_start`] tells a wrong password or certificate (fatal: retrying
//! cannot fix it) from a Redis that is merely away (retried).
//!
//! Two kinds of connection exist on both sides, both a [`Redis`]:
//! - one **shared** connection for ordinary commands; it reconnects by itself
//!   after an outage (redis-rs `ConnectionManager`; on a cluster its
//!   `ClusterConnection`, which also follows MOVED/ASK, topology changes and
//!   failovers),
//! - **dedicated** connections for blocking reads (`XREAD BLOCK`,
//!   `XREADGROUP BLOCK`), so a parked read never delays other commands. Their
//!   response timeout must outlast the block time. Redis answers a connection's
//!   commands in order, so on a cluster a blocking read holds its node's
//!   connection: one dedicated connection per blocking reader.
//!
//! On a cluster a command, pipeline or script may touch one hash slot only;
//! [`SlotBatch`] and [`Redis::slot_group`] split work by slot (on one Redis
//! everything is one group, so nothing is split).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    Pipeline, RedisError, RedisFuture, RedisResult, TlsCertificates, Value,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cluster::SharedCluster;
use crate::keys::slot;
use crate::topology::cluster_shards;

/// Response timeout for ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// TLS files for a `rediss://` URL; all optional (without a CA file the
/// system's trusted roots are used). The flags that fill it are in the
/// `switchyard-cli` crate.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM file of the CA that signs the Redis server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
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
/// that can be checked without connecting: the URL (each seed node of a
/// cluster URL), that TLS files come with a `rediss://` URL, that the files are
/// readable PEM, that cert and key come together. Errors never contain the
/// URL's password.
pub fn open(url: &str, tls: &TlsFiles) -> Result<RedisClient, ConfigError> {
    let shown = redacted(url);
    let (nodes, cluster) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        (cluster_node_urls("redis", rest, &shown)?, true)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        (cluster_node_urls("rediss", rest, &shown)?, true)
    } else if url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://") {
        (vec![url.to_owned()], false)
    } else {
        return Err(config_error(
            "--redis-url",
            format!("`{shown}` must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://"),
        ));
    };
    let infos = nodes
        .iter()
        .map(|node| {
            node.as_str()
                .into_connection_info()
                .map_err(|e| config_error("--redis-url", format!("`{shown}` is not a valid Redis URL: {e}")))
        })
        .collect::<Result<Vec<ConnectionInfo>, ConfigError>>()?;
    let is_tls = matches!(infos[0].addr(), ConnectionAddr::TcpTls { .. });
    let certificates = certificates(tls, is_tls, &shown)?;
    if !cluster {
        let info = infos.into_iter().next().expect("one node for a plain URL");
        let client = match certificates {
            Some(certificates) => Client::build_with_tls(info, certificates),
            None => Client::open(info),
        };
        let client = client.map_err(|e| config_error("--redis-url", format!("`{shown}`: {e}")))?;
        return Ok(RedisClient::Single(Box::new(client)));
    }
    if infos.iter().any(|info| info.redis_settings().db() != 0) {
        return Err(config_error(
            "--redis-url",
            format!("`{shown}`: a Redis Cluster has only database 0"),
        ));
    }
    let setup = ClusterSetup {
        nodes: infos,
        certificates,
    };
    // Builds once here so that a bad combination fails now, not at the first connection.
    setup
        .builder()
        .build()
        .map_err(|e| config_error("--redis-url", format!("`{shown}`: {e}")))?;
    Ok(RedisClient::Cluster(Arc::new(setup)))
}

/// `[user:password@]host:port,host:port[/db]` → one URL per seed node.
fn cluster_node_urls(scheme: &str, rest: &str, shown: &str) -> Result<Vec<String>, ConfigError> {
    let (credentials, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (hosts, path) = match hosts.find('/') {
        Some(slash) => hosts.split_at(slash),
        None => (hosts, "/"),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(|host| format!("{scheme}://{credentials}{host}{path}"))
        .collect();
    if nodes.is_empty() {
        return Err(config_error(
            "--redis-url",
            format!("`{shown}` names no cluster node (redis+cluster://host:port,host:port)"),
        ));
    }
    Ok(nodes)
}

/// The TLS material for a `rediss://` URL; TLS files without TLS are refused.
fn certificates(tls: &TlsFiles, is_tls: bool, shown: &str) -> Result<Option<TlsCertificates>, ConfigError> {
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
        return Ok(None);
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
    Ok(Some(TlsCertificates { client_tls, root_cert }))
}

/// The deployment's Redis as `--redis-url` names it: one server, or a cluster
/// reached through some of its nodes.
#[derive(Clone)]
pub enum RedisClient {
    Single(Box<Client>),
    Cluster(Arc<ClusterSetup>),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisClient::Single(_) => f.write_str("RedisClient::Single"),
            RedisClient::Cluster(setup) => write!(f, "RedisClient::Cluster({} seeds)", setup.nodes.len()),
        }
    }
}

/// What every connection to a cluster is built from.
pub struct ClusterSetup {
    nodes: Vec<ConnectionInfo>,
    certificates: Option<TlsCertificates>,
}

impl ClusterSetup {
    /// A builder with the seeds, TLS material and the retry policy: a command
    /// that meets a failover is retried for a few seconds (MOVED and ASK are
    /// followed at once), then fails to its caller, whose own retry or hold
    /// (`--redis-hold`) takes over.
    fn builder(&self) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT)
            .retries(6)
            .min_retry_wait(50)
            .max_retry_wait(1000);
        if let Some(certificates) = &self.certificates {
            builder = builder.certs(certificates.clone());
        }
        builder
    }
}

impl RedisClient {
    /// Whether `--redis-url` named a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisClient::Cluster(_))
    }

    /// The shared, self-reconnecting connection. It connects lazily, so a
    /// process can start while Redis is away and catch up when it returns.
    pub fn shared(&self) -> RedisResult<Redis> {
        match self {
            RedisClient::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Redis::Single(ConnectionManager::new_lazy_with_config(
                    (**client).clone(),
                    config,
                )?))
            }
            RedisClient::Cluster(setup) => Ok(Redis::SharedCluster(SharedCluster::new(setup.builder().build()?))),
        }
    }

    /// A dedicated connection for blocking reads of up to `block`.
    pub async fn blocking(&self, block: Duration) -> RedisResult<Redis> {
        match self {
            RedisClient::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(block + COMMAND_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                Ok(Redis::Blocking(
                    client.get_multiplexed_async_connection_with_config(&config).await?,
                ))
            }
            RedisClient::Cluster(setup) => {
                let client = setup.builder().response_timeout(block + COMMAND_TIMEOUT).build()?;
                // The first connection can wait for a cluster that is failing over;
                // the reader retries, so bound it.
                match tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_connection()).await {
                    Ok(connection) => Ok(Redis::Cluster(connection?)),
                    Err(_) => Err(RedisError::from((
                        ErrorKind::Io,
                        "no cluster connection within the command timeout",
                    ))),
                }
            }
        }
    }

    /// A cluster client for RESP3 push messages (sharded pub/sub): the pushes
    /// arrive on `sender`. `None` on a single Redis.
    pub fn cluster_push_client(
        &self,
        sender: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Option<RedisResult<ClusterClient>> {
        match self {
            RedisClient::Single(_) => None,
            RedisClient::Cluster(setup) => Some(
                setup
                    .builder()
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(sender)
                    .build(),
            ),
        }
    }

    /// The single server's client (pub/sub on one Redis); `None` on a cluster.
    pub fn single(&self) -> Option<&Client> {
        match self {
            RedisClient::Single(client) => Some(client),
            RedisClient::Cluster(_) => None,
        }
    }
}

/// A connection to the deployment's Redis. Implements redis-rs's
/// [`ConnectionLike`], so commands, pipelines and scripts run on it as on any
/// connection; on a cluster each of them must stay within one hash slot.
#[derive(Clone)]
pub enum Redis {
    /// The shared connection to one server.
    Single(ConnectionManager),
    /// A dedicated connection to one server (blocking reads).
    Blocking(MultiplexedConnection),
    /// The shared connection to a cluster, replaced when it stops answering.
    SharedCluster(SharedCluster),
    /// A dedicated connection to a cluster (blocking reads).
    Cluster(ClusterConnection),
}

impl Redis {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_) | Redis::SharedCluster(_))
    }

    /// The cluster connection underneath, for routing a command to a chosen node.
    fn cluster_connection(&self) -> Option<ClusterConnection> {
        match self {
            Redis::SharedCluster(shared) => Some(shared.connection()),
            Redis::Cluster(con) => Some(con.clone()),
            _ => None,
        }
    }

    /// What work on `key` may be grouped by: its hash slot on a cluster, one
    /// group (0) on a single server, where any keys may share a script or pipeline.
    pub fn slot_group(&self, key: &[u8]) -> u16 {
        if self.is_cluster() {
            slot(key)
        } else {
            0
        }
    }

    /// The primaries of a cluster as `host:port` (one entry, `single`, on a single server).
    pub async fn primaries(&mut self) -> RedisResult<Vec<String>> {
        if !self.is_cluster() {
            return Ok(vec!["single".to_owned()]);
        }
        Ok(cluster_shards(self).await?.into_iter().map(|s| s.primary).collect())
    }
}

/// Every key matching `pattern` (`SCAN`; on a cluster, on every primary).
/// For operators' tools and tests, never on a hot path.
pub async fn scan_keys(con: &mut Redis, pattern: &str) -> RedisResult<Vec<String>> {
    let nodes: Vec<Option<(String, u16)>> = match con.is_cluster() {
        true => cluster_shards(con)
            .await?
            .into_iter()
            .filter_map(|shard| {
                let (host, port) = shard.primary.rsplit_once(':')?;
                Some(Some((host.to_owned(), port.parse().ok()?)))
            })
            .collect(),
        false => vec![None],
    };
    let mut keys = Vec::new();
    for node in nodes {
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let value = match (&node, con.cluster_connection()) {
                (Some((host, port)), Some(mut cluster)) => {
                    let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                        redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        },
                    );
                    cluster.route_command(scan, routing).await?
                }
                _ => scan.query_async(con).await?,
            };
            let (next, found): (u64, Vec<String>) = redis::from_redis_value(value)?;
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Waits until `replicas` replicas have every write made so far on this
/// connection to the nodes that hold `keys` (`WAIT replicas timeout`, sent to
/// each of those nodes once). Fails when fewer replicas answer in time.
///
/// `WAIT` counts the writes of one client connection, and redis-rs keeps one
/// connection per node: a `WAIT` on a node covers everything this process
/// wrote there. On a cluster it goes only to the masters that hold `keys`, so
/// a shard that lost its replica (a failover not yet healed) holds up only the
/// writes that go to it.
pub async fn wait_for_replicas<'k>(
    con: &Redis,
    keys: impl IntoIterator<Item = &'k str>,
    replicas: u32,
    timeout: Duration,
) -> RedisResult<()> {
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(timeout.as_millis() as u64);
    let acknowledged: Vec<i64> = match con.cluster_connection() {
        None => {
            let mut con = con.clone();
            vec![wait.query_async(&mut con).await?]
        }
        Some(cluster) => {
            let mut seen = std::collections::BTreeSet::new();
            let slots: Vec<u16> = keys
                .into_iter()
                .map(|k| slot(k.as_bytes()))
                .filter(|s| seen.insert(*s))
                .collect();
            // One slot per master is enough: the master answers for all its slots.
            let nodes = match con {
                Redis::SharedCluster(shared) => shared.masters_of(&slots).await,
                _ => slots.iter().map(|s| (*s, format!("slot {s}"))).collect(),
            };
            let waits = nodes.into_iter().map(|(slot, _)| {
                let mut cluster = cluster.clone();
                let wait = wait.clone();
                async move {
                    let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                        redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(
                            redis::cluster_routing::Route::new(slot, redis::cluster_routing::SlotAddr::Master),
                        ),
                    );
                    let value = cluster.route_command(wait, routing).await?;
                    Ok::<i64, RedisError>(redis::from_redis_value::<i64>(value)?)
                }
            });
            futures::future::join_all(waits)
                .await
                .into_iter()
                .collect::<RedisResult<Vec<i64>>>()?
        }
    };
    match acknowledged.iter().min() {
        Some(&n) if n < i64::from(replicas) => Err(RedisError::from((
            ErrorKind::Io,
            "fewer replicas than --redis-wait-replicas acknowledged a write",
            format!("{n} of {replicas}"),
        ))),
        _ => Ok(()),
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Redis::Single(con) => con.req_packed_command(cmd),
            Redis::Blocking(con) => con.req_packed_command(cmd),
            Redis::SharedCluster(con) => con.req_packed_command(cmd),
            Redis::Cluster(con) => con.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Redis::Single(con) => con.req_packed_commands(pipeline, offset, count),
            Redis::Blocking(con) => con.req_packed_commands(pipeline, offset, count),
            Redis::SharedCluster(con) => con.req_packed_commands(pipeline, offset, count),
            Redis::Cluster(con) => con.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Redis::Single(con) => con.get_db(),
            Redis::Blocking(con) => con.get_db(),
            Redis::SharedCluster(con) => con.get_db(),
            Redis::Cluster(con) => con.get_db(),
        }
    }
}

/// Commands that go out together: one pipeline on a single server; on a
/// cluster every command at once, each to the node that owns its key. Each
/// command's outcome comes back on its own, so a slot whose node is failing
/// over fails only its own commands.
#[derive(Default)]
pub struct SlotBatch {
    commands: Vec<Cmd>,
}

impl SlotBatch {
    pub fn new() -> SlotBatch {
        SlotBatch::default()
    }

    /// Adds `cmd`, which touches `key` (and only keys of its slot).
    pub fn add(&mut self, _key: &str, cmd: Cmd) -> &mut SlotBatch {
        self.commands.push(cmd);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Runs every command; the outcomes in the order the commands were added.
    ///
    /// On a cluster each command goes out as a request of its own, all at once
    /// (the connection to each node pipelines them on the wire anyway): redis-rs
    /// follows MOVED and ASK for a command, but inside a pipeline's answer a
    /// MOVED is only an error value, so a pipeline to a node that just lost its
    /// slots would fail until something else refreshed the slot map.
    pub async fn run(self, con: &Redis) -> Vec<RedisResult<Value>> {
        if con.is_cluster() {
            let requests = self.commands.into_iter().map(|cmd| {
                let mut con = con.clone();
                async move { cmd.query_async::<Value>(&mut con).await }
            });
            return futures::future::join_all(requests).await;
        }
        if self.commands.is_empty() {
            return Vec::new();
        }
        let mut pipe = redis::pipe();
        let count = self.commands.len();
        for cmd in self.commands {
            pipe.add_command(cmd);
        }
        let mut con = con.clone();
        // `Value` answers keep each command's error in place (`ServerError`).
        match con.req_packed_commands(&pipe, 0, count).await {
            Ok(values) => values
                .into_iter()
                .map(|value| match value {
                    Value::ServerError(error) => Err(error.into()),
                    value => Ok(value),
                })
                .collect(),
            Err(error) => (0..count).map(|_| Err(error.clone())).collect(),
        }
    }

    /// Runs every command; the first error, if any.
    pub async fn run_all(self, con: &Redis) -> RedisResult<()> {
        self.run(con).await.into_iter().try_for_each(|o| o.map(drop))
    }
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
pub async fn check_at_start(client: &RedisClient) -> Result<Contact, ConfigError> {
    let ping = async {
        match client {
            RedisClient::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(CONNECT_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                let mut con = client.get_multiplexed_async_connection_with_config(&config).await?;
                redis::cmd("PING").query_async::<String>(&mut con).await
            }
            RedisClient::Cluster(setup) => {
                let client = setup.builder().retries(1).response_timeout(CONNECT_TIMEOUT).build()?;
                let mut con = client.get_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut con).await
            }
        }
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
    let text = error.to_string();
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        // The cluster client wraps the node's answer in its own error.
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
}

/// A certificate or handshake failure. redis-rs hides the rustls error inside
/// an I/O error, so only its text tells it apart from a network failure.
fn is_tls_error(error: &RedisError) -> bool {
    if error.is_connection_refusal() || error.is_timeout() {
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

    #[test]
    fn opens_cluster_urls_with_every_seed() {
        let client = open(
            "redis+cluster://u:p@127.0.0.1:7001,127.0.0.1:7002",
            &TlsFiles::default(),
        )
        .unwrap();
        assert!(client.is_cluster());
        let RedisClient::Cluster(setup) = &client else {
            unreachable!()
        };
        assert_eq!(setup.nodes.len(), 2);
        assert_eq!(setup.nodes[1].redis_settings().password(), Some("p"));
        assert!(open("rediss+cluster://127.0.0.1:7001", &TlsFiles::default())
            .unwrap()
            .is_cluster());
        assert!(!open("redis://127.0.0.1:1/", &TlsFiles::default()).unwrap().is_cluster());
        let error = open("redis+cluster://", &TlsFiles::default()).unwrap_err().to_string();
        assert!(error.contains("names no cluster node"), "{error}");
        let error = open("redis+cluster://u:secret@h:1/2", &TlsFiles::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("only database 0") && !error.contains("secret"),
            "{error}"
        );
        let tls = TlsFiles {
            ca_file: Some("/nonexistent".into()),
            ..TlsFiles::default()
        };
        let error = open("redis+cluster://h:1", &tls).unwrap_err().to_string();
        assert!(error.starts_with("--redis-ca-file:"), "{error}");
    }

    #[test]
    fn redacts_cluster_passwords() {
        assert_eq!(
            redacted("redis+cluster://sy:secret@h:1,h:2"),
            "redis+cluster://sy:***@h:1,h:2"
        );
    }
}
