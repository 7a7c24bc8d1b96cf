//! Minimal helpers for the HTTP end-to-end tests: a private Redis (the crate's
//! `TestRedis`: one server, or a Redis Cluster with `SWITCHYARD_TEST_REDIS=cluster`),
//! the real interface and worker binaries on free ports, and an HTTP/1.1 client
//! that can keep a connection alive across requests.
//!
//! They live here (not in the crate's harness) so the HTTP tests can grow
//! without colliding with the shared harness. Every process is stopped when
//! its handle drops; when a test fails, the tail of every log is printed and
//! the run directory is kept.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use switchyard_tests::redis_server::RedisOptions;
use switchyard_tests::{TestConn, TestRedis, Topology};
use tokio::net::TcpStream;

/// Directory holding the workspace binaries: `target/<profile>/`, the parent
/// of the test executable's `deps/`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("test executable has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first (cargo build --bins)",
        path.display()
    );
    path
}

/// The repository root (for `web/test`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A scratch directory for logs; kept (and printed) when the test fails.
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(name: &str) -> RunDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create run dir");
        RunDir { path }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(&self.path).into_iter().flatten().flatten() {
                let file = entry.path();
                if file.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&file).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    eprintln!("---- {} (last lines)", file.display());
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
            eprintln!("run directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process, stopped with SIGTERM (then SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String], envs: &[(&str, &str)], dir: &RunDir) -> Proc {
        let log = std::fs::File::create(dir.path.join(format!("{name}.log"))).expect("log file");
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            name: name.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has ended.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM and wait (up to 15 s, then SIGKILL); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.code();
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a test stack runs.
pub struct Options {
    pub interface_args: Vec<String>,
    /// One entry per worker: its extra arguments.
    pub workers: Vec<Vec<String>>,
    pub worker_env: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            interface_args: Vec::new(),
            workers: vec![Vec::new()],
            worker_env: Vec::new(),
        }
    }
}

/// Redis, one interface, some workers — all private to one test.
pub struct Stack {
    pub addr: String,
    pub redis_url: String,
    pub interface: Proc,
    pub workers: Vec<Proc>,
    worker_env: Vec<(&'static str, String)>,
    next_worker: usize,
    /// One server or a Redis Cluster, as `SWITCHYARD_TEST_REDIS` says.
    pub redis: TestRedis,
    // Dropped last: the processes above log into it.
    pub dir: RunDir,
}

impl Stack {
    /// Starts everything; waits for Redis and for the interface to listen
    /// (not for readiness: a test may want a stack without workers).
    pub async fn start(name: &str, options: Options) -> Stack {
        let dir = RunDir::new(name);
        let topology = Topology::from_env();
        let redis = TestRedis::start(&dir.path, topology, RedisOptions::default())
            .await
            .unwrap_or_else(|e| panic!("start the test's Redis ({topology:?}): {e:#}"));
        let redis_url = redis.url();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec![
            "--bind".to_owned(),
            addr.clone(),
            "--redis-url".into(),
            redis_url.clone(),
        ];
        args.extend(options.interface_args);
        let interface = Proc::spawn("interface", &binary("switchyard-interface"), &args, &[], &dir);
        let mut stack = Stack {
            addr,
            redis_url,
            interface,
            workers: Vec::new(),
            worker_env: options.worker_env,
            next_worker: 0,
            redis,
            dir,
        };
        for worker_args in options.workers {
            stack.add_worker(&worker_args);
        }
        let addr = stack.addr.clone();
        wait_for(Duration::from_secs(10), || {
            let addr = addr.clone();
            async move { TcpStream::connect(&addr).await.is_ok() }
        })
        .await
        .expect("interface listens");
        stack
    }

    pub fn add_worker(&mut self, extra: &[String]) -> usize {
        let env = self.worker_env.clone();
        self.add_worker_with_env(extra, &env)
    }

    /// A worker with its own environment instead of the stack's.
    pub fn add_worker_with_env(&mut self, extra: &[String], env: &[(&'static str, String)]) -> usize {
        self.next_worker += 1;
        let name = format!("worker-{}", self.next_worker);
        let mut args = vec![
            "--redis-url".to_owned(),
            self.redis_url.clone(),
            "--name".into(),
            name.clone(),
        ];
        args.extend_from_slice(extra);
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let worker = Proc::spawn(&name, &binary("switchyard-worker"), &args, &envs, &self.dir);
        self.workers.push(worker);
        self.workers.len() - 1
    }

    /// Waits until `/readyz` says 200 and lists no routed channel without a
    /// live worker (a channel without one gets 503 at once).
    pub async fn wait_ready(&self) {
        let addr = self.addr.clone();
        let ready = wait_for(Duration::from_secs(15), || {
            let addr = addr.clone();
            async move {
                get(&addr, "/readyz").await.is_ok_and(|r| {
                    r.status == 200
                        && r.json()["channels_without_workers"]
                            .as_array()
                            .is_some_and(|c| c.is_empty())
                })
            }
        })
        .await;
        assert!(ready.is_ok(), "interface never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A synchronous connection to the test's Redis (a cluster connection on a cluster:
    /// `KEYS` asks every master).
    pub fn redis_conn(&self) -> TestConn {
        self.redis.conn().expect("connect to the test's Redis")
    }
}

/// Polls `check` every 50 ms until it is true or `within` passes.
pub async fn wait_for<F, Fut>(within: Duration, mut check: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(())
}

/// A whole HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 connection; requests on it reuse it (keep-alive).
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    addr: String,
}

impl Client {
    pub async fn connect(addr: &str) -> anyhow::Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(Client {
            sender,
            addr: addr.to_owned(),
        })
    }

    /// Sends a request and reads the whole response (30 s limit).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        let mut request = Request::builder().method(method).uri(path).header("host", &self.addr);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into()))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| anyhow::anyhow!("{path}: no complete response within 30 s"))?
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<Reply> {
    Client::connect(addr).await?.get(path).await
}
