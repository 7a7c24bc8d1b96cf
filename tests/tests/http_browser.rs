//! The `/test/` page in a real browser: headless Chromium loads it from the
//! interface's static mount, chats with the workers over a WebSocket,
//! reconnects with the same `session_uuid` and keeps counting, shows the
//! heartbeat — and leaves a screenshot that must be a real picture.
//!
//! `scripts/browser-setup` installs Chromium (apt) and playwright-core (npm)
//! when they are missing; the test runs it first.

mod http_common;

use std::process::Command;
use std::time::Duration;

use http_common::{repo_root, Options, RunDir, Stack};

#[tokio::test]
async fn test_page_counts_reconnects_and_shows_heartbeats() {
    let root = repo_root();
    let setup = Command::new(root.join("scripts/browser-setup"))
        .status()
        .expect("run scripts/browser-setup");
    assert!(setup.success(), "scripts/browser-setup failed");

    let options = Options {
        interface_args: vec![
            "--route".into(),
            "/ws/chat/=chat".into(),
            "--static".into(),
            format!("/test/={}", root.join("web/test").display()),
            "--static".into(),
            format!("/web/={}", root.join("web").display()),
        ],
        worker_env: vec![("CHAT_HEARTBEAT_SECONDS", "1".into())],
        ..Options::default()
    };
    let stack = Stack::start("http-browser", options).await;
    stack.wait_ready().await;

    let browser = RunDir::new("http-browser-profile");
    let screenshot = stack.dir.path.join("test-page.png");
    let mut node = tokio::process::Command::new("node");
    node.arg(root.join("tests/browser/test_page.mjs"))
        .arg(format!("http://{}", stack.addr))
        .arg(&screenshot)
        .arg(browser.path.join("profile"))
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), node.output())
        .await
        .expect("the browser run ends within 90 s")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser run failed:\n{stdout}\n{stderr}");

    let shown: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("page report is not JSON ({e}): {stdout}"));
    assert_eq!(shown["status"], 200, "{shown}");
    assert_eq!(shown["count"], "count: 3", "{shown}");
    assert_eq!(shown["connects"], "connects: 2", "{shown}");
    assert_eq!(shown["state"], "open", "{shown}");
    let heartbeats: u64 = shown["heartbeats"]
        .as_str()
        .and_then(|t| t.strip_prefix("heartbeats: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(heartbeats >= 1, "{shown}");

    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 20_000, "screenshot is only {} bytes", png.len());
    // Kept for a human to look at.
    let keep = http_common::bin_dir().join("http-browser-test-page.png");
    let _ = std::fs::write(&keep, &png);
    eprintln!("screenshot: {} ({} bytes)", keep.display(), png.len());
}
