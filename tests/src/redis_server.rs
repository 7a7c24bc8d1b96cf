//! A real, throw-away `redis-server` for one test.
//!
//! Why this exists: the guarantees are about Redis streams, consumer groups and outages, so
//! the tests run against the real server, not a mock. Each test gets its own server on a free
//! port (never 6379) with its data dir in the test's temp dir, no persistence
//! (`--save '' --appendonly no`) unless started with [`RedisServer::start_persistent`]
//! (append-only file, fsync on every write: a restart keeps the streams, as a production
//! Redis with AOF would). It can be stopped, paused, killed and restarted on the same port
//! (to test outages) and is killed on drop. [`RedisServer::start_with_options`] adds TLS
//! (the port then speaks only TLS) and an ACL user (the default user disabled), as managed
//! Redis services run; [`RedisServer::client_args`] gives the binaries the matching flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::ports::free_port;
use crate::process::Proc;

/// PEM files for a TLS-only server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed `cert` (and any client certificate).
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: the server demands a client certificate, and the harness and the
    /// binaries present this one (certificate, key).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// How to run the server; `Default` is what [`RedisServer::start`] runs.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Append-only file fsynced on every write.
    pub persistent: bool,
    /// TLS only (`--port 0 --tls-port P`).
    pub tls: Option<TlsFiles>,
    /// An ACL user `(name, password)` with every right; the default user is disabled, so
    /// nothing works without these credentials.
    pub user: Option<(String, String)>,
    /// On a Redis Cluster only: replicas per master (default 1).
    pub replicas_per_master: Option<usize>,
}

/// A redis-server child process.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    options: RedisOptions,
    proc: Option<Proc>,
}

impl RedisServer {
    /// Starts a server on a free port, with `dir` as its working directory; waits until it
    /// answers PING.
    pub async fn start(dir: &Path) -> Result<RedisServer> {
        RedisServer::start_with_options(dir, RedisOptions::default()).await
    }

    /// Like [`RedisServer::start`], with an append-only file fsynced on every write, so
    /// data survives `stop`/`restart` (not `kill`, which may lose the last write).
    pub async fn start_persistent(dir: &Path) -> Result<RedisServer> {
        let options = RedisOptions {
            persistent: true,
            ..RedisOptions::default()
        };
        RedisServer::start_with_options(dir, options).await
    }

    /// Starts a server run as `options` say.
    pub async fn start_with_options(dir: &Path, options: RedisOptions) -> Result<RedisServer> {
        let mut last_err = None;
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: dir.to_path_buf(),
                options: options.clone(),
                proc: None,
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap().context("redis-server did not start after 5 attempts"))
    }

    async fn launch(&mut self) -> Result<()> {
        let program = which("redis-server").context(
            "redis-server not found on PATH: install it (`apt-get install -y redis-server`) or run scripts/test",
        )?;
        let (appendonly, fsync) = if self.options.persistent {
            ("yes", "always")
        } else {
            ("no", "everysec")
        };
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            appendonly,
            "--appendfsync",
            fsync,
            "--dir",
            &self.dir.display().to_string(),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let port = self.port.to_string();
        match &self.options.tls {
            None => args.extend(["--port".to_string(), port]),
            Some(tls) => {
                let auth_clients = if tls.client.is_some() { "yes" } else { "no" };
                for (flag, value) in [
                    ("--port", "0".to_string()),
                    ("--tls-port", port),
                    ("--tls-cert-file", tls.cert.display().to_string()),
                    ("--tls-key-file", tls.key.display().to_string()),
                    ("--tls-ca-cert-file", tls.ca.display().to_string()),
                    ("--tls-auth-clients", auth_clients.to_string()),
                ] {
                    args.extend([flag.to_string(), value]);
                }
            }
        }
        if let Some((user, password)) = &self.options.user {
            // One word per argument: redis-server quotes an argument holding spaces.
            let rule = format!("--user {user} on >{password} ~* &* +@all --user default off");
            args.extend(rule.split(' ').map(str::to_string));
        }
        let mut proc = Proc::spawn(&format!("redis-{}", self.port), &program, &args, &[], &self.dir)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = proc.try_status() {
                bail!(
                    "redis-server on port {} exited ({st}) during startup:\n{}",
                    self.port,
                    proc.log_tail(20)
                );
            }
            if self.ping().is_ok() {
                self.proc = Some(proc);
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "redis-server on port {} did not answer PING within 15 s:\n{}",
                    self.port,
                    proc.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`; `rediss://` with TLS, with the user's credentials if
    /// it has one.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() { "rediss" } else { "redis" };
        let credentials = match &self.options.user {
            Some((user, password)) => format!("{user}:{password}@"),
            None => String::new(),
        };
        format!("{scheme}://{credentials}127.0.0.1:{}/", self.port)
    }

    /// The flags that point one of our binaries at this server: `--redis-url`, and the TLS
    /// files it needs.
    pub fn client_args(&self) -> Vec<String> {
        let mut args = vec!["--redis-url".to_string(), self.url()];
        if let Some(tls) = &self.options.tls {
            args.extend(["--redis-ca-file".to_string(), tls.ca.display().to_string()]);
            if let Some((cert, key)) = &tls.client {
                args.extend(["--redis-client-cert".to_string(), cert.display().to_string()]);
                args.extend(["--redis-client-key".to_string(), key.display().to_string()]);
            }
        }
        args
    }

    /// A client for the test's own use (TLS and credentials as the server needs).
    pub fn client(&self) -> Result<redis::Client> {
        let Some(tls) = &self.options.tls else {
            return Ok(redis::Client::open(self.url())?);
        };
        // rustls needs a crypto provider; the first call installs it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client_tls = match &tls.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(cert)?,
                client_key: std::fs::read(key)?,
            }),
            None => None,
        };
        let certificates = redis::TlsCertificates {
            client_tls,
            root_cert: Some(std::fs::read(&tls.ca)?),
        };
        Ok(redis::Client::build_with_tls(self.url(), certificates)?)
    }

    /// A new synchronous connection (for test assertions; keep calls short).
    pub fn conn(&self) -> Result<redis::Connection> {
        Ok(self.client()?.get_connection_with_timeout(Duration::from_secs(5))?)
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    fn ping(&self) -> Result<()> {
        let mut con = self.client()?.get_connection_with_timeout(Duration::from_millis(500))?;
        let pong: String = redis::cmd("PING").query(&mut con)?;
        if pong != "PONG" {
            bail!("unexpected PING answer {pong:?}");
        }
        Ok(())
    }

    /// Graceful stop (SIGTERM; a persistent server has its append-only file), waits for exit.
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.sigterm();
            if p.wait_exit(Duration::from_secs(10)).await.is_none() {
                p.kill9();
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, like a
    /// Redis stuck or cut off by the network. [`RedisServer::resume`] thaws it.
    pub fn pause(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(libc::SIGSTOP);
        }
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(libc::SIGCONT);
        }
    }

    /// Hard stop: SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts the server again on the same port (after `stop` or `kill`); data is gone
    /// unless the server is persistent.
    /// Retries for a while in case the port is still held.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        let mut last_err = None;
        for _ in 0..20 {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        Err(last_err
            .unwrap()
            .context(format!("restarting redis-server on port {}", self.port)))
    }
}

/// Looks a program up on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
