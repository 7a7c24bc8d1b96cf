//! A stack serving the school display: routes, workers with the demo seeded,
//! and small helpers for its HTTP API, its admin API, its sockets, the
//! workers' metrics and logs.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use switchyard_tests::ws::{self, Incoming, WsClient};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::http_common::{free_port, get, repo_root, wait_for, Client, Options, Reply, RunDir, Stack};

pub const ADMIN: &str = "test-admin";

pub fn interface_args() -> Vec<String> {
    [
        "--route",
        "/ws/display/=display",
        "--http-route",
        "/api/display/=http.display",
    ]
    .map(String::from)
    .to_vec()
}

pub fn worker_args() -> Vec<String> {
    ["--only-channels", "display,http.display", "--seed-display-demo"]
        .map(String::from)
        .to_vec()
}

/// The environment of display workers: the admin token, a census every
/// second (so gauges follow quickly), and `DISPLAY_WS_ENABLED` when given.
pub fn worker_env(ws_default: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DISPLAY_ADMIN_TOKEN", ADMIN.to_owned()),
        ("DISPLAY_CENSUS_SECONDS", "1".to_owned()),
    ];
    if let Some(value) = ws_default {
        env.push(("DISPLAY_WS_ENABLED", value.to_owned()));
    }
    env
}

/// A display stack and where each worker serves `/metrics`.
pub struct Display {
    pub stack: Stack,
    pub metrics: Vec<String>,
}

/// redis, one interface, `workers` display workers (each with
/// `--metrics-bind`) with this environment; ready and seeded.
pub async fn start_with(name: &str, workers: usize, worker_env: Vec<(&'static str, String)>) -> Display {
    let mut metrics = Vec::new();
    let mut worker_list = Vec::new();
    for _ in 0..workers {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = worker_args();
        args.extend(["--metrics-bind".to_owned(), addr.clone()]);
        metrics.push(addr);
        worker_list.push(args);
    }
    let options = Options {
        interface_args: interface_args(),
        workers: worker_list,
        worker_env,
    };
    let stack = Stack::start(name, options).await;
    stack.wait_ready().await;
    let addr = stack.addr.clone();
    let seeded = wait_for(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { status(&addr, "demo-1", "").await.status == 200 }
    })
    .await;
    assert!(seeded.is_ok(), "the demo school was never seeded");
    Display { stack, metrics }
}

/// A stack whose interface also serves the pages (`/display/` from
/// `web/display`, and `/web/` from `web`: the screen is built on
/// `web/switchyard.js`), one display worker, sockets on; ready and seeded.
pub async fn start_pages(name: &str) -> Stack {
    let mut interface_args = interface_args();
    interface_args.extend([
        "--static".to_owned(),
        format!(
            "/display/={},/web/={}",
            repo_root().join("web/display").display(),
            repo_root().join("web").display()
        ),
    ]);
    let options = Options {
        interface_args,
        workers: vec![worker_args()],
        worker_env: worker_env(Some("true")),
    };
    let stack = Stack::start(name, options).await;
    stack.wait_ready().await;
    stack
}

/// [`start_with`] the usual environment; `ws_default` is `DISPLAY_WS_ENABLED`.
pub async fn start(name: &str, workers: usize, ws_default: Option<&str>) -> Stack {
    start_with(name, workers, worker_env(ws_default)).await.stack
}

pub async fn request(addr: &str, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut client = Client::connect(addr).await.expect("connect");
    client
        .send(method, path, headers, Bytes::from(body.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub async fn snapshot(addr: &str, token: &str, dk: &str, etag: Option<&str>) -> Reply {
    let path = format!("/api/display/snapshot/{token}/?dk={dk}");
    let headers: Vec<(&str, &str)> = etag.map(|e| ("if-none-match", e)).into_iter().collect();
    request(addr, Method::GET, &path, &headers, "").await
}

pub async fn status(addr: &str, token: &str, v: &str) -> Reply {
    status_if(addr, token, v, None).await
}

/// A status poll, conditional when `etag` is given.
pub async fn status_if(addr: &str, token: &str, v: &str, etag: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = etag.map(|e| ("if-none-match", e)).into_iter().collect();
    let path = format!("/api/display/status/{token}/?v={v}");
    request(addr, Method::GET, &path, &headers, "").await
}

/// An admin request under `/api/display/admin/` with `token` as bearer (none: no header).
pub async fn admin_as(addr: &str, token: Option<&str>, method: Method, path: &str, body: Option<&Value>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let body = body.map(Value::to_string).unwrap_or_default();
    request(addr, method, &format!("/api/display/admin/{path}"), &headers, &body).await
}

/// An admin request with the right token.
pub async fn admin(addr: &str, method: Method, path: &str, body: Option<&Value>) -> Reply {
    admin_as(addr, Some(ADMIN), method, path, body).await
}

pub async fn put_schedule(addr: &str, school: &str, schedule: &Value, token: Option<&str>) -> Reply {
    let path = format!("schools/{school}/schedule/");
    admin_as(addr, token, Method::PUT, &path, Some(schedule)).await
}

pub async fn set_ws_enabled(addr: &str, enabled: bool) -> Reply {
    admin(addr, Method::PUT, "ws-enabled/", Some(&json!({ "enabled": enabled }))).await
}

/// PUT ws-rollout/; asserts 200 and returns the answer.
pub async fn set_rollout(addr: &str, schools: &[&str], percent: u8) -> Value {
    let body = json!({"schools": schools, "percent": percent});
    let reply = admin(addr, Method::PUT, "ws-rollout/", Some(&body)).await;
    assert_eq!(reply.status, 200, "rollout {body}: {}", reply.text());
    reply.json()
}

/// Creates a school with these screens; asserts 201.
pub async fn create_school(addr: &str, school: &str, screens: &[&str]) {
    let body = json!({"name": format!("School {school}"), "screens": screens});
    let reply = admin(addr, Method::PUT, &format!("schools/{school}/"), Some(&body)).await;
    assert_eq!(reply.status, 201, "create {school}: {}", reply.text());
}

pub async fn overview(addr: &str) -> Value {
    let reply = admin(addr, Method::GET, "overview/", None).await;
    assert_eq!(reply.status, 200, "overview: {}", reply.text());
    reply.json()
}

/// One school of the overview.
pub fn school_of<'a>(overview: &'a Value, school: &str) -> &'a Value {
    overview["schools"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == school))
        .unwrap_or_else(|| panic!("no school {school} in {overview}"))
}

