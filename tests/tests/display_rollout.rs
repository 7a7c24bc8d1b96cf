//! The staged rollout: sockets for named schools and for a stable share of
//! all schools, on top of the switch. Raising 25 % → 50 % keeps every school
//! of the first quarter (their sockets are not even told); schools outside
//! get 4400 and `ws_enabled: false`; lowering it tells the sockets of the
//! schools that leave (`config`, `ws_enabled: false`), and their screens see
//! the change at their next poll.

mod display_common;
mod http_common;

use std::collections::BTreeMap;
use std::time::Duration;

use display_common::{
    assert_untouched, create_school, log_lines, overview, recv_type, school_of, screen, set_rollout, snapshot, socket,
    start, status_if,
};
use serde_json::Value;
use switchyard_tests::ws::WsClient;

const SCHOOLS: usize = 40;

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Whether each school has sockets, as the overview says, and as a screen of
/// it sees (snapshot meta) — the two must agree.
async fn sockets_by_school(addr: &str) -> BTreeMap<String, bool> {
    let o = overview(addr).await;
    let mut result = BTreeMap::new();
    for school in o["schools"].as_array().expect("schools") {
        let id = school["id"].as_str().expect("id").to_owned();
        let on = school["sockets"].as_bool().expect("sockets");
        result.insert(id, on);
    }
    for (id, on) in &result {
        if id.starts_with("school-") {
            let seen = snapshot(addr, &format!("{id}-1"), "dev", None).await.json();
            assert_eq!(
                seen["meta"]["ws_enabled"], *on,
                "{id}: overview says {on}, the screen {seen}"
            );
        }
    }
    result
}

#[tokio::test]
async fn raising_the_percentage_keeps_the_first_schools_and_lowering_it_tells_the_rest() {
    let stack = start("display-rollout", 1, Some("true")).await;
    let addr = &stack.addr;
    for i in 0..SCHOOLS {
        create_school(addr, &format!("school-{i}"), &[&format!("school-{i}-1")]).await;
    }
    let buckets: BTreeMap<String, u64> = overview(addr).await["schools"]
        .as_array()
        .expect("schools")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_owned(),
                s["bucket"].as_u64().unwrap_or(100),
            )
        })
        .collect();

    // 25 %: exactly the schools whose bucket is below 25 — a real share.
    let answer = set_rollout(addr, &[], 25).await;
    assert!(answer["switched_on"].as_array().is_some_and(Vec::is_empty), "{answer}");
    let quarter = sockets_by_school(addr).await;
    for (id, on) in &quarter {
        assert_eq!(*on, buckets[id] < 25, "{id} (bucket {})", buckets[id]);
    }
    let in_quarter: Vec<&String> = quarter.iter().filter(|(_, on)| **on).map(|(id, _)| id).collect();
    assert!(
        (4..=18).contains(&in_quarter.len()),
        "{} of {} schools in 25 %",
        in_quarter.len(),
        quarter.len()
    );

    // A socket for every screen of the quarter; the others are refused with 4400.
    let mut open: Vec<(String, WsClient)> = Vec::new();
    for id in in_quarter.iter().filter(|id| id.starts_with("school-")) {
        open.push(((*id).clone(), screen(addr, &format!("{id}-1"), "dev").await));
    }
    let outside: Vec<&String> = quarter
        .iter()
        .filter(|(id, on)| !**on && id.starts_with("school-"))
        .map(|(id, _)| id)
        .collect();
    for id in outside.iter().take(3) {
        let mut refused = socket(addr, &format!("{id}-1"), "dev").await;
        let code = refused.expect_close(Duration::from_secs(5)).await.expect("a close");
        assert_eq!(code, Some(4400), "{id}");
    }

    // 50 %: nobody leaves, the first quarter's sockets are not even told.
    let answer = set_rollout(addr, &[], 50).await;
    assert!(names(&answer["switched_off"]).is_empty(), "{answer}");
    let half = sockets_by_school(addr).await;
    for (id, on) in &quarter {
        if *on {
            assert!(half[id], "{id} was in at 25 % and is out at 50 %");
        }
    }
    for (id, on) in &half {
        assert_eq!(*on, buckets[id] < 50, "{id}");
    }
    let added: Vec<String> = names(&answer["switched_on"]);
    assert!(!added.is_empty(), "nobody added at 50 %");
    for (id, client) in &mut open {
        assert_untouched(client, Duration::from_millis(500), id).await;
    }

    // A named school is in whatever the percentage.
    let named = half
        .iter()
        .find(|(id, on)| !**on && id.starts_with("school-"))
        .map(|(id, _)| id.clone())
        .expect("a school outside 50 %");
    let answer = set_rollout(addr, &[&named], 50).await;
    assert_eq!(names(&answer["switched_on"]), vec![named.clone()]);
    let mut named_screen = screen(addr, &format!("{named}-1"), "dev").await;

    // Back to 25 %, without the named school: the schools between 25 and 50
    // and the named one are told at once; the first quarter is not.
    let tagged = snapshot(addr, &format!("{named}-1"), "dev", None).await;
    let etag = tagged.header("etag").expect("an ETag").to_owned();
    let answer = set_rollout(addr, &[], 25).await;
    let mut left = names(&answer["switched_off"]);
    left.sort();
    let mut expected: Vec<String> = half
        .iter()
        .filter(|(id, on)| **on && !quarter[*id])
        .map(|(id, _)| id.clone())
        .collect();
    expected.push(named.clone());
    expected.sort();
    assert_eq!(left, expected);
    let config = recv_type(&mut named_screen, "config", Duration::from_secs(1)).await;
    assert_eq!(config["ws_enabled"], false);
    for (id, client) in &mut open {
        assert_untouched(client, Duration::from_millis(200), id).await;
    }
    // A polling screen of a school that left sees it at its next poll: the ETag changed.
    let polled = status_if(addr, &format!("{named}-1"), "1", Some(&etag)).await;
    assert_eq!(polled.status, 200);
    assert_eq!(polled.json()["ws_enabled"], false);
    let unchanged = snapshot(addr, &format!("{}-1", open[0].0), "dev", None).await;
    let unchanged_tag = unchanged.header("etag").expect("an ETag").to_owned();
    assert_eq!(
        status_if(addr, &format!("{}-1", open[0].0), "1", Some(&unchanged_tag))
            .await
            .status,
        304
    );

    // The switch still wins over the rollout, and turning it off tells everyone at once.
    assert_eq!(display_common::set_ws_enabled(addr, false).await.status, 200);
    for (id, client) in &mut open {
        let config = recv_type(client, "config", Duration::from_secs(1)).await;
        assert_eq!(config["ws_enabled"], false, "{id}");
    }
    assert_eq!(school_of(&overview(addr).await, &open[0].0)["sockets"], false);

    assert_eq!(log_lines(&stack, &["ws rollout changed"]).len(), 4);
    assert!(!log_lines(&stack, &["WS broadcast sent", "config"]).is_empty());
    assert!(!log_lines(&stack, &["WS refused", "not_in_rollout"]).is_empty());
}
