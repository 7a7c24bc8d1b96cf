//! Channel shards: an interface that appends to more shards than the workers read today is
//! followed at once, and `switchyard status` shows every shard with the node that holds it.
//!
//! Why this exists: a channel's stream is split in shards (`P:chan:{CHANNEL:N}`), chosen
//! per connection by the interface. A worker that did not read a shard would leave its
//! messages unanswered, so workers read every shard any interface announces
//! (docs/protocol.md, "Channel shards"); this is the test that fails if they do not.

use std::time::Duration;

use switchyard_tests::cluster::Cluster;
use switchyard_tests::stack::{entries_added, PREFIX};
use switchyard_tests::{bounded, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_read_the_shards_an_interface_announces_after_they_started() {
    bounded(Duration::from_secs(90), async {
        let mut cluster = Cluster::builder("shards-grow").interfaces(1).workers(2).start().await;
        let before = cluster.status_json().await.expect("status");
        let shards_before = before["channels"]["chat"]["shards"].as_array().map_or(0, Vec::len);

        // The interface comes back appending to 5 shards; the workers were started for fewer.
        cluster.interface(0).sigterm();
        assert!(cluster.interface(0).wait_exit(Duration::from_secs(15)).await.is_some());
        cluster
            .restart_interface(0, &["--channel-shards".to_string(), "5".to_string()])
            .await;
        assert!(shards_before < 5, "started with {shards_before} shards already");

        // New connections spread over all 5 shards; every one is answered.
        let mut clients = Vec::new();
        for _ in 0..20 {
            clients.push(cluster.ws(0, "/ws/chat/").await);
        }
        for client in &mut clients {
            for expected in 1..=3 {
                let count = client.chat("hi", Duration::from_secs(20)).await.expect("chat answered");
                assert_eq!(count, expected);
            }
        }
        let mut redis = cluster.redis.conn().expect("redis");
        // Counted with XINFO STREAM's entries-added, not XLEN: the workers trim
        // handled entries, so a shard's length may be back to 0 already.
        let mut used = 0;
        for shard in 0..5 {
            let added = entries_added(&mut redis, &format!("{PREFIX}:chan:{{chat:{shard}}}"));
            used += usize::from(added > 0);
        }
        assert!(used >= 4, "only {used} of 5 shards got messages");

        let status = eventually(Duration::from_secs(10), || async {
            let status = cluster.status_json().await.ok()?;
            (status["channels"]["chat"]["shards"].as_array().map_or(0, Vec::len) == 5).then_some(status)
        })
        .await
        .expect("status shows 5 shards of chat");
        for shard in status["channels"]["chat"]["shards"].as_array().into_iter().flatten() {
            assert!(shard["node"].as_str().is_some_and(|n| !n.is_empty()), "{shard}");
            assert_eq!(shard["backlog"], 0, "{shard}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_shard_and_the_node_that_holds_it() {
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::builder("shards-status").interfaces(1).workers(1).start().await;
        let status = cluster.status_json().await.expect("status");
        let shards = status["channels"]["echo"]["shards"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if cluster.redis.is_cluster() {
            // One shard per master by default, each on the master that owns its slot.
            let masters = cluster.redis.cluster().masters().expect("masters");
            assert_eq!(shards.len(), masters.len(), "{status}");
            for shard in &shards {
                let stream = shard["stream"].as_str().expect("stream");
                let owner = cluster.redis.cluster().master_for_key(stream).expect("owner");
                assert_eq!(shard["node"], format!("127.0.0.1:{}", owner.port), "{shard}");
            }
            assert_eq!(status["redis"]["topology"], "cluster", "{status}");
            assert_eq!(
                status["redis"]["shards"].as_array().map_or(0, Vec::len),
                masters.len(),
                "{status}"
            );
        } else {
            assert_eq!(shards.len(), 1, "{status}");
            assert_eq!(shards[0]["stream"], format!("{PREFIX}:chan:{{echo:0}}"), "{status}");
            assert_eq!(shards[0]["node"], "single", "{status}");
            assert_eq!(status["redis"]["topology"], "single", "{status}");
        }
        let table = cluster.ops(&["status"]).await.expect("status table");
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(text.contains("SHARD") && text.contains(":chan:{echo:0}"), "{text}");
    })
    .await
}
