//! Redis Cluster under faults: a master killed with `kill -9` under load, slots moved
//! between masters under load, a group's master killed under its members.
//!
//! Why these exist: on a cluster the deployment survives losing a node, but only if every
//! process follows the failover (the promoted replica, MOVED and ASK, subscriptions on the
//! node that now owns a group) without a restart, and only if the commit's steps, each in
//! its own slot, still apply every effect once. These run on a real 3-master cluster with
//! replicas (`tests/src/redis_cluster.rs`) whatever `SWITCHYARD_TEST_REDIS` says.

use std::time::Duration;

use switchyard_tests::load::{Load, LoadReport};
use switchyard_tests::stack::PREFIX;
use switchyard_tests::{bounded, eventually, Stack};

const CONNS: usize = 60;
const WINDOW: u64 = 4;
/// A message held through a failover waits for it (the node timeout is 2 s, an election
/// follows), then for the hold: well under this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(40);

fn assert_exactly_once_in_order(report: LoadReport) -> u64 {
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {CONNS} connections failed (a close, a gap, a repeat or no answer):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(report.idle_connections(), 0, "a connection got no answer at all");
    report.total()
}

/// `kill -9` of the master that holds the interface's reply stream (every reply of the
/// test goes through it), with `--redis-wait-replicas 1`: the replica takes over, no socket
/// is closed, and every message of every connection is answered exactly once, in order
/// (the chat counter lives in each connection's session: a lost or repeated session write
/// shows as a wrong count). Two replicas per master, so the promoted replica still has one:
/// `--redis-wait-replicas 1` is only met while each master has a replica, and a killed
/// node must not come back with its old cluster config and no data (it would serve its old
/// slots, empty, until gossip corrects it), so it stays down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_master_under_load_loses_nothing_with_wait() {
    bounded(Duration::from_secs(150), async {
        let mut stack = Stack::builder("failover-kill9")
            .redis_cluster_with_replicas(2)
            .workers(3)
            .interface_arg("--id")
            .interface_arg("failover-if")
            .interface_arg("--redis-hold")
            .interface_arg("30")
            .interface_arg("--redis-wait-replicas")
            .interface_arg("1")
            .worker_arg("--redis-wait-replicas")
            .worker_arg("1")
            .start()
            .await;
        let load = Load::start(&stack.ws_url("/ws/chat/"), CONNS, WINDOW, REPLY_TIMEOUT)
            .await
            .expect("load connections");
        assert!(
            load.wait_answered(1000, Duration::from_secs(30)).await,
            "load did not get going: {} answers",
            load.answered()
        );
        let reply_stream = format!("{PREFIX}:reply:{{failover-if}}");
        let before = load.answered();
        let cluster = stack.redis.cluster_mut();
        let dead = cluster.kill_master_for_key(&reply_stream).expect("kill the master");
        eprintln!("[test] kill -9 of master {dead} (holds {reply_stream}) after {before} answers");
        let failover = cluster
            .wait_failover(dead, Duration::from_secs(30))
            .await
            .expect("a replica takes over");
        eprintln!(
            "[test] {} took over in {:.1} s",
            failover.new_master,
            failover.took.as_secs_f64()
        );
        let at_failover = load.answered();
        assert!(
            load.wait_answered(at_failover + 2000, Duration::from_secs(40)).await,
            "no progress after the failover: {} answers at the failover, {} now",
            at_failover,
            load.answered()
        );
        let total = assert_exactly_once_in_order(load.finish().await);
        eprintln!("[test] {total} messages answered exactly once, in order, across the failover");
        assert!(stack.interface().is_running(), "the interface died");
        for worker in &mut stack.workers {
            assert!(worker.is_running(), "{} died", worker.name());
        }
    })
    .await
}

