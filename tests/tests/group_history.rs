//! No broadcast lost: group history, `seq`/`epoch`, recovery (docs/protocol.md, "Group
//! history and recovery"), through the `rooms` app (`{"join": r, "since": S, "epoch": E}`)
//! and `switchyard send-group`, on one Redis or a Redis Cluster:
//!
//! - a connection that joins since a broadcast gets the ones after it from the history,
//!   then the live ones: in order, exactly once; since 0 without an epoch: from the start;
//! - clients that keep reconnecting (through other interfaces) and join since their last
//!   broadcast, while broadcasts flow, see every broadcast once, in order;
//! - a position the history no longer holds (trimmed: `--group-history 3`) or of another
//!   epoch (the group's keys lost, as with a flushed Redis) gets `recover_failed`, and the
//!   broadcasts that follow still arrive;
//! - an interface whose subscription is cut while broadcasts flow (its pub/sub connection
//!   killed, or Redis restarted with its data) delivers what it missed from the history:
//!   every member gets every broadcast exactly once, in order;
//! - a plain join misses nothing sent after its answer, even before its interface has
//!   subscribed to the group.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_protocol::groups::History;
use switchyard_tests::cluster::{Cluster, Member};
use switchyard_tests::stack::REPLY_TIMEOUT;
use switchyard_tests::{bounded, eventually};

/// How long broadcasts may take to reach everyone on a busy 2-core machine.
const DELIVERY: Duration = Duration::from_secs(30);
/// After everything expected arrived, how long to listen for extra frames.
const QUIET: Duration = Duration::from_secs(1);

