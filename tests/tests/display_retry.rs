//! A schedule edit handled twice bumps the revision once (issue 14, item 7).
//!
//! The edit writes Redis itself (outside the commit), so a worker that dies after the write
//! and before the commit leaves the request to another worker, which runs it again. The
//! write is an `OnceScript` keyed by the request's message id: the second run finds the
//! first one's result and answers it. The fault is the worker's test-only
//! `SWITCHYARD_TEST_ABORT_BEFORE_COMMIT` (abort after the app answered, before the commit).

mod display_common;
mod http_common;

use std::time::Duration;

use display_common::{admin, put_schedule, start_with, worker_args, worker_env, ADMIN};
use http::Method;
use serde_json::json;

use http_common::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_edit_retried_after_a_crash_bumps_the_revision_once() {
    let path = "/api/display/admin/schools/demo/schedule/";
    let mut env = worker_env(None);
    env.push(("SWITCHYARD_TEST_ABORT_BEFORE_COMMIT", format!("PUT {path}")));
    let mut display = start_with("display-retry", 1, env).await;
    let addr = display.stack.addr.clone();
    let before = admin(&addr, Method::GET, "schools/demo/schedule/", None).await;
    assert_eq!(before.status, 200, "{}", before.text());
    let revision = before.json()["revision"].as_u64().expect("a revision");

    // The edit: the worker bumps the revision, then dies before its commit.
    let schedule = json!({"title": "Retried", "periods": []});
    let edit = {
        let (addr, schedule) = (addr.clone(), schedule.clone());
        tokio::spawn(async move { put_schedule(&addr, "demo", &schedule, Some(ADMIN)).await })
    };
    let died = wait_for(Duration::from_secs(20), || {
        let exited = display.stack.workers[0].exited();
        async move { exited }
    })
    .await;
    assert!(died.is_ok(), "the worker did not abort before the commit");

    // Another worker (without the fault) takes the request over and runs it again.
    display.stack.add_worker_with_env(&worker_args(), &worker_env(None));
    let answer = tokio::time::timeout(Duration::from_secs(30), edit)
        .await
        .expect("the edit was not answered within 30 s of the crash")
        .expect("edit task");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({"revision": revision + 1}),
        "the retried edit answers the first run's revision"
    );
    let after = admin(&addr, Method::GET, "schools/demo/schedule/", None).await;
    assert_eq!(after.json()["revision"], json!(revision + 1), "bumped once");
    assert_eq!(after.json()["schedule"], schedule);

    // The next edit is a new message: it bumps again.
    let next = put_schedule(&addr, "demo", &json!({"title": "Next", "periods": []}), Some(ADMIN)).await;
    assert_eq!(next.json(), json!({"revision": revision + 2}));
}
