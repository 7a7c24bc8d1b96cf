//! `switchyard status` counts a channel's backlog itself: entries past the workers' group's
//! last-delivered id, not Redis's `lag` hint (which can stay stale after restarts).

use std::time::Duration;

use switchyard_tests::cluster::Cluster;
use switchyard_tests::stack::channel_stream;
use switchyard_tests::{bounded, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_the_backlog_of_a_channel_without_workers() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::builder("status-backlog")
            .interfaces(1)
            .workers(1)
            .start()
            .await;
        cluster.workers[0].sigterm();
        assert!(cluster.workers[0].wait_exit(Duration::from_secs(15)).await.is_some());

        let mut redis = cluster.redis.conn().unwrap();
        for i in 0..7 {
            let _: String = redis::cmd("XADD")
                .arg(channel_stream("chat"))
                .arg("*")
                .arg("m")
                .arg(format!("not msgpack {i}"))
                .query(&mut redis)
                .unwrap();
        }
        let status = cluster.status_json().await.unwrap();
        assert_eq!(status["channels"]["chat"]["backlog"], 7, "status: {status}");
        assert_eq!(status["channels"]["chat"]["pending"], 0, "status: {status}");

        // A worker takes them (to the dead-letter stream): the backlog is 0 again.
        cluster.spawn_worker();
        let drained = eventually(Duration::from_secs(20), || async {
            let status = cluster.status_json().await.ok()?;
            (status["channels"]["chat"]["backlog"] == 0 && status["channels"]["chat"]["pending"] == 0).then_some(())
        })
        .await;
        assert!(
            drained.is_some(),
            "backlog not back to 0: {}",
            cluster.status_json().await.unwrap()
        );
    })
    .await
}
