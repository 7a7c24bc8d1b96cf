//! The test page in rooms mode (`/test/?room=lobby`, built on `web/switchyard.js`) in headless
//! Chromium, with two interfaces: the page is in a room; its interface is killed; 50
//! broadcasts are sent while it reconnects through the second interface; the page shows all
//! of them, in order, exactly once (it joins again since the last broadcast it had, and the
//! interface delivers the rest from the room's history).
//!
//! `scripts/browser-setup` installs Chromium and playwright-core when missing.

mod display_common;
mod http_common;

use std::time::Duration;

use display_common::Browser;
use http_common::repo_root;
use serde_json::{json, Value};
use switchyard_tests::bounded;
use switchyard_tests::cluster::Cluster;

/// The page, driven by `tests/browser/rooms_page.mjs`.
struct Page(Browser);

impl Page {
    async fn wait_count(&mut self, n: usize, timeout_ms: u64) -> Value {
        self.0
            .command(
                &format!("wait_count {n} {timeout_ms}"),
                Duration::from_millis(timeout_ms + 30_000),
            )
            .await
    }

    async fn wait_state(&mut self, state: &str, timeout_ms: u64) -> Value {
        self.0
            .command(
                &format!("wait_state {state} {timeout_ms}"),
                Duration::from_millis(timeout_ms + 30_000),
            )
            .await
    }
}

fn texts(shown: &Value) -> Vec<String> {
    shown["texts"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_misses_no_broadcast_while_it_moves_to_another_interface() {
    bounded(Duration::from_secs(180), async {
        let root = repo_root();
        let mut cluster = Cluster::builder("rooms-browser")
            .single_redis()
            .interfaces(2)
            .interface_arg("--static")
            .interface_arg(&format!(
                "/test/={},/web/={}",
                root.join("web/test").display(),
                root.join("web").display()
            ))
            .start()
            .await;
        let (a, b) = (cluster.addrs[0].clone(), cluster.addrs[1].clone());
        let url = format!("http://{a}/test/?room=lobby&ws=ws://{a},ws://{b}&backoff_min=200&backoff_max=1000");
        let mut page = Page(Browser::open("rooms_page.mjs", &url));
        let open = page.wait_state("open", 20_000).await;
        assert_eq!(open["ok"], true, "the page never opened its socket: {open}");
        cluster
            .wait_group_size("room:lobby", 1, Duration::from_secs(10))
            .await
            .unwrap_or_else(|n| panic!("the page did not join room:lobby ({n} members)"));

        let say = |k: u64| json!({"room": "lobby", "text": format!("b{k}")}).to_string();
        for k in 1..=3 {
            cluster.send_group("room:lobby", &say(k), true).await.unwrap();
        }
        let before = page.wait_count(3, 20_000).await;
        assert_eq!(before["ok"], true, "the first broadcasts: {before}");

        // Its interface dies; the page goes to the other one while 50 more are sent.
        cluster.interface(0).kill9();
        for k in 4..=53 {
            cluster.send_group("room:lobby", &say(k), true).await.unwrap();
        }
        let after = page.wait_count(53, 30_000).await;
        assert_eq!(after["ok"], true, "not every broadcast shown: {after}");
        // Anything extra (a duplicate) would have arrived by now.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let shown = page.wait_count(53, 1_000).await;
        assert_eq!(
            shown["seqs"],
            json!((1..=53).collect::<Vec<u64>>()),
            "in order, exactly once: {shown}"
        );
        assert_eq!(
            texts(&shown),
            (1..=53).map(|k| format!("b{k}")).collect::<Vec<_>>(),
            "{shown}"
        );
        assert_eq!(shown["recover_failed"], 0, "{shown}");
        assert_eq!(shown["connects"], "connects: 2", "one reconnect: {shown}");
        assert_eq!(shown["epochs"].as_array().map(Vec::len), Some(1), "{shown}");
        page.0.quit("quit").await;
    })
    .await
}
