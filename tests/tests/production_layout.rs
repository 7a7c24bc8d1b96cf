//! The shipped layouts work as shipped: `supervisord/production.conf` (only its paths and
//! ports substituted) becomes ready, serves every routed channel and carries a chat round
//! trip; its operators' ports serve the metrics the public port no longer shows; the systemd
//! units of `deploy/systemd/` pass `systemd-analyze verify`; every command of
//! `deploy/render.yaml` passes `--check`.
//!
//! A newcomer takes these files to a host as they are, so the test runs the files, not a
//! copy of what they say.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use switchyard_tests::ports::free_port;
use switchyard_tests::supervisor::{repo_root, run_binary, served_and_ready};
use switchyard_tests::{bin_dir, bounded, eventually, http, ws, Proc, TestDir, TestRedis, Topology};

/// Picks the leading digit `d` that replaces the `9` of every operators' port of
/// production.conf (`127.0.0.1:9000`, `127.0.0.1:91GN`) so that all of them are free here.
fn free_admin_digit(conf: &str) -> char {
    let ports: Vec<String> = conf
        .match_indices("127.0.0.1:9")
        .map(|(at, _)| {
            let rest = &conf[at + "127.0.0.1:9".len()..];
            rest.chars().take_while(|c| c.is_ascii_digit() || *c == '%').collect()
        })
        .collect();
    for digit in ['2', '3', '4', '5', '6'] {
        let all_free = ports.iter().all(|tail| {
            let fixed: String = tail.chars().take_while(|c| c.is_ascii_digit()).collect();
            (0..10).all(|n| {
                let port = if tail.contains('%') {
                    format!("{digit}{fixed}{n}")
                } else {
                    format!("{digit}{fixed}")
                };
                std::net::TcpListener::bind(format!("127.0.0.1:{port}")).is_ok()
            })
        });
        if all_free {
            return digit;
        }
    }
    panic!("no free range of operators' ports for production.conf");
}

/// Stops supervisord (gracefully: it stops the interface, then the workers) however the
/// test ends.
struct Supervisord(Proc);