/// Every slot of the master that holds shard 0 of the chat channel moves to another master
/// while clients stream messages (`redis-cli --cluster reshard`: keys migrate one by one, so
/// clients meet ASK during the move and MOVED after it). Nothing is closed, lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_slots_under_load_is_followed_without_a_restart() {
    bounded(Duration::from_secs(150), async {
        let stack = Stack::builder("failover-reshard")
            .redis_cluster()
            .workers(2)
            .interface_arg("--redis-hold")
            .interface_arg("30")
            .start()
            .await;
        let load = Load::start(&stack.ws_url("/ws/chat/"), CONNS, WINDOW, REPLY_TIMEOUT)
            .await
            .expect("load connections");
        assert!(
            load.wait_answered(1000, Duration::from_secs(30)).await,
            "load did not get going: {} answers",
            load.answered()
        );
        let shard = format!("{PREFIX}:chan:{{chat:0}}");
        let cluster = stack.redis.cluster();
        let from = cluster.master_for_key(&shard).expect("master of the shard");
        let to = cluster
            .masters()
            .expect("masters")
            .into_iter()
            .find(|m| m.port != from.port)
            .expect("another master");
        let slots = from.slot_count();
        eprintln!("[test] moving {slots} slots from {} to {}", from.port, to.port);
        let output = tokio::process::Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &format!("127.0.0.1:{}", from.port),
                "--cluster-from",
                &from.id,
                "--cluster-to",
                &to.id,
                "--cluster-slots",
                &slots.to_string(),
                "--cluster-yes",
                "--cluster-pipeline",
                "100",
            ])
            .output()
            .await
            .expect("run redis-cli --cluster reshard");
        assert!(
            output.status.success(),
            "reshard failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let moved_to = stack
            .redis
            .cluster()
            .master_for_key(&shard)
            .expect("master of the shard");
        assert_eq!(moved_to.port, to.port, "the shard's slot did not move");
        let after = load.answered();
        assert!(
            load.wait_answered(after + 2000, Duration::from_secs(40)).await,
            "no progress after the slots moved: {after} answers then, {} now",
            load.answered()
        );
        let total = assert_exactly_once_in_order(load.finish().await);
        eprintln!("[test] {total} messages answered exactly once, in order, across the move");
    })
    .await
}

/// Members of a group on an interface; the master that owns the group's slot is killed.
/// After the failover the interface is subscribed on the promoted replica (sharded pub/sub)
/// and broadcasts reach every member again, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_broadcasts_follow_the_groups_master_through_a_failover() {
    bounded(Duration::from_secs(120), async {
        let mut stack = Stack::builder("failover-groups")
            .redis_cluster()
            .workers(2)
            .start()
            .await;
        let mut members = Vec::new();
        for _ in 0..3 {
            let mut member = stack.ws("/ws/rooms/").await;
            member.send_text(r#"{"join": "lobby"}"#).await.expect("join");
            let joined = member.recv_json(Duration::from_secs(15)).await.expect("joined");
            assert_eq!(joined["joined"], "lobby", "{joined}");
            members.push(member);
        }
        let channel = format!("{PREFIX}:group:{{room:lobby}}");
        let cluster = stack.redis.cluster_mut();
        assert!(
            eventually(Duration::from_secs(10), || async {
                (cluster.shard_subscribers(&channel).unwrap_or(0) >= 1).then_some(())
            })
            .await
            .is_some(),
            "the interface never subscribed to {channel}"
        );
        let dead = cluster.kill_master_for_key(&channel).expect("kill the group's master");
        cluster
            .wait_failover(dead, Duration::from_secs(30))
            .await
            .expect("a replica takes over");
        eprintln!("[test] the group's master {dead} was replaced");
        // Broadcasts sent before the subscription is back are missed (pub/sub); so send
        // numbered ones until every member has seen one, then check the rest arrive once each.
        let mut sender = stack.ws("/ws/rooms/").await;
        let mut first_seen = None;
        for n in 0..60 {
            sender
                .send_text(format!(r#"{{"say": "after-{n}", "room": "lobby"}}"#))
                .await
                .expect("say");
            if let Ok(message) = members[0].recv_json(Duration::from_millis(500)).await {
                if message["text"].as_str().is_some_and(|t| t.starts_with("after-")) {
                    first_seen = Some(n);
                    break;
                }
            }
        }
        let first = first_seen.expect("no broadcast reached a member within 30 s of the failover");
        eprintln!("[test] broadcasts reach members again from message {first}");
        for n in 100..110 {
            sender
                .send_text(format!(r#"{{"say": "check-{n}", "room": "lobby"}}"#))
                .await
                .expect("say");
        }
        for (i, member) in members.iter_mut().enumerate() {
            let mut seen = Vec::new();
            while seen.len() < 10 {
                let message = member
                    .recv_json(Duration::from_secs(15))
                    .await
                    .unwrap_or_else(|e| panic!("member {i} stopped receiving after {seen:?}: {e:#}"));
                if let Some(text) = message["text"].as_str() {
                    if text.starts_with("check-") {
                        seen.push(text.to_owned());
                    }
                }
            }
            let expected: Vec<String> = (100..110).map(|n| format!("check-{n}")).collect();
            assert_eq!(seen, expected, "member {i}: every broadcast once, in order");
        }
    })
    .await
}
