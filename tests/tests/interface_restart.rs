//! An interface restarted under the same `--id` after `kill -9` serves new clients at once.
//!
//! The killed process's connections left sequence records (and maybe late replies) in Redis
//! under its reply address; the new process must not hand their ids out again, or a new
//! client's messages would be taken for repeats of an old client's and never answered.

use std::time::Duration;

use switchyard_tests::cluster::Cluster;
use switchyard_tests::stack::REPLY_TIMEOUT;
use switchyard_tests::{bounded, ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_clients_after_a_kill9_restart_under_the_same_id_are_served() {
    bounded(Duration::from_secs(90), async {
        let mut cluster = Cluster::builder("restart-same-id")
            .interfaces(1)
            .workers(1)
            .start()
            .await;
        let mut old = Vec::new();
        for _ in 0..5 {
            let mut c = cluster.ws(0, "/ws/chat/").await;
            for _ in 0..5 {
                c.chat("before", REPLY_TIMEOUT).await.unwrap();
            }
            old.push(c);
        }
        cluster.interface(0).kill9();
        cluster.restart_interface(0, &[]).await;

        let url = cluster.ws_url(0, "/ws/chat/");
        for i in 1..=8 {
            let mut c = ws::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("new client {i} refused by the restarted interface: {e:?}"));
            assert_eq!(
                c.chat("after", REPLY_TIMEOUT).await.unwrap(),
                1,
                "new client {i}: a fresh session counts from 1"
            );
        }
    })
    .await
}
