//! The admin page (`/display/admin/`) in headless Chromium, against a real
//! stack and a real screen socket: signing in (a wrong token is refused),
//! schools and screens with their binding and mode, the switch, the rollout
//! (and its error message), editing a schedule (the screen is invalidated),
//! unbinding one screen (its socket closes with 4408) and a whole school.
//! Every step is checked through the admin API as well as on the page.
//!
//! `scripts/browser-setup` installs Chromium and playwright-core when missing.

mod display_common;
mod http_common;

use std::time::Duration;

use display_common::{admin, recv_type, screen, screen_of, snapshot, Browser, ADMIN};
use http::Method;
use serde_json::{json, Value};

struct AdminPage(Browser);

impl AdminPage {
    async fn run(&mut self, command: Value) -> Value {
        let answer = self.0.command(&command.to_string(), Duration::from_secs(40)).await;
        assert_eq!(answer["ok"], true, "{command}: {answer}");
        answer
    }

    async fn fill(&mut self, sel: &str, value: &str) {
        self.run(json!({"op": "fill", "sel": sel, "value": value})).await;
    }

    async fn click(&mut self, sel: &str) {
        self.run(json!({"op": "click", "sel": sel})).await;
    }

    /// Waits until the JavaScript expression is truthy in the page (or fails, saying `what`).
    async fn wait(&mut self, js: &str, what: &str) -> Value {
        let command = json!({"op": "wait", "js": js, "ms": 8000});
        let answer = self.0.command(&command.to_string(), Duration::from_secs(40)).await;
        if answer["ok"] != true {
            let status = self.text("#status").await;
            panic!("{what}: {answer}; status line: {status:?}");
        }
        answer["value"].clone()
    }

    async fn text(&mut self, sel: &str) -> String {
        let js = format!("document.querySelector({sel:?})?.textContent ?? null");
        let answer = self.run(json!({"op": "eval", "js": js})).await;
        answer["value"].as_str().unwrap_or_default().to_owned()
    }
}

/// A JavaScript expression: the text of `sel` equals `text`.
fn shows(sel: &str, text: &str) -> String {
    format!("document.querySelector({sel:?})?.textContent === {text:?}")
}