/// A rooms client on interface `iface` that joined `room` (with `join`'s extra fields).
async fn joined(cluster: &Cluster, iface: usize, room: &str, extra: Value) -> Member {
    let mut client = cluster.ws(iface, "/ws/rooms/").await;
    let mut join = json!({ "join": room });
    if let (Some(join), Some(extra)) = (join.as_object_mut(), extra.as_object()) {
        join.extend(extra.clone());
    }
    client.send_text(join.to_string()).await.unwrap();
    let answer = client
        .recv_json(REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{join} on interface-{iface}: {e:#}"));
    assert_eq!(answer, json!({ "joined": room }), "answer to {join}");
    Member::spawn(client, iface)
}

/// The broadcasts (frames with a `seq`, not notices) a member got, in arrival order.
fn received(m: &Member) -> Vec<Value> {
    m.json()
        .into_iter()
        .filter(|v| v.get("seq").is_some() && v.get("type").is_none())
        .collect()
}

fn seq_list(m: &Member) -> Vec<u64> {
    received(m).iter().filter_map(|v| v["seq"].as_u64()).collect()
}

fn notices(m: &Member) -> Vec<Value> {
    m.json().into_iter().filter(|v| v["type"] == "recover_failed").collect()
}

/// Waits until every member has received broadcasts up to `last`; panics with what they have.
async fn wait_up_to(what: &str, members: &[&Member], last: u64) {
    let done = |m: &Member| seq_list(m).last().is_some_and(|s| *s >= last);
    let ok = eventually(DELIVERY, || async { members.iter().all(|m| done(m)).then_some(()) }).await;
    if ok.is_none() {
        let behind: Vec<String> = members
            .iter()
            .filter(|m| !done(m))
            .take(4)
            .map(|m| format!("on interface-{}: {:?}", m.interface, seq_list(m)))
            .collect();
        panic!(
            "{what}: not everyone reached seq {last} within {DELIVERY:?}:\n{}",
            behind.join("\n")
        );
    }
}

fn say(room: &str, text: &str) -> String {
    json!({ "say": text, "room": room }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_since_gets_the_history_after_it_then_live_once_in_order() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::builder("history-since").interfaces(2).start().await;
        let first = joined(&cluster, 0, "lobby", json!({})).await;
        for k in 1..=5 {
            first.send(say("lobby", &format!("m{k}")));
        }
        wait_up_to("the first five", &[&first], 5).await;
        let history = received(&first);
        let epoch = history[0]["epoch"]
            .as_str()
            .expect("broadcasts carry an epoch")
            .to_owned();
        assert!(!epoch.is_empty());
        for (k, b) in history.iter().enumerate() {
            let seq = k as u64 + 1;
            assert_eq!(b["seq"], seq, "{history:?}");
            assert_eq!(b["text"], format!("m{seq}"), "{history:?}");
            assert_eq!(b["epoch"], epoch.as_str(), "{history:?}");
            assert_eq!(b["group"], "room:lobby", "{history:?}");
        }

        let since_two = joined(&cluster, 1, "lobby", json!({"since": 2, "epoch": epoch})).await;
        let from_start = joined(&cluster, 0, "lobby", json!({"since": 0})).await;
        let up_to_date = joined(&cluster, 1, "lobby", json!({"since": 5, "epoch": epoch})).await;
        wait_up_to("history after a join since", &[&since_two, &from_start], 5).await;
        first.send(say("lobby", "m6"));
        wait_up_to("m6", &[&since_two], 6).await;
        // From another member, once m6 is out: the two says are numbered in this order.
        since_two.send(say("lobby", "m7"));
        let all = [&first, &since_two, &from_start, &up_to_date];
        wait_up_to("live after the joins", &all, 7).await;
        tokio::time::sleep(QUIET).await;

        assert_eq!(seq_list(&first), (1..=7).collect::<Vec<_>>());
        assert_eq!(
            seq_list(&since_two),
            (3..=7).collect::<Vec<_>>(),
            "{:?}",
            since_two.frames()
        );
        assert_eq!(
            seq_list(&from_start),
            (1..=7).collect::<Vec<_>>(),
            "{:?}",
            from_start.frames()
        );
        assert_eq!(seq_list(&up_to_date), [6, 7], "{:?}", up_to_date.frames());
        for m in all {
            for b in received(m) {
                assert_eq!(b["text"], format!("m{}", b["seq"]), "{:?}", m.frames());
            }
            assert!(notices(m).is_empty(), "{:?}", m.frames());
        }

        // A join since with a malformed position is refused and changes nothing.
        let mut bad = cluster.ws(0, "/ws/rooms/").await;
        bad.send_text(json!({"join": "lobby", "since": "2", "epoch": epoch}).to_string())
            .await
            .unwrap();
        let answer = bad.recv_json(REPLY_TIMEOUT).await.unwrap();
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains("since")),
            "{answer}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_clients_lose_nothing_while_broadcasts_flow() {
    bounded(Duration::from_secs(120), async {
        let cluster = Cluster::builder("history-reconnect").interfaces(3).start().await;
        const TOTAL: u64 = 60;
        let sender = joined(&cluster, 0, "flow", json!({})).await;
        // Four clients, each reconnecting three times through the next interface.
        let mut clients: Vec<(Member, Vec<Value>)> = Vec::new();
        for i in 0..4 {
            clients.push((joined(&cluster, i % 3, "flow", json!({})).await, Vec::new()));
        }
        let send = tokio::spawn({
            let sender_say = (1..=TOTAL).map(|k| say("flow", &format!("f{k}"))).collect::<Vec<_>>();
            async move {
                for text in sender_say {
                    sender.send(text);
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                sender
            }
        });
        for _round in 0..3 {
            for (member, kept) in clients.iter_mut() {
                // Let some broadcasts arrive, then reconnect since the last one.
                let before = received(member).len();
                let _ = eventually(Duration::from_secs(5), || async {
                    (received(member).len() > before).then_some(())
                })
                .await;
                kept.extend(received(member));
                let last = kept.last().cloned();
                let iface = (member.interface + 1) % 3;
                let position = match &last {
                    Some(b) => json!({"since": b["seq"], "epoch": b["epoch"]}),
                    None => json!({"since": 0}),
                };
                let old = std::mem::replace(member, joined(&cluster, iface, "flow", position).await);
                old.close().await;
            }
        }
        let sender = send.await.unwrap();
        let everyone: Vec<&Member> = clients.iter().map(|(m, _)| m).chain([&sender]).collect();
        wait_up_to("every broadcast", &everyone, TOTAL).await;
        tokio::time::sleep(QUIET).await;
        for (i, (member, kept)) in clients.iter().enumerate() {
            let mut all = kept.clone();
            all.extend(received(member));
            let seqs: Vec<u64> = all.iter().filter_map(|b| b["seq"].as_u64()).collect();
            let start = seqs.first().copied().unwrap_or(1);
            assert_eq!(
                seqs,
                (start..=TOTAL).collect::<Vec<_>>(),
                "client {i}: every broadcast once, in order, across reconnects"
            );
            assert!(notices(member).is_empty(), "client {i}: {:?}", member.frames());
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_history_cannot_serve_gets_recover_failed() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::builder("history-recover-failed")
            .interfaces(2)
            .worker_env("SWITCHYARD_GROUP_HISTORY", "3")
            .start()
            .await;
        let first = joined(&cluster, 0, "small", json!({})).await;
        for k in 1..=6 {
            first.send(say("small", &format!("s{k}")));
        }
        wait_up_to("six broadcasts", &[&first], 6).await;
        let epoch = received(&first)[0]["epoch"].as_str().unwrap().to_owned();

        // Only 4, 5, 6 are kept: since 1 is trimmed, since 3 is served.
        let trimmed = joined(&cluster, 1, "small", json!({"since": 1, "epoch": epoch})).await;
        let served = joined(&cluster, 1, "small", json!({"since": 3, "epoch": epoch})).await;
        let other_epoch = joined(&cluster, 0, "small", json!({"since": 6, "epoch": "1"})).await;
        wait_up_to("history since 3", &[&served], 6).await;
        let got_notice = |m: &Member| !notices(m).is_empty();
        let noticed = eventually(DELIVERY, || async {
            (got_notice(&trimmed) && got_notice(&other_epoch)).then_some(())
        })
        .await;
        assert!(noticed.is_some(), "{:?} / {:?}", trimmed.frames(), other_epoch.frames());
        assert_eq!(
            notices(&trimmed),
            [json!({"type": "recover_failed", "group": "room:small", "epoch": epoch, "seq": 6, "reason": "trimmed"})]
        );
        assert_eq!(notices(&other_epoch)[0]["reason"], "epoch");
        assert_eq!(notices(&other_epoch)[0]["epoch"], epoch.as_str());
        assert_eq!(seq_list(&served), [4, 5, 6]);
        assert!(seq_list(&trimmed).is_empty(), "{:?}", trimmed.frames());

        // The group's keys are lost (as when Redis is flushed): a new epoch starts at 1.
        let keys = [
            format!("{PREFIX}:groupseq:{{room:small}}"),
            format!("{PREFIX}:groupepoch:{{room:small}}"),
            format!("{PREFIX}:grouphistory:{{room:small}}"),
        ];
        let mut con = cluster.redis.conn_for_key(&keys[0]).unwrap();
        let deleted: u64 = redis::cmd("DEL").arg(&keys).query(&mut con).unwrap();
        assert_eq!(deleted, 3);
        first.send(say("small", "after"));
        let members = [&first, &trimmed, &served, &other_epoch];
        let ok = eventually(DELIVERY, || async {
            members
                .iter()
                .all(|m| received(m).iter().any(|b| b["text"] == "after"))
                .then_some(())
        })
        .await;
        assert!(
            ok.is_some(),
            "the first broadcast of the new epoch: {:?}",
            first.frames()
        );
        tokio::time::sleep(QUIET).await;
        for m in members {
            let after: Vec<Value> = received(m).into_iter().filter(|b| b["text"] == "after").collect();
            assert_eq!(after.len(), 1, "{:?}", m.frames());
            assert_eq!(after[0]["seq"], 1);
            assert_ne!(
                after[0]["epoch"],
                epoch.as_str(),
                "a new epoch after the keys were lost"
            );
        }
        // A client still at the old epoch learns it cannot recover, and from where it goes on.
        let late = joined(&cluster, 1, "small", json!({"since": 6, "epoch": epoch})).await;
        let notice = late
            .wait_json(DELIVERY, |v| v["type"] == "recover_failed")
            .await
            .unwrap();
        assert_eq!(notice["reason"], "epoch", "{notice}");
        assert_ne!(notice["epoch"], epoch.as_str(), "{notice}");
    })
    .await
}

const PREFIX: &str = switchyard_tests::stack::PREFIX;

/// `switchyard send-group GROUP MESSAGE --json` against the Redis at `url`; the broadcast's
/// number, or `None` when it failed (Redis restarting).
async fn send_json(url: &str, group: &str, message: &str) -> Option<u64> {
    let mut cmd = tokio::process::Command::new(switchyard_tests::binary(switchyard_tests::OPS_BIN));
    cmd.args(["send-group", group, message, "--json"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for key in switchyard_tests::process::scrubbed_env() {
        cmd.env_remove(key);
    }
    cmd.env("REDIS_URL", url).env("SWITCHYARD_PREFIX", PREFIX);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .ok()?
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return None;
    }
    stdout
        .rsplit_once("broadcast #")
        .and_then(|(_, rest)| rest.trim().trim_end_matches(')').parse().ok())
}

/// Sends `total` broadcasts `{"k": n}` to `group`, one after the other, retrying a send that
/// failed; returns their numbers.
fn send_steadily(cluster: &Cluster, group: &'static str, total: u64) -> tokio::task::JoinHandle<Vec<u64>> {
    let url = cluster.redis.url();
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut k = 1;
        while k <= total {
            match send_json(&url, group, &json!({ "k": k }).to_string()).await {
                Some(seq) => {
                    sent.push(seq);
                    k += 1;
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_recovers_what_its_lost_subscription_missed() {
    bounded(Duration::from_secs(120), async {
        let cluster = Cluster::builder("history-interface-gap").start().await;
        let mut members = Vec::new();
        for i in 0..9 {
            members.push(joined(&cluster, i % 3, "busy", json!({})).await);
        }
        assert!(
            cluster.wait_subscribers("room:busy", 3, Duration::from_secs(10)).await,
            "three interfaces subscribed"
        );
        const TOTAL: u64 = 80;
        let sending = send_steadily(&cluster, "room:busy", TOTAL);
        let channel = cluster.group_channel("room:busy");
        let mut killed = 0;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let mut con = cluster.redis.conn_for_key(&channel).unwrap();
            let n: u64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut con)
                .unwrap();
            killed += n;
        }
        assert!(killed >= 3, "pub/sub connections killed: {killed}");
        let sent = sending.await.unwrap();
        assert_eq!(sent, (1..=TOTAL).collect::<Vec<_>>(), "send-group numbers");
        every_member_gets_everything_once(&members, TOTAL).await;
    })
    .await
}

/// One group send `{"k": k}` straight through the group-send script (no process to start:
/// fast enough to land before the interfaces have subscribed again).
fn direct_send(con: &mut redis::Connection, group: &str, k: u64) -> redis::RedisResult<u64> {
    direct_send_with(con, "PUBLISH", History::default(), group, k)
}

/// [`direct_send`] with the publish command (`SPUBLISH` on a Redis Cluster) and history.
fn direct_send_with(
    con: &mut redis::Connection,
    publish: &str,
    history: History,
    group: &str,
    k: u64,
) -> redis::RedisResult<u64> {
    let keys = switchyard_protocol::Keys::new(PREFIX);
    let (length, ttl) = history.args();
    let script = redis::Script::new(&switchyard_protocol::scripts::group_send());
    let mut invocation = script.prepare_invoke();
    for key in switchyard_protocol::groups::send_keys(&keys, group) {
        invocation.key(key);
    }
    invocation
        .arg(publish)
        .arg(group)
        .arg("j")
        .arg(json!({ "k": k }).to_string())
        .arg(length)
        .arg(ttl)
        .invoke(con)
}

/// A plain join (no position) misses nothing sent after its answer, even when it is the
/// group's first member on its interface and the send comes before that interface has
/// subscribed: the worker commits the join with the group's position, and the interface
/// delivers from there. Each room gets one send the moment its join is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_join_gets_every_broadcast_sent_after_its_answer() {
    bounded(Duration::from_secs(120), async {
        let cluster = Cluster::builder("history-plain-join").interfaces(1).start().await;
        let members = plain_joins_then_a_send(&cluster, History::default()).await;
        let all: Vec<&Member> = members.iter().map(|(_, m)| m).collect();
        wait_up_to("each room's first broadcast", &all, 1).await;
        tokio::time::sleep(QUIET).await;
        for (room, m) in &members {
            assert_eq!(seq_list(m), [1], "{room}: {:?}", m.frames());
            assert!(notices(m).is_empty(), "{room}: {:?}", m.frames());
        }
    })
    .await
}

/// Without a history there is nothing to recover a plain join from: a send that comes
/// before the interface has subscribed may be missed, but the member, which asked for
/// no position, gets no `recover_failed` either, and what follows arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_join_without_history_gets_no_recover_failed() {
    bounded(Duration::from_secs(120), async {
        let cluster = Cluster::builder("history-plain-join-off").interfaces(1).start().await;
        let members = plain_joins_then_a_send(&cluster, History::OFF).await;
        for (room, m) in &members {
            m.send(say(room, "next"));
        }
        let all: Vec<&Member> = members.iter().map(|(_, m)| m).collect();
        wait_up_to("each room's say", &all, 2).await;
        tokio::time::sleep(QUIET).await;
        for (room, m) in &members {
            let seqs = seq_list(m);
            assert!(seqs == [2] || seqs == [1, 2], "{room}: {:?}", m.frames());
            assert!(notices(m).is_empty(), "{room}: {:?}", m.frames());
        }
    })
    .await
}

/// 40 fresh rooms, each joined plainly on interface-0 and sent `{"k": 1}` straight after
/// the join's answer (connections opened first, so nothing slows the send).
async fn plain_joins_then_a_send(cluster: &Cluster, history: History) -> Vec<(String, Member)> {
    const ROOMS: usize = 40;
    let publish = if cluster.redis.is_cluster() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    let keys = switchyard_protocol::Keys::new(PREFIX);
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("fresh{r}")).collect();
    let mut cons: Vec<redis::Connection> = rooms
        .iter()
        .map(|room| {
            cluster
                .redis
                .conn_for_key(&keys.group_seq(&format!("room:{room}")))
                .unwrap()
        })
        .collect();
    let mut members = Vec::new();
    for (room, con) in rooms.into_iter().zip(cons.iter_mut()) {
        let member = joined(cluster, 0, &room, json!({})).await;
        let seq = direct_send_with(con, publish, history, &format!("room:{room}"), 1).unwrap();
        assert_eq!(seq, 1);
        members.push((room, member));
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_during_a_redis_restart_reach_every_member_once() {
    bounded(Duration::from_secs(120), async {
        let mut cluster = Cluster::builder("history-redis-restart")
            .single_redis()
            .persistent_redis()
            .start()
            .await;
        let mut members = Vec::new();
        for i in 0..9 {
            members.push(joined(&cluster, i % 3, "busy", json!({})).await);
        }
        assert!(cluster.wait_subscribers("room:busy", 3, Duration::from_secs(10)).await);
        const TOTAL: u64 = 60;
        let mut con = cluster.redis.single().conn().unwrap();
        for k in 1..=20 {
            assert_eq!(direct_send(&mut con, "room:busy", k).unwrap(), k);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stopped with its data (fsynced append-only file), away for 3.5 s and started again:
        // every subscription is cut. The interfaces' reconnect backoff has grown to seconds
        // meanwhile (50 ms doubling, at most 2 s: tries at 3.15 s, then 5.15 s), so the next
        // sends, which go out the moment Redis answers, land before they are back on their
        // channels: without recovery they would be lost.
        cluster.redis.single_mut().stop().await;
        tokio::time::sleep(Duration::from_millis(3500)).await;
        cluster.redis.single_mut().restart().await.unwrap();
        let mut k = 21;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while k <= TOTAL {
            assert!(tokio::time::Instant::now() < deadline, "Redis did not take sends again");
            let sent = match cluster.redis.single().conn() {
                Ok(mut con) => direct_send(&mut con, "room:busy", k).ok(),
                Err(_) => None,
            };
            match sent {
                Some(seq) => {
                    assert_eq!(seq, k, "one numbering across the restart");
                    k += 1;
                }
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        every_member_gets_everything_once(&members, TOTAL).await;
    })
    .await
}

async fn every_member_gets_everything_once(members: &[Member], total: u64) {
    let all: Vec<&Member> = members.iter().collect();
    wait_up_to("every broadcast", &all, total).await;
    tokio::time::sleep(QUIET).await;
    for (i, m) in members.iter().enumerate() {
        let got = received(m);
        let seqs: Vec<u64> = got.iter().filter_map(|b| b["seq"].as_u64()).collect();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "member {i} on interface-{}: every broadcast exactly once, in order",
            m.interface
        );
        for b in &got {
            assert_eq!(b["k"], b["seq"], "member {i}: {b}");
        }
        assert!(notices(m).is_empty(), "member {i}: {:?}", notices(m));
        assert!(m.is_open(), "member {i} was closed: {:?}", m.frames());
    }
}
