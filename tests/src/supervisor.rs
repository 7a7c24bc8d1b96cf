//! The dev stack exactly as an operator runs it: `scripts/up` (supervisord with
//! `supervisord/dev.conf`), driven with `scripts/ctl`, `scripts/rolling-restart` and
//! `switchyard status --json`.
//!
//! Why this exists: the operations guarantees (rolling restarts drop no socket, a channel
//! scales without touching the others, supervisord brings back a killed worker) are about
//! the deployment layout and the scripts, not only the binaries — so these tests run the
//! real supervisord on the real config. `scripts/up` gets `SWITCHYARD_BIN_DIR` (the test's
//! own binaries, no release build) and a free `PORT`; its run directory
//! `run/up-$PORT/` is removed when the test passes and kept when it fails. On drop,
//! supervisord is stopped with SIGTERM (it stops its programs gracefully); whatever it
//! leaves behind is killed by pid.
//!
//! Also here: a chat load that records per-message latency (for the p99 printed during a
//! rolling restart), and a sampler of the channel group's pending entries that tells which
//! consumers handled messages.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use redis::Value;
use serde_json::Value as Json;

use crate::binaries::{bin_dir, binary, INTERFACE_BIN, OPS_BIN, WORKER_BIN};
use crate::http;
use crate::ports::free_port;
use crate::process::Proc;
use crate::stack::{channel_stream, value_to_string};
use crate::testdir::TestDir;

/// The heavy supervisord tests take this lock so that, under `cargo test` (threads), they
/// do not run at the same time on a small machine. (Under nextest each test is its own
/// process and the lock does nothing.)
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the process-wide lock of the heavy tests.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

/// `/readyz` answers 200 and names no routed channel without a live worker.
pub async fn served_and_ready(addr: &str) -> bool {
    let Ok(ready) = http::get(addr, "/readyz").await else {
        return false;
    };
    let body: Json = serde_json::from_str(&ready.body).unwrap_or(Json::Null);
    ready.status == 200
        && body["channels_without_workers"]
            .as_array()
            .is_some_and(|missing| missing.is_empty())
}

/// The repository root (`tests/..`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Configures a [`Supervised`] stack.
pub struct SupervisedBuilder {
    name: String,
    workers: BTreeMap<&'static str, usize>,
    env: Vec<(String, String)>,
}

impl SupervisedBuilder {
    /// Worker processes for `channel` (`chat`, `echo` or `rooms`; defaults 2, 1, 1).
    pub fn workers(mut self, channel: &'static str, n: usize) -> Self {
        self.workers.insert(channel, n);
        self
    }

    /// An environment variable for `scripts/up` (supervisord passes it on to every
    /// program, e.g. `SWITCHYARD_CONCURRENCY` to the workers).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs `scripts/up` and waits until the interface is ready and every configured
    /// worker is live and reading.
    pub async fn start(self) -> Supervised {
        binary(INTERFACE_BIN);
        binary(WORKER_BIN);
        binary(OPS_BIN);
        assert!(
            crate::redis_server::which("supervisord").is_some(),
            "supervisord not found on PATH: install it (`apt-get install -y supervisor`)"
        );
        let repo = repo_root();
        let dir = TestDir::new(&self.name);
        let port = free_port();
        let run_dir = repo.join("run").join(format!("up-{port}"));
        let mut env = vec![
            ("PORT".to_string(), port.to_string()),
            ("SWITCHYARD_BIN_DIR".to_string(), bin_dir().display().to_string()),
        ];
        for (channel, n) in &self.workers {
            env.push((format!("WORKERS_{}", channel.to_ascii_uppercase()), n.to_string()));
        }
        env.extend(self.env.iter().cloned());
        // supervisord writes its own log lines through its stdout and each program's
        // output through a separate `/dev/stdout` opened in append mode: unless stdout
        // itself is in append mode, the two overwrite each other in a regular file.
        let log = dir.path().join("supervisord.log");
        let args = [
            "-c".to_string(),
            r#"exec "$0" >>"$1" 2>&1"#.to_string(),
            repo.join("scripts/up").display().to_string(),
            log.display().to_string(),
        ];
        let proc =
            Proc::spawn("scripts-up", Path::new("/bin/bash"), &args, &env, dir.path()).expect("spawn scripts/up");
        let mut stack = Supervised {
            port,
            addr: format!("127.0.0.1:{port}"),
            repo,
            run_dir,
            redis_url: String::new(),
            log,
            proc: Some(proc),
            _dir: dir,
        };
        stack.wait_ready(&self.workers).await;
        stack
    }
}

/// A running `scripts/up` stack.
pub struct Supervised {
    /// `PORT` of the stack.
    pub port: u16,
    /// `127.0.0.1:<port>` of the interface.
    pub addr: String,
    repo: PathBuf,
    run_dir: PathBuf,
    redis_url: String,
    log: PathBuf,
    proc: Option<Proc>,
    _dir: TestDir,
}

/// One program of the stack as `supervisorctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub state: String,
    pub pid: Option<u32>,
}

