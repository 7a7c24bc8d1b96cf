//! A message Redis delivered to a worker whose connection then broke (the reply to its
//! XREADGROUP never arrived: a Redis restart does that) is handled as soon as the worker has
//! reconnected, not after the `--claim-idle` backstop (60 s). Found by the chaos run.

use std::time::Duration;

use switchyard_tests::cluster::Cluster;
use switchyard_tests::stack::{PREFIX, REPLY_TIMEOUT};
use switchyard_tests::{bounded, eventually, Incoming};

const WORKER_NAME: &str = "reconnecting-worker";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_delivered_over_a_broken_connection_is_handled_after_reconnect() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::builder("worker-reconnect")
            .interfaces(1)
            .workers(1)
            .worker_env("SWITCHYARD_WORKER_NAME", WORKER_NAME)
            .start()
            .await;
        let mut client = cluster.ws(0, "/ws/echo/").await;
        client.send_text("before").await.unwrap();
        assert_eq!(
            client.recv(REPLY_TIMEOUT).await.unwrap(),
            Incoming::Text("before".into())
        );

        // Freeze the worker; its blocking read times out on the server, so nothing of ours
        // is waiting on the stream when the next message arrives.
        cluster.workers[0].signal(libc::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        client.send_text("lost reply").await.unwrap();

        // Deliver that entry to the worker's consumer name on a connection of ours, as Redis
        // did for the worker's read whose reply was lost.
        // (On the node serving the stream: the worker's reader connection is there too.)
        let stream = format!("{PREFIX}:chan:{{echo:0}}");
        let mut con = cluster.redis.conn_for_key(&stream).unwrap();
        let delivered = eventually(Duration::from_secs(10), || {
            let reply: redis::RedisResult<redis::Value> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("workers")
                .arg(WORKER_NAME)
                .arg("COUNT")
                .arg(10)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query(&mut con);
            let got = matches!(reply, Ok(redis::Value::Array(ref streams)) if !streams.is_empty());
            async move { got.then_some(()) }
        })
        .await;
        assert!(delivered.is_some(), "the message never reached the stream");

        // Break the worker's reader connection, then let the worker go on.
        let me: u64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
        let readers: Vec<u64> = list
            .lines()
            .filter(|l| l.contains(" cmd=xreadgroup "))
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .filter(|&id| id != me)
            .collect();
        assert!(
            !readers.is_empty(),
            "no worker reader connection in CLIENT LIST:\n{list}"
        );
        for id in readers {
            let _: redis::RedisResult<u64> = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query(&mut con);
        }
        cluster.workers[0].signal(libc::SIGCONT);

        // Well within --claim-idle (60 s): the worker finds it in its own pending history.
        assert_eq!(
            client.recv(Duration::from_secs(15)).await.unwrap(),
            Incoming::Text("lost reply".into()),
            "the entry delivered before the reconnect was not handled"
        );
        client.send_text("after").await.unwrap();
        assert_eq!(
            client.recv(REPLY_TIMEOUT).await.unwrap(),
            Incoming::Text("after".into())
        );
    })
    .await
}
