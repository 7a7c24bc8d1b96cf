//! Groups and broadcast across several interfaces on one Redis, with the `rooms` app
//! (`/ws/rooms/`: `{"join": r}`, `{"leave": r}`, `{"say": t, "room": r}` → group `room:r`)
//! and `switchyard send-group` / `switchyard status`:
//!
//! - a send reaches every member exactly once (consecutive `seq`, no duplicates) and no one
//!   else, whichever interface the members and the sender are on;
//! - after a leave a client gets no more of the group's broadcasts; an interface left without
//!   members unsubscribes, and subscribes again when one rejoins;
//! - a closed socket (close handshake or dropped TCP) leaves its groups: the group size in
//!   `switchyard status` drops, the others still get broadcasts;
//! - the members of an interface killed with `kill -9` are swept from the member sets
//!   within 15 s with default flags, by a live interface or, with none left, a worker, while
//!   the live interfaces' memberships stay; an interface frozen past its liveness TTL (and so
//!   swept) writes its memberships again as soon as it runs;
//! - after a Redis restart broadcasts reach every member again without any client
//!   reconnecting, and the member sets are rebuilt;
//! - `switchyard status` shows group sizes, as a table and as JSON;
//! - an interface stopped with SIGTERM takes its members out of the member sets at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_tests::cluster::{Cluster, Member};
use switchyard_tests::stack::{PREFIX, REPLY_TIMEOUT};
use switchyard_tests::{bounded, eventually};

/// How long a broadcast may take to reach everyone on a busy 2-core machine.
const DELIVERY: Duration = Duration::from_secs(30);
/// How long membership changes may take to show in `switchyard status` (flushed every
/// 100 ms; generous for a noisy machine).
const PRESENCE: Duration = Duration::from_secs(10);
/// After everything expected has arrived, how long to keep listening for extra frames
/// (duplicates, broadcasts that should not have come).
const QUIET: Duration = Duration::from_secs(1);

/// Connects a client to interface `iface`, joins `rooms` (waiting for each `{"joined"}`),
/// and hands it to a background reader.
async fn member(cluster: &Cluster, iface: usize, rooms: &[&str]) -> Member {
    let mut client = cluster.ws(iface, "/ws/rooms/").await;
    for room in rooms {
        client.send_text(json!({ "join": room }).to_string()).await.unwrap();
        let answer = client
            .recv_json(REPLY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("join {room} on interface-{iface}: {e:#}"));
        assert_eq!(answer, json!({ "joined": room }), "answer to a join");
    }
    Member::spawn(client, iface)
}

/// Broadcast frames a member received (JSON objects carrying `seq`), in arrival order.
fn broadcasts(m: &Member) -> Vec<Value> {
    m.json().into_iter().filter(|v| v.get("seq").is_some()).collect()
}

fn seqs(m: &Member) -> Vec<u64> {
    broadcasts(m).iter().filter_map(|v| v["seq"].as_u64()).collect()
}

/// Waits until `done` holds for every member; panics naming those for which it does not.
async fn wait_all(what: &str, members: &[&Member], timeout: Duration, done: impl Fn(&Member) -> bool) {
    let ok = eventually(timeout, || async { members.iter().all(|m| done(m)).then_some(()) }).await;
    if ok.is_none() {
        let failing: Vec<String> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| !done(m))
            .map(|(i, m)| format!("member {i} on interface-{}: {:?}", m.interface, m.frames()))
            .take(5)
            .collect();
        panic!(
            "{what}: not done within {timeout:?} for {} of {} members, e.g.\n{}",
            members.iter().filter(|m| !done(m)).count(),
            members.len(),
            failing.join("\n")
        );
    }
}

fn assert_open(members: &[&Member]) {
    for (i, m) in members.iter().enumerate() {
        assert!(
            m.is_open(),
            "member {i} on interface-{} was closed: {:?}",
            m.interface,
            m.frames()
        );
    }
}