/// One live worker as `switchyard status --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveWorker {
    pub consumer: String,
    pub pid: u32,
    pub channels: Vec<String>,
    pub reading: bool,
}

impl Supervised {
    /// A stack named `name` (for its log directory) with the default worker counts.
    pub fn builder(name: &str) -> SupervisedBuilder {
        SupervisedBuilder {
            name: name.to_string(),
            workers: BTreeMap::new(),
            env: Vec::new(),
        }
    }

    async fn wait_ready(&mut self, workers: &BTreeMap<&'static str, usize>) {
        let env_file = self.run_dir.join("env");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.proc.as_mut().and_then(|p| p.try_status()) {
                panic!("scripts/up exited during startup ({st})");
            }
            if self.redis_url.is_empty() {
                if let Ok(text) = std::fs::read_to_string(&env_file) {
                    if let Some(url) = text.lines().find_map(|l| l.strip_prefix("REDIS_URL=")) {
                        // Written with printf %q for the shell: a cluster URL's commas come escaped.
                        self.redis_url = url.trim().replace('\\', "");
                    }
                }
            }
            // Ready, and every routed channel served (one without a live worker gets 503 at once).
            if !self.redis_url.is_empty() && served_and_ready(&self.addr).await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stack on port {} not ready within 60 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // supervisorctl shows a program (and its pid) as RUNNING once it has stayed up for
        // startsecs.
        let running = crate::wait::eventually(Duration::from_secs(60), || async {
            let programs = self.programs().await.ok()?;
            // The `redis` program does not start when the stack uses another Redis
            // (REDIS_URL given, or REDIS_CLUSTER: scripts/redis-cluster runs the nodes).
            programs
                .iter()
                .all(|(name, p)| p.state == "RUNNING" || (name == "redis" && p.state == "STOPPED"))
                .then_some(())
        })
        .await;
        assert!(running.is_some(), "not every program RUNNING within 60 s");
        for channel in ["chat", "echo", "rooms"] {
            let want = workers
                .get(channel)
                .copied()
                .unwrap_or(if channel == "chat" { 2 } else { 1 });
            self.wait_reading(channel, want, Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    /// Waits until exactly `n` live workers of `channel` report `reading`.
    pub async fn wait_reading(&self, channel: &str, n: usize, timeout: Duration) -> Result<Vec<LiveWorker>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let live = self.live_workers(channel).await.unwrap_or_default();
            if live.len() == n && live.iter().all(|w| w.reading) {
                return Ok(live);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{channel}: want {n} live reading workers, have {live:?} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The Redis URL of the stack (from `run/up-$PORT/env`).
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// A synchronous Redis connection to the stack's Redis.
    pub fn redis_conn(&self) -> Result<redis::Connection> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        Ok(client.get_connection_with_timeout(Duration::from_secs(5))?)
    }

    /// `ws://127.0.0.1:<port><path>`
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The run directory `run/up-$PORT/`.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.current_dir(&self.repo)
            .env_remove("REDIS_URL")
            .env_remove("BIN")
            .env("PORT", self.port.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs one of the repository's scripts (`scripts/<name> args…`) for this stack.
    pub async fn script(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = self.command(&self.repo.join("scripts").join(name));
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().await.with_context(|| format!("run scripts/{name}"))
    }

    /// `scripts/ctl args…` (supervisorctl); the exit code is not checked (`status` exits
    /// non-zero while a program is not running).
    pub async fn ctl(&self, args: &[&str]) -> Result<Output> {
        self.script("ctl", args, &[]).await
    }

    /// Every program of the stack (`supervisorctl status`), by full name
    /// (`workers-chat:workers-chat-0`).
    pub async fn programs(&self) -> Result<BTreeMap<String, Program>> {
        let out = self.ctl(&["status"]).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut programs = BTreeMap::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(state)) = (parts.next(), parts.next()) else {
                continue;
            };
            let rest: Vec<&str> = parts.collect();
            let pid = rest
                .windows(2)
                .find(|w| w[0] == "pid")
                .and_then(|w| w[1].trim_end_matches(',').parse().ok());
            programs.insert(
                name.to_string(),
                Program {
                    state: state.to_string(),
                    pid,
                },
            );
        }
        if programs.is_empty() {
            bail!(
                "scripts/ctl status printed nothing: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(programs)
    }

    /// Pids of the RUNNING programs whose name starts with `prefix` (e.g. `workers-echo:`).
    pub async fn pids(&self, prefix: &str) -> Result<BTreeMap<String, u32>> {
        Ok(self
            .programs()
            .await?
            .into_iter()
            .filter(|(name, p)| name.starts_with(prefix) && p.state == "RUNNING")
            .filter_map(|(name, p)| Some((name, p.pid?)))
            .collect())
    }

    /// `switchyard status --json`: the report and the exit code.
    pub async fn status(&self) -> Result<(Json, i32)> {
        let out = self
            .command(&binary(OPS_BIN))
            .args(["--redis-url", &self.redis_url, "status", "--json"])
            .output()
            .await
            .context("run switchyard status")?;
        let report: Json = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "switchyard status --json: not JSON: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((report, out.status.code().unwrap_or(-1)))
    }

    /// Live workers serving `channel`, from `switchyard status --json`.
    pub async fn live_workers(&self, channel: &str) -> Result<Vec<LiveWorker>> {
        let (report, _) = self.status().await?;
        let mut out = Vec::new();
        if let Some(workers) = report["workers"].as_object() {
            for (consumer, info) in workers {
                let channels: Vec<String> = info["channels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect();
                if channels.iter().any(|c| c == channel) {
                    out.push(LiveWorker {
                        consumer: consumer.clone(),
                        pid: info["pid"].as_u64().unwrap_or(0) as u32,
                        channels,
                        reading: info["reading"].as_bool().unwrap_or(false),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Sets the number of worker processes of `channel` the way an operator does on the
    /// dev stack: a `numprocs` override in `run/up-$PORT/conf.d/`, then
    /// `scripts/ctl update workers-<channel>` (supervisord re-reads its config and
    /// replaces that group only).
    pub async fn scale(&self, channel: &str, n: usize) -> Result<Output> {
        let file = self.run_dir.join("conf.d").join(format!("workers-{channel}.conf"));
        std::fs::write(&file, format!("[program:workers-{channel}]\nnumprocs={n}\n"))
            .with_context(|| format!("write {}", file.display()))?;
        self.ctl(&["update", &format!("workers-{channel}")]).await
    }

    /// Tail of the combined supervisord output (every program logs to it).
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::tail(&self.log, lines)
    }

    /// Every program supervisord runs, as (pid, start time) read from `/proc`: the
    /// children of the supervisord process.
    fn children(&self) -> Vec<(u32, u64)> {
        let Some(parent) = self.proc.as_ref().map(|p| p.pid()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some((ppid, started)) = stat(pid) {
                    if ppid == parent {
                        out.push((pid, started));
                    }
                }
            }
        }
        out
    }
}

/// (parent pid, start time in clock ticks) of a process, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid … starttime is field 22; comm may contain spaces, so count
    // from after the last ')': state is field 3.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let children = self.children();
        if let Some(mut proc) = self.proc.take() {
            // supervisord stops its programs in order (interface, workers, redis).
            proc.sigterm();
            let deadline = Instant::now() + Duration::from_secs(45);
            while proc.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if proc.is_running() {
                eprintln!("[supervisor] supervisord did not stop within 45 s; killing it");
            }
            drop(proc); // kill -9 if still running; prints its log tail if the test failed
        }
        for (pid, started) in children {
            // Only a program supervisord started and left behind: same pid, same start time.
            if stat(pid).is_some_and(|(_, s)| s == started) {
                eprintln!("[supervisor] killing leftover program, pid {pid}");
                // SAFETY: kill(2) on a pid we just checked is still that program.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if failed {
            eprintln!(
                "----- [supervisor] last 80 lines of {} -----\n{}\n----- end -----",
                self.log.display(),
                self.log_tail(80)
            );
            eprintln!("[supervisor] test failed: run dir kept in {}", self.run_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// Samples `XPENDING <channel stream> workers` (the summary form) every few
/// milliseconds on a thread of its own and counts, per consumer, the samples in which it
/// held messages: with a continuous load, a consumer that handles messages shows up.
pub struct PendingSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<HashMap<String, u64>>>,
}

impl PendingSampler {
    /// Starts sampling `channel`'s stream on the Redis at `redis_url`.
    pub fn start(redis_url: &str, channel: &str) -> Result<PendingSampler> {
        let client = redis::Client::open(redis_url)?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(5))?;
        let stream = channel_stream(channel);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen: HashMap<String, u64> = HashMap::new();
            while !flag.load(Ordering::SeqCst) {
                let v: Value = redis::cmd("XPENDING").arg(&stream).arg("workers").query(&mut con)?;
                if let Value::Array(parts) = v {
                    if let Some(Value::Array(consumers)) = parts.get(3) {
                        for c in consumers {
                            if let Value::Array(pair) = c {
                                if let Some(name) = pair.first().and_then(value_to_string) {
                                    *seen.entry(name).or_default() += 1;
                                }
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(seen)
        });
        Ok(PendingSampler { stop, handle })
    }

    /// Stops and returns, per consumer, the number of samples in which it held messages.
    pub fn finish(self) -> Result<HashMap<String, u64>> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().map_err(|_| anyhow!("pending sampler panicked"))?
    }
}

/// Messages pending to `consumer` in `channel`'s group (`XPENDING … - + 1000 consumer`).
pub fn pending_of(con: &mut redis::Connection, channel: &str, consumer: &str) -> Result<usize> {
    let v: Value = redis::cmd("XPENDING")
        .arg(channel_stream(channel))
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(consumer)
        .query(con)?;
    Ok(match v {
        Value::Array(items) => items.len(),
        _ => 0,
    })
}

/// Runs one of our binaries with `args` (no inherited Redis URL or SWITCHYARD_*
/// settings) and returns its output.
pub async fn run_binary(name: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(binary(name));
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    for key in crate::process::scrubbed_env() {
        cmd.env_remove(key);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| anyhow!("{name} {args:?} did not exit within 30 s"))??;
    Ok(out)
}
