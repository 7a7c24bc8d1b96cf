//! A real, throw-away `redis-server` for one test.
//!
//! Why this exists: the guarantees are about Redis streams, consumer groups and outages, so
//! the tests run against the real server, not a mock. Each test gets its own server on a free
//! port (never 6379) with its data dir in the test's temp dir, no persistence
//! (`--save '' --appendonly no`) unless started with [`RedisServer::start_persistent`]
//! (append-only file, fsync on every write: a restart keeps the streams, as a production
//! Redis with AOF would). It can be stopped, paused, killed and restarted on the same port
//! (to test outages) and is killed on drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::ports::free_port;
use crate::process::Proc;

/// A redis-server child process.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    proc: Option<Proc>,
}

impl RedisServer {
    /// Starts a server on a free port, with `dir` as its working directory; waits until it
    /// answers PING.
    pub async fn start(dir: &Path) -> Result<RedisServer> {
        RedisServer::start_with(dir, false).await
    }

    /// Like [`RedisServer::start`], with an append-only file fsynced on every write, so
    /// data survives `stop`/`restart` (not `kill`, which may lose the last write).
    pub async fn start_persistent(dir: &Path) -> Result<RedisServer> {
        RedisServer::start_with(dir, true).await
    }

    async fn start_with(dir: &Path, persistent: bool) -> Result<RedisServer> {
        let mut last_err = None;
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: dir.to_path_buf(),
                persistent,
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
        let (appendonly, fsync) = if self.persistent {
            ("yes", "always")
        } else {
            ("no", "everysec")
        };
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
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
            if ping(&self.url()).is_ok() {
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

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A new synchronous connection (for test assertions; keep calls short).
    pub fn conn(&self) -> Result<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_connection_with_timeout(Duration::from_secs(5))?)
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
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

fn ping(url: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(Duration::from_millis(500))?;
    let pong: String = redis::cmd("PING").query(&mut con)?;
    if pong != "PONG" {
        bail!("unexpected PING answer {pong:?}");
    }
    Ok(())
}

/// Looks a program up on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