impl Drop for Supervisord {
    fn drop(&mut self) {
        self.0.sigterm();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.0.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_conf_becomes_ready_and_serves_every_routed_channel() {
    bounded(Duration::from_secs(180), async {
        assert!(
            switchyard_tests::redis_server::which("supervisord").is_some(),
            "supervisord not found on PATH (scripts/test installs it)"
        );
        let dir = TestDir::new("production-layout");
        let redis = TestRedis::start(dir.path(), Topology::from_env(), Default::default())
            .await
            .expect("start Redis");
        let shipped = std::fs::read_to_string(repo_root().join("supervisord/production.conf")).expect("read");
        let digit = free_admin_digit(&shipped);
        let bin = format!("{}/", bin_dir().display());
        let conf = shipped
            .replace("/usr/local/bin/", &bin)
            .replace("/run/switchyard/", &format!("{}/", dir.path().display()))
            .replace("127.0.0.1:9", &format!("127.0.0.1:{digit}"));
        let conf_path = dir.path().join("production.conf");
        std::fs::write(&conf_path, conf).expect("write conf");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let env = vec![
            ("PORT".to_string(), port.to_string()),
            ("REDIS_URL".to_string(), redis.url()),
        ];
        let args = ["-n".to_string(), "-c".to_string(), conf_path.display().to_string()];
        let supervisord = Proc::spawn("supervisord", Path::new("supervisord"), &args, &env, dir.path())
            .map(Supervisord)
            .expect("spawn supervisord");

        // Ready, and no routed channel without a live worker.
        let ready = eventually(Duration::from_secs(90), || async {
            served_and_ready(&addr).await.then_some(())
        })
        .await;
        let readyz = http::get(&addr, "/readyz").await.map(|r| r.body).unwrap_or_default();
        assert!(
            ready.is_some(),
            "production layout not ready and served within 90 s: {readyz}"
        );

        let mut chat = ws::connect_retry(
            &format!("ws://{addr}/ws/chat/?session_uuid=prod"),
            Duration::from_secs(20),
        )
        .await
        .expect("connect /ws/chat/");
        assert_eq!(chat.chat("hello", Duration::from_secs(15)).await.expect("chat"), 1);
        assert_eq!(chat.chat("again", Duration::from_secs(15)).await.expect("chat"), 2);
        chat.close().await;
        let api = http::get(&addr, "/api/example/").await.expect("GET /api/example/");
        assert_eq!(api.status, 200, "{}", api.body);

        // Operators' ports: metrics there, not on the public port.
        let admin = format!("127.0.0.1:{digit}000");
        assert_eq!(http::status(&addr, "/metrics").await, Some(404));
        assert_eq!(http::status(&addr, "/status").await, Some(404));
        let metrics = http::get(&admin, "/metrics").await.expect("admin /metrics");
        assert!(
            metrics.body.contains("switchyard_websocket_connections_active"),
            "{}",
            metrics.body
        );
        let status = http::get(&admin, "/status").await.expect("admin /status");
        assert!(status.body.contains("\"unserved\":[]"), "{}", status.body);
        let chat_worker = format!("127.0.0.1:{digit}100");
        let worker_metrics = eventually(Duration::from_secs(20), || async {
            http::get(&chat_worker, "/metrics").await.ok().map(|r| r.body)
        })
        .await
        .expect("chat worker's /metrics");
        assert!(
            worker_metrics.contains("switchyard_worker_messages_handled"),
            "{worker_metrics}"
        );

        // `switchyard status` exits 1 when a routed or served channel has no live worker.
        let url = redis.url();
        let args = ["--redis-url", url.as_str(), "status"];
        let out = run_binary(switchyard_tests::OPS_BIN, &args)
            .await
            .expect("switchyard status");
        assert!(
            out.status.success(),
            "switchyard status: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        drop(supervisord);
    })
    .await
}

/// Copies the units with their binaries pointed at this build and the env file at a copy of
/// `env.example`; the worker template as an instance (`switchyard-worker@chat.service`).
fn units_for_here(dir: &Path) -> Vec<PathBuf> {
    let units = repo_root().join("deploy/systemd");
    let env = dir.join("env");
    std::fs::copy(units.join("env.example"), &env).expect("copy env.example");
    let supervisord = switchyard_tests::redis_server::which("supervisord")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/usr/bin/supervisord".into());
    let mut out = Vec::new();
    for (file, name) in [
        ("switchyard.service", "switchyard.service"),
        ("switchyard-interface.service", "switchyard-interface.service"),
        ("switchyard-worker@.service", "switchyard-worker@chat.service"),
    ] {
        let text = std::fs::read_to_string(units.join(file)).expect("read unit");
        let text = text
            .replace("/usr/local/bin/", &format!("{}/", bin_dir().display()))
            .replace("/usr/bin/supervisord", &supervisord)
            .replace(
                "/usr/bin/supervisorctl",
                &supervisord.replace("supervisord", "supervisorctl"),
            )
            .replace("/etc/switchyard/env", &env.display().to_string());
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write unit");
        out.push(path);
    }
    out
}

fn verify(units: &[PathBuf]) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    if switchyard_tests::redis_server::which("systemd-analyze").is_none() {
        eprintln!("SKIPPED: systemd-analyze not installed (apt-get install systemd; scripts/test does)");
        return;
    }
    let dir = TestDir::new("systemd-verify");
    let units = units_for_here(dir.path());
    let (ok, text) = verify(&units);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify complained:\n{text}"
    );
    // The check is live: a unit with a mistake is reported.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        "[Service]\nExecStart=relative/path\nKillMode=sometimes\n[Install]\nWantedBy=multi-user.target\n",
    )
    .expect("write broken unit");
    let (ok, text) = verify(&[broken]);
    assert!(!ok || !text.trim().is_empty(), "a broken unit passed verify");
}

#[tokio::test]
async fn every_render_yaml_command_passes_check() {
    let text = std::fs::read_to_string(repo_root().join("deploy/render.yaml")).expect("read render.yaml");
    let bin = format!("{}/", bin_dir().display());
    let mut checked = 0;
    for line in text.lines() {
        let line = line.trim();
        let command = if let Some(c) = line.strip_prefix("startCommand:") {
            format!("{} --check", c.trim())
        } else if let Some(c) = line.strip_prefix("buildCommand:") {
            // What runs after the build.
            c.split("&&").nth(1).expect("build && check").trim().to_string()
        } else {
            continue;
        };
        let command = command.replace("./target/release/", &bin).replace("$PORT", "10000");
        let words: Vec<&str> = command.split_whitespace().collect();
        let program = Path::new(words[0])
            .file_name()
            .and_then(|n| n.to_str())
            .expect("program");
        let out = run_binary(program, &words[1..]).await.expect("run");
        assert!(
            out.status.success(),
            "{command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} commands found in render.yaml");
}
