//! The display's alerts and dashboard row, checked with the real tools and a
//! real worker: `promtool check rules docs/alerts.yml`, `promtool test rules`
//! on the display alerts' unit tests (each alert firing at the runbook's
//! threshold and quiet below it), every query of the dashboard's display row
//! parsed by promtool, and every `switchyard_display_*` metric those name served by a
//! display worker's `/metrics`.
//!
//! promtool comes with Debian's `prometheus` package (`scripts/test` installs it).

mod display_common;
mod http_common;

use std::collections::BTreeSet;
use std::time::Duration;

use display_common::{metric_sum, put_schedule, screen, snapshot, start_with, worker_env, ADMIN};
use http_common::{repo_root, RunDir};
use serde_json::Value;
use switchyard_tests::promtool::promtool;

/// The queries of the dashboard's display row (every panel after its row header).
fn display_queries() -> Vec<String> {
    let path = repo_root().join("docs/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let start = panels
        .iter()
        .position(|p| p["type"] == "row" && p["title"].as_str().is_some_and(|t| t.starts_with("School display")))
        .expect("a School display row");
    panels[start + 1..]
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

/// Every `switchyard_display_…` metric name in a text.
fn display_metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("switchyard_display_") {
        let begin = i + found;
        let before = begin.checked_sub(1).map(|b| bytes[b]);
        let mut end = begin;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // A metric name, not part of a longer word (switchyard:display_…:max is a recording rule).
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
            names.insert(text[begin..end].to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn the_display_alerts_and_dashboard_row_pass_promtool_and_name_metrics_a_worker_serves() {
    let checked = promtool(&["check", "rules", "docs/alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "tests/promtool/display_alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let queries = display_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    let dir = RunDir::new("display-dashboard-rules");
    let mut rules = String::from("groups:\n  - name: dashboard-display\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        let query = query.replace("$__rate_interval", "5m").replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:display:{i}\n        expr: {}\n",
            serde_json::to_string(&query).expect("a JSON string is a YAML string")
        ));
    }
    let file = dir.path.join("dashboard.rules.yml");
    std::fs::write(&file, rules).expect("write rules");
    promtool(&["check", "rules", file.to_str().expect("utf-8 path")]);

    // Every display metric the alerts and the dashboard name is served by a worker.
    let alerts = std::fs::read_to_string(repo_root().join("docs/alerts.yml")).expect("alerts");
    let rules: Vec<&str> = alerts.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let mut wanted = display_metric_names(&rules.join("\n"));
    wanted.extend(display_metric_names(&queries.join("\n")));
    let display = start_with("display-alerts", 1, worker_env(Some("true"))).await;
    let addr = &display.stack.addr;
    // Some of everything, so that every family has a series to show.
    assert_eq!(snapshot(addr, "demo-1", "a", None).await.status, 200);
    let _screen = screen(addr, "demo-1", "a").await;
    screen(addr, "demo-2", "b").await.close().await;
    let edit = serde_json::json!({"title": "x", "periods": []});
    assert_eq!(put_schedule(addr, "demo", &edit, Some(ADMIN)).await.status, 200);
    // The disconnect and the census land a moment later: wait until nothing is missing.
    let missing = || async {
        let text = display_common::scrape(&display).await;
        let served: BTreeSet<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|name| !served.contains(*name) && !served.contains(name.strip_suffix("_total").unwrap_or(name)))
            .cloned()
            .collect();
        (missing, served)
    };
    let complete = http_common::wait_for(Duration::from_secs(10), || async { missing().await.0.is_empty() }).await;
    if complete.is_err() {
        let (missing, served) = missing().await;
        panic!("named by the alerts or the dashboard but served by no worker: {missing:?}; served: {served:?}");
    }
    assert!(metric_sum(&display, "switchyard_display_census_timestamp_seconds").await > 0.0);
}
