//! Self-tests of the Redis Cluster harness (`tests/src/redis_cluster.rs`) against six real
//! redis-server processes; they need none of our binaries:
//!
//! - the cluster starts healthy (3 masters, 3 replicas, every slot served), our slot
//!   computation agrees with `CLUSTER KEYSLOT`, and keys land on — and are served by — all
//!   three masters; the test-side helpers (`TestRedis::keys`, `TestConn`, `xrange_all`, the
//!   sharded subscriber count) work on it;
//! - `kill -9` of a master: a replica takes over and the survivors report `cluster_state:ok`
//!   within a bound (the failover time is printed); what was written before is still there;
//!   the killed node, started again, rejoins as a replica of its successor;
//! - a master frozen with SIGSTOP is failed over too, and thaws into a replica; one stopped
//!   with SIGTERM likewise, and is started again as a replica;
//! - command counts are read per node and reset.
//!
//! One cluster per test function; each takes a few seconds.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use switchyard_tests::redis_cluster::{key_slot, Role, NODES, SLOTS};
use switchyard_tests::redis_server::RedisOptions;
use switchyard_tests::stack::{channel_stream, xrange_all};
use switchyard_tests::{bounded, RedisCluster, TestDir, TestRedis, Topology};

/// Failover bound: node timeout (2 s) + failure agreement + election, on a busy machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