/// Waits until the group has `n` members in `switchyard status --json` and `subs` interfaces
/// subscribed to its channel.
async fn wait_group(cluster: &Cluster, group: &str, n: u64, subs: u64) {
    if let Err(last) = cluster.wait_group_size(group, n, PRESENCE).await {
        panic!("switchyard status: {group} has {last} members after {PRESENCE:?}, expected {n}");
    }
    assert!(
        cluster.wait_subscribers(group, subs, PRESENCE).await,
        "{group}: {:?} interfaces subscribed after {PRESENCE:?}, expected {subs}",
        cluster.subscribers(group).ok()
    );
}

fn say(room: &str, text: &str) -> String {
    json!({ "say": text, "room": room }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_member_once_and_no_one_else() {
    bounded(Duration::from_secs(60), async {
        // No chat heartbeat (a publish) during the test: every publish counted is ours.
        let cluster = Cluster::builder("groups-fanout")
            .workers(2)
            .worker_env("CHAT_HEARTBEAT_SECONDS", "86400")
            .start()
            .await;
        // 30 clients over 3 interfaces: 20 in alpha, 10 in beta; every interface has both.
        let mut alpha = Vec::new();
        let mut beta = Vec::new();
        for i in 0..30 {
            if i < 20 {
                alpha.push(member(&cluster, i % 3, &["alpha"]).await);
            } else {
                beta.push(member(&cluster, i % 3, &["beta"]).await);
            }
        }
        wait_group(&cluster, "room:alpha", 20, 3).await;
        wait_group(&cluster, "room:beta", 10, 3).await;

        // Says from members on each interface, one from a non-member (beta client), one
        // from the ops command; and two says to beta.
        let publishes_before = cluster.publishes().unwrap();
        let mut alpha_texts = BTreeSet::new();
        for (k, i) in [0usize, 1, 2, 10, 19].into_iter().enumerate() {
            let text = format!("a{k} from member {i}");
            alpha[i].send(say("alpha", &text));
            alpha_texts.insert(text);
        }
        beta[0].send(say("alpha", "from a beta member"));
        alpha_texts.insert("from a beta member".to_string());
        let ops_seq = cluster.send_group("room:alpha", r#"{"x":1}"#, true).await.unwrap();
        beta[1].send(say("beta", "b1"));
        beta[5].send(say("beta", "b2"));

        let alpha_refs: Vec<&Member> = alpha.iter().collect();
        let beta_refs: Vec<&Member> = beta.iter().collect();
        wait_all("7 alpha broadcasts", &alpha_refs, DELIVERY, |m| {
            broadcasts(m).len() >= 7
        })
        .await;
        wait_all("2 beta broadcasts", &beta_refs, DELIVERY, |m| broadcasts(m).len() >= 2).await;
        tokio::time::sleep(QUIET).await;

        for (i, m) in alpha.iter().enumerate() {
            let got = broadcasts(m);
            assert_eq!(
                seqs(m),
                (1..=7).collect::<Vec<u64>>(),
                "alpha member {i} (interface-{}): seq numbers {got:?}",
                m.interface
            );
            let texts: BTreeSet<String> = got
                .iter()
                .filter_map(|v| v["text"].as_str().map(str::to_owned))
                .collect();
            assert_eq!(texts, alpha_texts, "alpha member {i}: texts");
            assert!(
                got.iter().all(|v| v["room"] == "alpha" || v["x"] == 1),
                "alpha member {i} got a foreign broadcast: {got:?}"
            );
            let from_ops: Vec<&Value> = got.iter().filter(|v| v.get("x").is_some()).collect();
            let epoch = from_ops.first().map(|v| v["epoch"].clone()).unwrap_or_default();
            assert!(epoch.as_str().is_some_and(|e| !e.is_empty()), "{from_ops:?}");
            assert_eq!(
                from_ops,
                vec![&json!({"x": 1, "seq": ops_seq, "epoch": epoch, "group": "room:alpha"})],
                "alpha member {i}: the send-group broadcast"
            );
            assert_eq!(
                m.json().len(),
                7,
                "alpha member {i}: frames besides broadcasts: {:?}",
                m.frames()
            );
        }
        for (i, m) in beta.iter().enumerate() {
            let got = broadcasts(m);
            assert_eq!(seqs(m), vec![1, 2], "beta member {i}: {got:?}");
            let texts: BTreeSet<&str> = got.iter().filter_map(|v| v["text"].as_str()).collect();
            assert_eq!(texts, BTreeSet::from(["b1", "b2"]), "beta member {i}: {got:?}");
            assert!(
                got.iter().all(|v| v["room"] == "beta"),
                "beta member {i} got an alpha broadcast: {got:?}"
            );
            assert_eq!(m.json().len(), 2, "beta member {i}: {:?}", m.frames());
        }
        // One PUBLISH per send, whatever the group's size (30 members, 3 interfaces).
        assert_eq!(
            cluster.publishes().unwrap() - publishes_before,
            9,
            "PUBLISH commands for 9 group sends"
        );
        assert_open(&alpha_refs);
        assert_open(&beta_refs);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_leave_no_more_broadcasts() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::builder("groups-discard").start().await;
        let mut members = Vec::new();
        for i in 0..9 {
            members.push(member(&cluster, i % 3, &["alpha"]).await);
        }
        wait_group(&cluster, "room:alpha", 9, 3).await;
        cluster.send_group("room:alpha", r#"{"n":1}"#, true).await.unwrap();
        let all: Vec<&Member> = members.iter().collect();
        wait_all("broadcast 1", &all, DELIVERY, |m| seqs(m) == [1]).await;

        // Member 0 (interface-0) leaves, and so do all of interface-2's members (2, 5, 8):
        // interface-2 has no member left and unsubscribes.
        let leavers = [0usize, 2, 5, 8];
        for &i in &leavers {
            members[i].send(json!({"leave": "alpha"}).to_string());
        }
        for &i in &leavers {
            members[i]
                .wait_json(REPLY_TIMEOUT, |v| *v == json!({"left": "alpha"}))
                .await
                .unwrap_or_else(|e| panic!("member {i} leaving: {e:#}"));
        }
        wait_group(&cluster, "room:alpha", 5, 2).await;

        cluster.send_group("room:alpha", r#"{"n":2}"#, true).await.unwrap();
        members[1].send(say("alpha", "after the leaves"));
        // A client that left can still send to the room (it just does not receive).
        members[0].send(say("alpha", "from a leaver"));
        let stayers: Vec<&Member> = (0..9).filter(|i| !leavers.contains(i)).map(|i| &members[i]).collect();
        wait_all("broadcasts 2-4", &stayers, DELIVERY, |m| seqs(m).len() >= 4).await;
        tokio::time::sleep(QUIET).await;
        for m in &stayers {
            assert_eq!(seqs(m), [1, 2, 3, 4], "a member that stayed: {:?}", m.frames());
        }
        for &i in &leavers {
            assert_eq!(
                seqs(&members[i]),
                [1],
                "member {i} got broadcasts after leaving: {:?}",
                members[i].frames()
            );
        }

        // Member 2 rejoins: interface-2 subscribes again and it gets the next broadcast.
        members[2].send(json!({"join": "alpha"}).to_string());
        let rejoined = eventually(REPLY_TIMEOUT, || async {
            (members[2].json().iter().filter(|v| v.get("joined").is_some()).count() == 1).then_some(())
        })
        .await;
        assert!(rejoined.is_some(), "no answer to the rejoin: {:?}", members[2].frames());
        wait_group(&cluster, "room:alpha", 6, 3).await;
        let seq = cluster.send_group("room:alpha", "plain text", false).await.unwrap();
        assert_eq!(seq, 5);
        let mut receivers = stayers.clone();
        receivers.push(&members[2]);
        wait_all("broadcast 5", &receivers, DELIVERY, |m| {
            m.frames()
                .contains(&switchyard_tests::Incoming::Text("plain text".into()))
        })
        .await;
        tokio::time::sleep(QUIET).await;
        for m in &receivers {
            let plain = m
                .frames()
                .iter()
                .filter(|f| **f == switchyard_tests::Incoming::Text("plain text".into()))
                .count();
            assert_eq!(plain, 1, "text broadcast received {plain} times: {:?}", m.frames());
        }
        assert_eq!(seqs(&members[2]), [1], "rejoined member: {:?}", members[2].frames());
        for &i in &[0usize, 5, 8] {
            assert!(
                !members[i]
                    .frames()
                    .contains(&switchyard_tests::Incoming::Text("plain text".into())),
                "member {i} (left) got the text broadcast"
            );
        }
        assert_open(&all);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_socket_leaves_its_groups() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::builder("groups-close").start().await;
        let mut members: Vec<Option<Member>> = Vec::new();
        for i in 0..12 {
            members.push(Some(member(&cluster, i % 3, &["alpha"]).await));
        }
        wait_group(&cluster, "room:alpha", 12, 3).await;

        // Interface-2's four members go (two with a close handshake, two drop the TCP
        // connection), and member 0 of interface-0 closes.
        for i in [2usize, 5, 0] {
            members[i].take().unwrap().close().await;
        }
        for i in [8usize, 11] {
            members[i].take().unwrap().drop_connection().await;
        }
        wait_group(&cluster, "room:alpha", 7, 2).await;

        let seq = cluster.send_group("room:alpha", r#"{"n":1}"#, true).await.unwrap();
        assert_eq!(seq, 1);
        let rest: Vec<&Member> = members.iter().flatten().collect();
        assert_eq!(rest.len(), 7);
        wait_all("broadcast after the closes", &rest, DELIVERY, |m| !seqs(m).is_empty()).await;
        rest[0].send(say("alpha", "still here"));
        wait_all("a say after the closes", &rest, DELIVERY, |m| seqs(m).len() >= 2).await;
        tokio::time::sleep(QUIET).await;
        for m in &rest {
            assert_eq!(seqs(m), [1, 2], "{:?}", m.frames());
        }
        assert_open(&rest);
    })
    .await
}

/// Presence follows liveness (issue 14, item 6): how long the members of a `kill -9`ed
/// interface may stay in the member sets with default flags (its liveness key lives 10 s
/// after its last beat, the sweepers look every second).
const SWEPT_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_interfaces_members_are_swept_within_15_s() {
    bounded(Duration::from_secs(90), async {
        // Default flags: --group-expiry is a day, so only the sweep can clear them.
        let mut cluster = Cluster::builder("groups-kill").start().await;
        let mut alpha = Vec::new();
        for i in 0..12 {
            alpha.push(member(&cluster, i % 3, &["alpha"]).await);
        }
        // beta lives on interface-2 only.
        let beta = [
            member(&cluster, 2, &["beta"]).await,
            member(&cluster, 2, &["beta"]).await,
        ];
        wait_group(&cluster, "room:alpha", 12, 3).await;
        wait_group(&cluster, "room:beta", 2, 1).await;

        cluster.interface(2).kill9();
        let killed = tokio::time::Instant::now();
        if let Err(last) = cluster.wait_group_size("room:alpha", 8, SWEPT_WITHIN).await {
            panic!("room:alpha still has {last} members {SWEPT_WITHIN:?} after interface-2 was killed, expected 8");
        }
        let cleared = killed.elapsed();
        eprintln!("[test] presence cleared {cleared:?} after the kill");
        if let Err(last) = cluster.wait_group_size("room:beta", 0, Duration::from_secs(2)).await {
            panic!("room:beta still has {last} members after interface-2 was killed");
        }
        let status = cluster.status_json().await.unwrap();
        assert!(
            status["groups"].get("room:beta").is_none(),
            "an empty group is listed: {}",
            status["groups"]
        );
        // Swept for good: its group set and its index entry are gone too.
        let mut con = cluster.redis_conn().unwrap();
        let dead = Cluster::interface_id(2);
        let groups_set: bool = redis::cmd("EXISTS")
            .arg(format!("{PREFIX}:ifacegroups:{{{dead}}}"))
            .query(&mut con)
            .unwrap();
        assert!(!groups_set, "the dead interface's group set is still there");
        let seen: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{PREFIX}:interfaces"))
            .arg(&dead)
            .query(&mut con)
            .unwrap();
        assert_eq!(seen, None, "the dead interface is still in the interfaces index");

        // The live interfaces' members stay: sampled across several sweeps.
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < until {
            let n = cluster.group_size("room:alpha").await.unwrap();
            assert_eq!(n, 8, "room:alpha size while interfaces 0 and 1 live");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        let live: Vec<&Member> = alpha.iter().filter(|m| m.interface != 2).collect();
        assert_eq!(live.len(), 8);
        cluster
            .send_group("room:alpha", r#"{"after":"kill"}"#, true)
            .await
            .unwrap();
        wait_all("broadcast after the kill", &live, DELIVERY, |m| seqs(m) == [1]).await;
        assert_open(&live);
        for m in alpha.iter().filter(|m| m.interface == 2).chain(beta.iter()) {
            assert!(!m.is_open(), "a client of the killed interface is still open");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sweeps_when_no_interface_is_left() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::builder("groups-kill-last").interfaces(1).start().await;
        let _members = [
            member(&cluster, 0, &["solo"]).await,
            member(&cluster, 0, &["solo"]).await,
        ];
        wait_group(&cluster, "room:solo", 2, 1).await;
        cluster.interface(0).kill9();
        let killed = tokio::time::Instant::now();
        if let Err(last) = cluster.wait_group_size("room:solo", 0, SWEPT_WITHIN).await {
            panic!("room:solo still has {last} members {SWEPT_WITHIN:?} after the only interface was killed");
        }
        eprintln!("[test] swept by the worker {:?} after the kill", killed.elapsed());
        assert!(
            cluster.workers[0]
                .log()
                .contains("swept the group members of a dead interface"),
            "the worker did not log the sweep"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_interface_writes_its_members_again() {
    bounded(Duration::from_secs(90), async {
        let mut cluster = Cluster::builder("groups-paused").interfaces(2).start().await;
        let members = [
            member(&cluster, 0, &["paused"]).await,
            member(&cluster, 1, &["paused"]).await,
            member(&cluster, 1, &["paused"]).await,
        ];
        wait_group(&cluster, "room:paused", 3, 2).await;
        // Frozen past its liveness TTL: the others take it for dead and sweep its members.
        cluster.interface(1).signal(libc::SIGSTOP);
        let frozen = tokio::time::Instant::now();
        let swept = cluster
            .wait_group_size("room:paused", 1, SWEPT_WITHIN + Duration::from_secs(5))
            .await;
        cluster.interface(1).signal(libc::SIGCONT);
        eprintln!("[test] swept {:?} after the freeze", frozen.elapsed());
        let resumed = tokio::time::Instant::now();
        if let Err(last) = swept {
            panic!("room:paused has {last} members while interface-1 is frozen, expected 1");
        }
        // Back, it finds its beats interrupted and writes its memberships again at once
        // (not at its next refresh, 30 s away with the default --group-expiry).
        if let Err(last) = cluster.wait_group_size("room:paused", 3, PRESENCE).await {
            panic!("room:paused has {last} members after interface-1 resumed, expected 3");
        }
        eprintln!("[test] members back {:?} after the resume", resumed.elapsed());
        cluster
            .send_group("room:paused", r#"{"after":"pause"}"#, true)
            .await
            .unwrap();
        let all: Vec<&Member> = members.iter().collect();
        wait_all("broadcast after the pause", &all, DELIVERY, |m| seqs(m) == [1]).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_resume_after_a_redis_restart() {
    bounded(Duration::from_secs(60), async {
        // The server is killed and started again empty: a single-server scenario.
        let mut cluster = Cluster::builder("groups-redis-restart")
            .single_redis()
            .interface_arg("--group-expiry")
            .interface_arg("3")
            .start()
            .await;
        let mut members = Vec::new();
        for i in 0..9 {
            members.push(member(&cluster, i % 3, &["alpha"]).await);
        }
        let all: Vec<&Member> = members.iter().collect();
        wait_group(&cluster, "room:alpha", 9, 3).await;
        cluster
            .send_group("room:alpha", r#"{"phase":"before"}"#, true)
            .await
            .unwrap();
        wait_all("broadcast before the restart", &all, DELIVERY, |m| seqs(m) == [1]).await;

        // Redis is away for 2 s, then back empty: memberships and subscriptions are lost
        // with the data; no client reconnects.
        cluster.redis.single_mut().kill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.redis.single_mut().restart().await.unwrap();
        let is_after = |v: &Value| v["phase"] == "after";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
        let mut k = 0;
        loop {
            if all.iter().all(|m| m.json().iter().any(is_after)) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let missing: Vec<String> = all
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| !m.json().iter().any(is_after))
                    .map(|(i, m)| format!("member {i} on interface-{}: {:?}", m.interface, m.frames()))
                    .collect();
                panic!(
                    "{} members got no broadcast within 25 s of the Redis restart ({k} sent):\n{}",
                    missing.len(),
                    missing.join("\n")
                );
            }
            k += 1;
            // Errors while the processes reconnect are expected; keep trying.
            let _ = cluster
                .send_group("room:alpha", &json!({"phase": "after", "k": k}).to_string(), true)
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_open(&all);
        for (i, m) in all.iter().enumerate() {
            let ks: Vec<u64> = m
                .json()
                .iter()
                .filter(|v| is_after(v))
                .filter_map(|v| v["k"].as_u64())
                .collect();
            let unique: BTreeSet<u64> = ks.iter().copied().collect();
            assert_eq!(unique.len(), ks.len(), "member {i} got a broadcast twice: {ks:?}");
            assert!(ks.windows(2).all(|w| w[0] < w[1]), "member {i}: out of order {ks:?}");
        }

        // The member sets are rebuilt by the refresh (every expiry/3 = 1 s).
        if let Err(last) = cluster.wait_group_size("room:alpha", 9, PRESENCE).await {
            panic!("room:alpha has {last} members after the Redis restart, expected 9 again");
        }
        // And a say through a worker reaches everyone exactly once.
        members[4].send(say("alpha", "after the restart"));
        let said = |m: &Member| m.json().iter().filter(|v| v["text"] == "after the restart").count();
        wait_all("a say after the restart", &all, DELIVERY, |m| said(m) >= 1).await;
        tokio::time::sleep(QUIET).await;
        for m in &all {
            assert_eq!(said(m), 1, "{:?}", m.frames());
        }
        assert_open(&all);
    })
    .await
}

/// Per group, the sum of the local sizes the live interfaces publish (status `interfaces`).
fn local_sizes(status: &Value) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for info in status["interfaces"].as_object().into_iter().flat_map(|o| o.values()) {
        for pair in info["groups"].as_array().into_iter().flatten() {
            if let (Some(group), Some(n)) = (pair[0].as_str(), pair[1].as_u64()) {
                *sums.entry(group.to_string()).or_insert(0) += n;
            }
        }
    }
    sums
}

/// The MEMBERS column of a group in the human `switchyard status` table.
async fn table_size(cluster: &Cluster, group: &str) -> (Option<u64>, String) {
    let out = cluster.ops(&["status"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "switchyard status failed ({}):\n{text}",
        out.status
    );
    let section = text
        .split_once("GROUP")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default();
    let size = section.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        (cols.next() == Some(group)).then(|| cols.next().and_then(|n| n.parse().ok()))?
    });
    (size, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_group_sizes() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::builder("groups-status").start().await;
        // alpha: members 0-4; beta: members 3-5 (3 and 4 are in both).
        let mut members = Vec::new();
        for i in 0..6 {
            let rooms: &[&str] = match i {
                0..=2 => &["alpha"],
                3 | 4 => &["alpha", "beta"],
                _ => &["beta"],
            };
            members.push(member(&cluster, i % 3, rooms).await);
        }
        let expected = json!({"room:alpha": 5, "room:beta": 3});
        let seen = eventually(PRESENCE, || async {
            let status = cluster.status_json().await.ok()?;
            (status["groups"] == expected).then_some(status)
        })
        .await;
        let Some(status) = seen else {
            let last = cluster.status_json().await.map(|s| s["groups"].clone());
            panic!("switchyard status --json groups never became {expected}; last: {last:?}");
        };
        assert_eq!(status["healthy"], true, "{status:#}");
        // Each interface also publishes its local sizes (every second).
        let want = BTreeMap::from([("room:alpha".to_string(), 5), ("room:beta".to_string(), 3)]);
        let sums = eventually(PRESENCE, || async {
            let status = cluster.status_json().await.ok()?;
            (local_sizes(&status) == want).then_some(())
        })
        .await;
        assert!(
            sums.is_some(),
            "interfaces' local group sizes never summed to {want:?}: {:?}",
            cluster.status_json().await.map(|s| local_sizes(&s))
        );

        let (alpha, text) = table_size(&cluster, "room:alpha").await;
        assert_eq!(alpha, Some(5), "switchyard status:\n{text}");
        assert_eq!(table_size(&cluster, "room:beta").await.0, Some(3), "{text}");

        // A leave and a close show up in both forms.
        members[0].send(json!({"leave": "alpha"}).to_string());
        members.remove(4).close().await; // in alpha and beta
        cluster.wait_group_size("room:alpha", 3, PRESENCE).await.unwrap();
        cluster.wait_group_size("room:beta", 2, PRESENCE).await.unwrap();
        let (alpha, text) = table_size(&cluster, "room:alpha").await;
        assert_eq!(alpha, Some(3), "{text}");
        // A group without members is not listed.
        for m in members.drain(..) {
            m.close().await;
        }
        cluster.wait_group_size("room:alpha", 0, PRESENCE).await.unwrap();
        cluster.wait_group_size("room:beta", 0, PRESENCE).await.unwrap();
        let status = cluster.status_json().await.unwrap();
        assert_eq!(status["groups"], json!({}), "{status:#}");
        let (alpha, text) = table_size(&cluster, "room:alpha").await;
        assert_eq!(alpha, None, "{text}");
        assert!(text.contains("GROUP"), "no group table in:\n{text}");
    })
    .await
}

/// Fails until the interface calls `Groups::shutdown()` once its connections are gone
/// (interface/src/lib.rs): without it the last leaves (flushed every 100 ms) are lost when
/// the process exits, and those members are counted until they expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_interfaces_members_leave_at_once() {
    bounded(Duration::from_secs(60), async {
        // Default --group-expiry (a day): only the interface's own leaves can clean up.
        let mut cluster = Cluster::builder("groups-sigterm").start().await;
        let mut members = Vec::new();
        for i in 0..9 {
            members.push(member(&cluster, i % 3, &["alpha"]).await);
        }
        wait_group(&cluster, "room:alpha", 9, 3).await;

        cluster.interface(2).sigterm();
        let exited = cluster.interface(2).wait_exit(Duration::from_secs(20)).await;
        assert!(
            exited.is_some_and(|st| st.success()),
            "interface-2 after SIGTERM: {exited:?}"
        );
        if let Err(last) = cluster.wait_group_size("room:alpha", 6, PRESENCE).await {
            panic!("room:alpha still has {last} members {PRESENCE:?} after interface-2 stopped gracefully, expected 6");
        }
        let live: Vec<&Member> = members.iter().filter(|m| m.interface != 2).collect();
        cluster.send_group("room:alpha", r#"{"n":1}"#, true).await.unwrap();
        wait_all("broadcast after the stop", &live, DELIVERY, |m| seqs(m) == [1]).await;
        assert_open(&live);
    })
    .await
}