#[tokio::test]
async fn the_admin_page_shows_screens_flips_the_switch_and_the_rollout_edits_and_unbinds() {
    let stack = display_common::start_pages("display-admin-browser").await;
    let addr = stack.addr.clone();
    let url = format!("http://{addr}/display/admin/?refresh=0.3");
    let mut page = AdminPage(Browser::open("display_admin.mjs", &url));
    page.wait("document.body.dataset.state === 'signed-out'", "signed out at first")
        .await;

    page.fill("#token", "wrong").await;
    page.click("#signin-button").await;
    page.wait("document.body.dataset.state === 'error'", "a wrong token is refused")
        .await;
    assert!(page.text("#status").await.contains("unauthorized"));
    page.fill("#token", ADMIN).await;
    page.click("#signin-button").await;
    page.wait(
        "document.body.dataset.state === 'ready' && document.querySelectorAll('tr.screen[data-school=\"demo\"]').length === 3",
        "the demo school with its three screens",
    )
    .await;

    // A screen on its socket shows as ws, with its device.
    let mut sock = screen(&addr, "demo-1", "dev-a").await;
    page.wait(
        &format!(
            "{} && {}",
            shows("tr[data-token=\"demo-1\"] td.mode", "ws"),
            shows("tr[data-token=\"demo-1\"] td.device", "dev-a")
        ),
        "demo-1 on its socket",
    )
    .await;

    // The switch: off tells the screen, and the page says so; then on again.
    page.wait(&shows("#ws-state", "on"), "the switch shows on").await;
    page.click("#ws-toggle").await;
    let config = recv_type(&mut sock, "config", Duration::from_secs(5)).await;
    assert_eq!(config["ws_enabled"], false);
    page.wait(&shows("#ws-state", "off"), "the switch shows off").await;
    let stored = admin(&addr, Method::GET, "ws-rollout/", None).await.json();
    assert_eq!(stored["ws_enabled"], false);
    page.click("#ws-toggle").await;
    page.wait(&shows("#ws-state", "on"), "the switch back on").await;

    // The rollout: a bad percentage gets the API's message; a good one is stored.
    page.fill("#rollout-schools", "demo").await;
    page.fill("#rollout-percent", "101").await;
    page.click("#rollout-apply").await;
    page.wait(
        "document.querySelector('#status').textContent.includes('percent must be an integer')",
        "the rollout's 400 is shown",
    )
    .await;
    page.fill("#rollout-percent", "0").await;
    page.click("#rollout-apply").await;
    page.wait(
        "document.querySelector('#status').textContent.startsWith('rollout applied:')",
        "the rollout is applied",
    )
    .await;
    let stored = admin(&addr, Method::GET, "ws-rollout/", None).await.json();
    assert_eq!(stored["rollout"], json!({"schools": ["demo"], "percent": 0}));

    // Editing the schedule: the screen is invalidated, the API has the edit.
    page.click("tr[data-school=\"demo\"] button.edit").await;
    page.wait("!document.querySelector('#editor').hidden", "the editor opens")
        .await;
    page.wait(
        "document.querySelector('#editor-title').value === 'Monday' && document.querySelectorAll('#periods tr.period').length === 4",
        "the editor holds the current schedule",
    )
    .await;
    page.fill("#editor-title", "Staff edit").await;
    page.click("#add-period").await;
    page.fill("#periods tr.period:last-child input.time", "11:00").await;
    page.fill("#periods tr.period:last-child input.subject", "Chemistry")
        .await;
    page.fill("#periods tr.period:last-child input.room", "Lab 2").await;
    page.click("#save-schedule").await;
    let invalidate = recv_type(&mut sock, "invalidate", Duration::from_secs(5)).await;
    assert_eq!(invalidate["revision"], 2);
    let saved = admin(&addr, Method::GET, "schools/demo/schedule/", None).await.json();
    assert_eq!(saved["schedule"]["title"], "Staff edit");
    let periods = saved["schedule"]["periods"].as_array().cloned().unwrap_or_default();
    assert_eq!(periods.len(), 5, "{saved}");
    assert_eq!(
        periods[4],
        json!({"time": "11:00", "subject": "Chemistry", "room": "Lab 2"})
    );
    page.wait(&shows("#editor-revision", "2"), "the editor shows the new revision")
        .await;

    // Unbinding one screen (two clicks): its socket closes with 4408.
    page.click("tr[data-token=\"demo-1\"] button.danger").await;
    page.wait(
        &shows("tr[data-token=\"demo-1\"] button.danger", "Click again to confirm"),
        "armed",
    )
    .await;
    page.click("tr[data-token=\"demo-1\"] button.danger").await;
    assert_eq!(sock.expect_close(Duration::from_secs(5)).await.unwrap(), Some(4408));
    page.wait(
        &shows("tr[data-token=\"demo-1\"] td.device", "(unbound)"),
        "demo-1 unbound",
    )
    .await;

    // Unbinding the whole school.
    assert_eq!(snapshot(&addr, "demo-2", "dev-b", None).await.status, 200);
    assert_eq!(snapshot(&addr, "demo-3", "dev-c", None).await.status, 200);
    page.wait(&shows("tr[data-token=\"demo-3\"] td.device", "dev-c"), "demo-3 bound")
        .await;
    page.click("tr.school[data-school=\"demo\"] button.danger").await;
    page.click("tr.school[data-school=\"demo\"] button.danger").await;
    page.wait(
        "[...document.querySelectorAll('tr.screen td.device')].every((td) => td.textContent === '(unbound)')",
        "every screen unbound",
    )
    .await;
    let o = admin(&addr, Method::GET, "overview/", None).await.json();
    for token in ["demo-1", "demo-2", "demo-3"] {
        assert_eq!(screen_of(&o, token)["device"], Value::Null, "{o}");
    }
    page.0.quit("{\"op\": \"quit\"}").await;
}