/// One key per master: `k:{tag}` with the first tags `t0`, `t1`, … that fall into each
/// master's slots, by master port.
fn key_per_master(cluster: &RedisCluster) -> Vec<(u16, String)> {
    let masters = cluster.masters().expect("read the masters");
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    masters
        .iter()
        .map(|m| {
            let key = (0..)
                .map(|i| format!("k:{{t{i}}}"))
                .find(|k| m.owns_slot(key_slot(k)))
                .expect("some tag hashes into every master's slots");
            (m.port, key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_starts_and_serves_keys_on_every_master() {
    bounded(Duration::from_secs(180), async {
        let dir = TestDir::new("harness-redis-cluster");
        let started = Instant::now();
        let redis = TestRedis::start(dir.path(), Topology::Cluster, RedisOptions::default())
            .await
            .expect("start a Redis Cluster");
        eprintln!(
            "[redis-cluster] started healthy in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert!(redis.is_cluster());
        let cluster = redis.cluster();

        // Topology: 3 masters covering every slot once, 3 replicas, one per master.
        let nodes = cluster.nodes().expect("CLUSTER NODES");
        assert_eq!(nodes.len(), NODES, "{nodes:?}");
        let masters = cluster.masters().expect("masters");
        assert_eq!(
            masters.iter().map(|m| m.slot_count()).sum::<usize>(),
            usize::from(SLOTS)
        );
        for m in &masters {
            let replicas: Vec<u16> = nodes
                .iter()
                .filter(|n| n.role == Role::Replica && n.master_id.as_deref() == Some(m.id.as_str()))
                .map(|n| n.port)
                .collect();
            assert_eq!(replicas.len(), 1, "replicas of master {}: {replicas:?}", m.port);
        }
        let mut ports = cluster.ports();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), NODES);
        assert!(ports.iter().all(|&p| p != 6379 && p < 55535));

        // The URL names the masters as seeds; the binaries get it as --redis-url.
        let url = redis.url();
        let mut seeds: Vec<u16> = url
            .strip_prefix("redis+cluster://")
            .unwrap_or_else(|| panic!("not a cluster URL: {url}"))
            .split(',')
            .map(|hp| {
                hp.strip_prefix("127.0.0.1:")
                    .and_then(|p| p.parse().ok())
                    .expect("host:port")
            })
            .collect();
        seeds.sort();
        let master_ports: Vec<u16> = masters.iter().map(|m| m.port).collect();
        assert_eq!(seeds, master_ports, "{url}");
        assert_eq!(redis.client_args(), vec!["--redis-url".to_string(), url.clone()]);

        // Our slot computation is Redis's.
        let mut con = redis.conn().expect("cluster connection");
        for key in [
            "foo",
            "somekey",
            "switchyard:chan:{chat}",
            "switchyard:group:{room:alpha}",
            "{}x",
            "a{b}c",
        ] {
            let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut con).unwrap();
            assert_eq!(key_slot(key), slot, "slot of {key:?}");
        }

        // A key in each master's slots: written through the cluster connection, stored on
        // that master (read there directly, no redirect), served back by the cluster.
        let keys = key_per_master(cluster);
        for (port, key) in &keys {
            let _: () = redis::cmd("SET").arg(key).arg(port).query(&mut con).unwrap();
            assert_eq!(cluster.master_for_key(key).unwrap().port, *port);
            let mut direct = cluster.node_conn(*port).unwrap();
            let stored: Option<u16> = redis::cmd("GET").arg(key).query(&mut direct).unwrap();
            assert_eq!(stored, Some(*port), "{key} not on master {port}");
            let served: u16 = redis::cmd("GET").arg(key).query(&mut con).unwrap();
            assert_eq!(served, *port);
        }

        // KEYS over every master, merged: through the helper and through the TestConn.
        let mut want: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
        want.sort();
        assert_eq!(redis.keys("k:*").unwrap(), want);
        let mut via_conn: Vec<String> = redis::cmd("KEYS").arg("k:*").query(&mut con).unwrap();
        via_conn.sort();
        assert_eq!(via_conn, want);

        // Streams, as the tests read them.
        let stream = channel_stream("echo");
        for i in 0..3 {
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("m")
                .arg(format!("entry {i}"))
                .query(&mut con)
                .unwrap();
        }
        let entries = xrange_all(&mut con, &stream).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].field("m"), Some("entry 2"));

        // A sharded subscriber on the node serving its channel is counted.
        let channel = "switchyard:group:{room:alpha}";
        assert_eq!(redis.shard_subscribers(channel).unwrap(), 0);
        let owner = cluster.master_for_key(channel).unwrap().port;
        let mut subscriber = std::net::TcpStream::connect(("127.0.0.1", owner)).expect("connect to the owner");
        subscriber
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        write!(
            subscriber,
            "*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{channel}\r\n",
            channel.len()
        )
        .unwrap();
        let mut confirmation = [0u8; 64];
        let n = subscriber.read(&mut confirmation).expect("SSUBSCRIBE confirmed");
        assert!(
            String::from_utf8_lossy(&confirmation[..n]).contains("ssubscribe"),
            "{:?}",
            String::from_utf8_lossy(&confirmation[..n])
        );
        assert_eq!(redis.shard_subscribers(channel).unwrap(), 1);
        assert_eq!(redis.subscribers(channel).unwrap(), 0, "not a classic subscriber");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_rejoins_as_a_replica() {
    bounded(Duration::from_secs(240), async {
        let dir = TestDir::new("harness-redis-cluster-failover");
        let mut cluster = RedisCluster::start(dir.path()).await.expect("start a Redis Cluster");
        let keys = key_per_master(&cluster);
        for (port, key) in &keys {
            // Written on the master itself, then WAIT (on the same connection: it waits for
            // that connection's writes) until its replica has it: a kill -9 loses what the
            // replica has not got yet.
            let mut direct = cluster.node_conn(*port).unwrap();
            let _: () = redis::cmd("SET").arg(key).arg(port).query(&mut direct).unwrap();
            let acked: u64 = redis::cmd("WAIT").arg(1).arg(10_000).query(&mut direct).unwrap();
            assert_eq!(acked, 1, "replica of {port} did not acknowledge {key}");
        }

        let victim_key = keys[0].1.as_str();
        let victim = cluster.kill_master_for_key(victim_key).expect("kill -9 the master");
        assert_eq!(victim, keys[0].0);
        assert!(!cluster.is_running(victim));
        let failover = cluster
            .wait_failover(victim, FAILOVER_BOUND)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!(
            "[redis-cluster] kill -9 of master {victim}: replica {} took over, cluster_state:ok on the survivors after {:.2} s",
            failover.new_master,
            failover.took.as_secs_f64()
        );
        assert_ne!(failover.new_master, victim);
        assert!(failover.took < FAILOVER_BOUND);
        let masters = cluster.masters().unwrap();
        assert_eq!(masters.len(), 3, "{masters:?}");
        assert!(masters.iter().any(|m| m.port == failover.new_master));
        assert!(!masters.iter().any(|m| m.port == victim));
        assert!(cluster.url().contains(&format!(":{}", failover.new_master)), "{}", cluster.url());
        assert!(!cluster.url().contains(&format!(":{victim}")), "{}", cluster.url());

        // Every key is still there, the victim's on its successor.
        let mut con = cluster.conn().expect("cluster connection after the failover");
        for (port, key) in &keys {
            let value: u16 = redis::cmd("GET")
                .arg(key)
                .query(&mut con)
                .unwrap_or_else(|e| panic!("GET {key} after the failover: {e}"));
            assert_eq!(value, *port);
        }
        assert_eq!(cluster.master_for_key(victim_key).unwrap().port, failover.new_master);

        // Started again, the old master rejoins as its successor's replica and syncs.
        let restarted = Instant::now();
        let role = cluster.restart_node(victim).await.unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!(
            "[redis-cluster] node {victim} restarted and back in sync as a {role:?} in {:.2} s",
            restarted.elapsed().as_secs_f64()
        );
        assert_eq!(role, Role::Replica);
        let nodes = cluster.nodes().unwrap();
        let successor = nodes.iter().find(|n| n.port == failover.new_master).unwrap();
        let rejoined = nodes.iter().find(|n| n.port == victim).unwrap();
        assert_eq!(rejoined.master_id.as_deref(), Some(successor.id.as_str()));
        let mut replica = cluster.node_conn(victim).unwrap();
        redis::cmd("READONLY").exec(&mut replica).unwrap();
        let value: u16 = redis::cmd("GET")
            .arg(victim_key)
            .query(&mut replica)
            .unwrap_or_else(|e| panic!("GET {victim_key} on the rejoined replica {victim}: {e}"));
        assert_eq!(value, victim, "the rejoined replica has the data");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_and_stopped_masters_fail_over_and_come_back_as_replicas() {
    bounded(Duration::from_secs(240), async {
        let dir = TestDir::new("harness-redis-cluster-pause");
        let mut cluster = RedisCluster::start(dir.path()).await.expect("start a Redis Cluster");
        let frozen = cluster.masters().unwrap()[1].port;
        cluster.pause_node(frozen).unwrap();
        let failover = cluster
            .wait_failover(frozen, FAILOVER_BOUND)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!(
            "[redis-cluster] SIGSTOP of master {frozen}: replica {} took over after {:.2} s",
            failover.new_master,
            failover.took.as_secs_f64()
        );
        cluster.resume_node(frozen).unwrap();
        let view = cluster
            .wait_healthy(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let thawed = view.iter().find(|n| n.port == frozen).unwrap();
        assert_eq!(thawed.role, Role::Replica, "{view:?}");

        // SIGTERM of the new master (as the chaos test does on a cluster): its replica —
        // the thawed node — takes over again, and the stopped one comes back as a replica.
        let stopped = failover.new_master;
        cluster.stop_node(stopped).await.unwrap();
        let again = cluster
            .wait_failover(stopped, FAILOVER_BOUND)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!(
            "[redis-cluster] SIGTERM of master {stopped}: replica {} took over after {:.2} s",
            again.new_master,
            again.took.as_secs_f64()
        );
        assert_eq!(again.new_master, frozen);
        assert_eq!(cluster.restart_node(stopped).await.unwrap(), Role::Replica);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_stats_are_read_per_node_and_reset() {
    bounded(Duration::from_secs(180), async {
        let dir = TestDir::new("harness-redis-cluster-stats");
        let redis = TestRedis::start(dir.path(), Topology::Cluster, RedisOptions::default())
            .await
            .expect("start a Redis Cluster");
        let cluster = redis.cluster();
        let keys = key_per_master(cluster);
        let mut con = redis.conn().unwrap();
        cluster.reset_stats().unwrap();
        // Master i gets i + 1 writes.
        for (i, (_, key)) in keys.iter().enumerate() {
            for n in 0..=i {
                let _: () = redis::cmd("SET").arg(key).arg(n).query(&mut con).unwrap();
            }
        }
        let stats = cluster.command_stats().unwrap();
        assert_eq!(stats.len(), NODES);
        for (i, (port, _)) in keys.iter().enumerate() {
            let node = stats.iter().find(|s| s.port == *port).unwrap();
            assert_eq!(node.role, Role::Master);
            assert_eq!(
                node.calls("set"),
                i as u64 + 1,
                "SETs on master {port}: {:?}",
                node.calls
            );
        }
        for s in &stats {
            eprintln!("[redis-cluster] node {} ({:?}): {:?}", s.port, s.role, s.calls);
        }
        // Summed over the nodes: at least the 6 writes (a replica may count the ones it
        // applied from its master too).
        assert!(redis.command_calls("set").unwrap() >= 6);

        redis.reset_stats().unwrap();
        let stats = cluster.command_stats().unwrap();
        assert!(stats.iter().all(|s| s.calls("set") == 0), "{stats:?}");
    })
    .await
}
