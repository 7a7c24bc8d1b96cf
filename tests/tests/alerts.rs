//! The shipped alert rules are checked, each alert is unit-tested, and the metrics they
//! name are the ones the binaries serve:
//! - `promtool check rules docs/alerts.yml`;
//! - `promtool test rules` on every `tests/promtool/*.test.yml`;
//! - every alert of `docs/alerts.yml` appears as `alertname:` in one of those files, with
//!   at least one case where it fires (a new alert without a unit test fails here);
//! - every `switchyard_…` interface or worker metric the rules name is served by a real
//!   interface's or worker's `/metrics` (the display's have `display_alerts.rs`; the
//!   `switchyard status` textfile gauges are not served by a process).
//!
//! promtool comes with Debian's `prometheus` package (`scripts/test` installs it).

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard_tests::promtool::promtool;
use switchyard_tests::supervisor::repo_root;
use switchyard_tests::{bounded, http, ports::free_port, Stack};

fn unit_test_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("tests/promtool"))
        .expect("tests/promtool")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.yml"))
        .map(|name| format!("tests/promtool/{name}"))
        .collect();
    files.sort();
    files
}

/// The value after `key:` on lines that start with it (trimmed).
fn values_of(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(key))
        .map(|rest| rest.trim().trim_matches('"').to_owned())
        .collect()
}

#[test]
fn every_alert_passes_promtool_and_has_a_unit_test_where_it_fires() {
    let checked = promtool(&["check", "rules", "docs/alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let files = unit_test_files();
    assert!(files.len() >= 2, "{files:?}");
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let tested = promtool(&args);
    assert!(!tested.contains("FAILED"), "{tested}");

    let rules = std::fs::read_to_string(repo_root().join("docs/alerts.yml")).expect("alerts.yml");
    let alerts: BTreeSet<String> = values_of(&rules, "- alert:").into_iter().collect();
    assert!(alerts.len() >= 25, "{alerts:?}");
    let mut firing = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(repo_root().join(file)).expect("test file");
        // An alertname followed (before the next alertname) by an exp_labels entry fires.
        for case in text.split("alertname:").skip(1) {
            let name = case.split_whitespace().next().unwrap_or_default().to_owned();
            let body = case.split("eval_time:").next().unwrap_or_default();
            if body.contains("exp_labels:") {
                firing.insert(name);
            }
        }
    }
    let untested: Vec<&String> = alerts.iter().filter(|a| !firing.contains(*a)).collect();
    assert!(
        untested.is_empty(),
        "alerts without a promtool unit test where they fire: {untested:?}"
    );
}

/// `switchyard_…` metric names (without the sample suffixes) in `text`, skipping the
/// display's and the `switchyard status` textfile export's.
fn process_metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("switchyard_") {
        let begin = i + found;
        let mut end = begin;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let before = begin.checked_sub(1).map(|b| bytes[b]);
        let name = &text[begin..end];
        let skip = before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            || name.ends_with('_')
            || [
                "switchyard_display_",
                "switchyard_channel_backlog",
                "switchyard_channel_pending",
            ]
            .iter()
            .any(|p| name.starts_with(p))
            || ["switchyard_channel_workers_alive", "switchyard_status_healthy"].contains(&name)
            || name.starts_with("switchyard_status_timestamp");
        if !skip {
            let mut base = name;
            for suffix in ["_total", "_bucket", "_sum", "_count"] {
                base = base.strip_suffix(suffix).unwrap_or(base);
            }
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

fn served(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_name_is_served() {
    bounded(Duration::from_secs(90), async {
        let rules = std::fs::read_to_string(repo_root().join("docs/alerts.yml")).expect("alerts.yml");
        let expressions: Vec<&str> = rules.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
        let wanted = process_metric_names(&expressions.join("\n"));
        assert!(wanted.len() >= 10, "{wanted:?}");
        let metrics_port = free_port();
        let stack = Stack::builder("alerts-metrics")
            .worker_arg("--metrics-bind")
            .worker_arg(&format!("127.0.0.1:{metrics_port}"))
            .start()
            .await;
        let mut all = served(
            &http::get(&stack.addr, "/metrics")
                .await
                .expect("interface /metrics")
                .body,
        );
        all.extend(served(
            &http::get(&format!("127.0.0.1:{metrics_port}"), "/metrics")
                .await
                .expect("worker /metrics")
                .body,
        ));
        let missing: Vec<&String> = wanted.iter().filter(|name| !all.contains(*name)).collect();
        assert!(
            missing.is_empty(),
            "named by docs/alerts.yml, served by nobody: {missing:?}; served: {all:?}"
        );
    })
    .await
}