/// One screen of the overview.
pub fn screen_of<'a>(overview: &'a Value, token: &str) -> &'a Value {
    overview["schools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["screens"].as_array().into_iter().flatten())
        .find(|s| s["token"] == token)
        .unwrap_or_else(|| panic!("no screen {token} in {overview}"))
}

pub async fn socket(addr: &str, token: &str, dk: &str) -> WsClient {
    let url = format!("ws://{addr}/ws/display/?token={token}&dk={dk}");
    ws::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: handshake failed: {e}"))
}

/// A socket that got its `hello`.
pub async fn screen(addr: &str, token: &str, dk: &str) -> WsClient {
    let mut client = socket(addr, token, dk).await;
    recv_type(&mut client, "hello", Duration::from_secs(5)).await;
    client
}

/// Next JSON frame of type `kind`, skipping others.
///
/// Waits at least 15 s whatever `within` says: on a loaded 2-core machine a
/// frame can take seconds; how fast invalidations are is measured by the
/// benchmarks (docs/benchmarks.md), not asserted here.
pub async fn recv_type(client: &mut WsClient, kind: &str, within: Duration) -> Value {
    let within = within.max(Duration::from_secs(15));
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = client
            .recv_json(left)
            .await
            .unwrap_or_else(|e| panic!("no {kind} within {within:?}: {e}"));
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Asserts that nothing arrives for `quiet`, then that the socket still
/// answers a ping: it stayed open and was told nothing.
pub async fn assert_untouched(client: &mut WsClient, quiet: Duration, what: &str) {
    match client.recv(quiet).await {
        Err(_) => {}
        Ok(frame) => panic!("{what}: expected nothing, got {frame:?}"),
    }
    client.send_text(r#"{"type": "ping"}"#).await.expect("send ping");
    match client.recv(Duration::from_secs(5)).await {
        Ok(Incoming::Text(text)) if text.contains("pong") => {}
        other => panic!("{what}: no pong: {other:?}"),
    }
}

/// Deletes a group's numbering and history, as when Redis loses them (flushed, or a
/// restart without persistence): its next broadcast starts a new epoch at seq 1.
pub fn lose_group_history(stack: &Stack, group: &str) {
    let keys = switchyard_protocol::Keys::new(switchyard_tests::stack::PREFIX);
    let group_keys = [
        keys.group_seq(group),
        keys.group_epoch(group),
        keys.group_history(group),
    ];
    let mut con = stack
        .redis
        .conn_for_key(&group_keys[0])
        .expect("a connection to the group's node");
    let deleted: u64 = redis::cmd("DEL").arg(&group_keys).query(&mut con).expect("DEL");
    assert_eq!(deleted, 3, "{group} had a numbering, an epoch and a history");
}

/// Every worker's `/metrics`, concatenated.
pub async fn scrape(display: &Display) -> String {
    let mut text = String::new();
    for addr in &display.metrics {
        let reply = get(addr, "/metrics").await.expect("scrape a worker");
        text.push_str(&reply.text());
    }
    text
}

/// Sum of a series over every worker's `/metrics` (`name{labels}` exactly as rendered).
pub async fn metric_sum(display: &Display, series: &str) -> f64 {
    let text = scrape(display).await;
    text.lines()
        .filter_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .sum()
}

/// Every worker's log so far.
pub fn worker_logs(stack: &Stack) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(&stack.dir.path).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("worker-") && name.ends_with(".log") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text
}

/// Log lines of the workers containing every one of `needles`.
pub fn log_lines(stack: &Stack, needles: &[&str]) -> Vec<String> {
    worker_logs(stack)
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// A page in headless Chromium, driven by a script of `tests/browser/` that
/// takes one command per stdin line and answers one JSON line each.
/// `scripts/browser-setup` installs Chromium and playwright-core when missing.
pub struct Browser {
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    node: Child,
    _profile: RunDir,
}

impl Browser {
    pub fn open(script: &str, url: &str) -> Browser {
        let setup = Command::new(repo_root().join("scripts/browser-setup"))
            .status()
            .expect("run scripts/browser-setup");
        assert!(setup.success(), "scripts/browser-setup failed");
        let profile = RunDir::new("display-browser-profile");
        let mut node = tokio::process::Command::new("node")
            .arg(repo_root().join("tests/browser").join(script))
            .arg(url)
            .arg(profile.path.join("profile"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run node");
        Browser {
            stdin: node.stdin.take().expect("stdin"),
            lines: BufReader::new(node.stdout.take().expect("stdout")).lines(),
            node,
            _profile: profile,
        }
    }

    /// Sends one command line; returns the script's JSON answer.
    pub async fn command(&mut self, line: &str, within: Duration) -> Value {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to node");
        let answer = tokio::time::timeout(within, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("node did not answer {line} within {within:?}"))
            .expect("read from node")
            .expect("node still runs");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
    }

    pub async fn quit(mut self, line: &str) {
        let _ = self.stdin.write_all(format!("{line}\n").as_bytes()).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.node.wait()).await;
    }
}
