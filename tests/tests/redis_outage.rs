//! Redis outages: `/readyz` reports them, and sockets stay open while Redis is away; both
//! sides reconnect on their own and carry on once it is back.

use std::time::Duration;

use switchyard_tests::stack::REPLY_TIMEOUT;
use switchyard_tests::{bounded, eventually, http, Incoming, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_survive_a_redis_restart() {
    bounded(Duration::from_secs(60), async {
        let mut stack = Stack::builder("redis-outage").workers(1).start().await;
        let mut c = stack.ws("/ws/echo/").await;
        c.send_text("before").await.unwrap();
        assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text("before".into()));

        stack.redis.kill();
        let addr = stack.addr.clone();
        let not_ready = eventually(Duration::from_secs(15), || {
            let addr = addr.clone();
            async move { (http::status(&addr, "/readyz").await == Some(503)).then_some(()) }
        })
        .await;
        assert!(
            not_ready.is_some(),
            "/readyz did not turn 503 within 15 s of Redis dying"
        );
        assert_eq!(
            http::status(&stack.addr, "/healthz").await,
            Some(200),
            "/healthz while Redis is down"
        );

        tokio::time::sleep(Duration::from_secs(1)).await;
        stack.redis.restart().await.unwrap();
        let ready = eventually(Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { (http::status(&addr, "/readyz").await == Some(200)).then_some(()) }
        })
        .await;
        assert!(
            ready.is_some(),
            "/readyz did not return to 200 within 20 s of Redis coming back"
        );

        // The same socket works again (the restarted Redis is empty: groups and streams must
        // be recreated by the processes themselves).
        c.send_text("after").await.unwrap();
        assert_eq!(
            c.recv(Duration::from_secs(30)).await.unwrap(),
            Incoming::Text("after".into()),
            "echo on the socket opened before the outage"
        );
        assert!(stack.workers[0].is_running(), "worker died during the outage");
        // And new connections too.
        let mut d = stack.ws("/ws/echo/").await;
        d.send_text("new").await.unwrap();
        assert_eq!(d.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text("new".into()));
    })
    .await
}
