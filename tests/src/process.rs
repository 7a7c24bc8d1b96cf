//! Child processes of a test: our binaries (and redis-server).
//!
//! Why this exists: the guarantees under test are about processes — a worker killed with
//! `kill -9`, a worker or interface stopped with SIGTERM and its exit code, nothing left
//! running after a test. Each child's stdout and stderr go to one log file in the test's
//! temporary directory; when a test fails (the harness is dropped while panicking) the tail
//! of each log is printed, which is usually enough to see what went wrong. Children are
//! killed on drop so no test leaks processes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Environment variables of ours that must not leak from the caller's environment into a
/// child (every setting a test relies on is passed explicitly): these names, and every name
/// starting with one of `SCRUBBED_PREFIXES`.
const SCRUBBED_ENV: &[&str] = &["REDIS_URL", "REDIS_CA_FILE", "REDIS_CLIENT_CERT", "REDIS_CLIENT_KEY"];
const SCRUBBED_PREFIXES: &[&str] = &["SWITCHYARD_", "CHAT_"];

/// The names in this process's environment that a child of ours must not inherit.
pub fn scrubbed_env() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(key, _)| key)
        .filter(|key| {
            let k = key.to_string_lossy();
            SCRUBBED_ENV.contains(&k.as_ref()) || SCRUBBED_PREFIXES.iter().any(|p| k.starts_with(p))
        })
        .collect()
}

/// How many log lines to print per process when a test fails.
const TAIL_LINES_ON_FAILURE: usize = 60;

/// A running child process with its output captured to a log file.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `program` with `args` and extra `env`, logging to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> std::io::Result<Proc> {
        let log = unique_log_path(log_dir, name);
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for key in scrubbed_env() {
            cmd.env_remove(key);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,redis=warn");
        }
        cmd.env("RUST_BACKTRACE", "1").env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        // If the test process is killed (a runner's timeout, Ctrl-C) its children must not
        // outlive it: the kernel sends them SIGKILL when the spawning thread goes away. Tests
        // spawn from runtime worker threads, which live as long as the test.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("spawn {}: {e}", program.display())))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
            status: None,
        })
    }

    /// The name given at spawn (used in log file names and messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Sends a signal to the process (no-op if it has already been reaped).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_status().is_some() {
            return;
        }
        // SAFETY: kill(2) on the pid of our own, not yet reaped child.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    /// Sends SIGTERM.
    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.status = Some(st);
            }
        }
    }

    /// Exit status if the process has exited (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log(&self) -> String {
        strip_ansi(&read_lossy(&self.log, 0))
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let status = match self.try_status() {
                Some(st) => format!("exited: {st}"),
                None => "still running".to_string(),
            };
            eprintln!(
                "----- [harness] {} (pid {}, {status}), last {TAIL_LINES_ON_FAILURE} lines of {} -----\n{}\n----- end of {} -----",
                self.name,
                self.child.id(),
                self.log.display(),
                self.log_tail(TAIL_LINES_ON_FAILURE),
                self.name
            );
        }
        self.kill9();
    }
}

fn unique_log_path(dir: &Path, name: &str) -> PathBuf {
    let mut path = dir.join(format!("{name}.log"));
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = dir.join(format!("{name}.{n}.log"));
    }
    path
}

fn read_lossy(path: &Path, from: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Last `lines` lines of a file (reads at most the last 256 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let text = read_lossy(path, len.saturating_sub(256 * 1024));
    let text = strip_ansi(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes ANSI escape sequences (`ESC [ … letter`), so colored logs read well.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
