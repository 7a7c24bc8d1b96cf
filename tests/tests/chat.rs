//! The chat app: a per-connection counter, and sessions that resume by `session_uuid`.

use std::time::Duration;

use switchyard_tests::stack::REPLY_TIMEOUT;
use switchyard_tests::test_redis::TestConn;
use switchyard_tests::{bounded, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_counter_correct_over_1000_messages() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("chat-1000").workers(1).start().await;
        let mut c = stack.ws("/ws/chat/").await;
        c.chat_counts_to(1000, REPLY_TIMEOUT).await;
        c.close().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_session_resumes_by_session_uuid() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("chat-session").workers(2).start().await;
        let path = "/ws/chat/?session_uuid=9d7c1f6e-3b1a-4c55-a0d2-5f6b9e8a7c31";

        let mut c = stack.ws(path).await;
        for expected in 1..=3 {
            assert_eq!(c.chat("hi", REPLY_TIMEOUT).await.unwrap(), expected);
        }
        c.close().await;

        let mut again = stack.ws(path).await;
        assert_eq!(
            again.chat("back again", REPLY_TIMEOUT).await.unwrap(),
            4,
            "reconnecting with the same session_uuid continues the count"
        );

        let mut other = stack
            .ws("/ws/chat/?session_uuid=0b1e2c3d-4f5a-6b7c-8d9e-0f1a2b3c4d5e")
            .await;
        assert_eq!(
            other.chat("hello", REPLY_TIMEOUT).await.unwrap(),
            1,
            "a different session_uuid starts at 1"
        );
        assert_eq!(again.chat("still here", REPLY_TIMEOUT).await.unwrap(), 5);

        // Without a session_uuid every connection counts on its own.
        let mut anon = stack.ws("/ws/chat/").await;
        assert_eq!(anon.chat("x", REPLY_TIMEOUT).await.unwrap(), 1);
        again.close().await;
        other.close().await;
        anon.close().await;
    })
    .await
}

/// The commit script sets expiries once per batch; every key it writes must still get one, or
/// sessions, reply streams and sequence tables would pile up in Redis forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reply_stream_and_sequence_table_expire() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("chat-expiry").workers(1).start().await;
        let session = "0b6f2a1c-8f3e-4d7a-9c21-6e5d4b3a2f10";
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(stack.ws(&format!("/ws/chat/?session_uuid={session}")).await);
        }
        for round in 0..20 {
            for c in clients.iter_mut() {
                c.send_text(format!("burst {round}")).await.unwrap();
            }
        }
        for c in clients.iter_mut() {
            for _ in 0..20 {
                c.recv_count(REPLY_TIMEOUT).await.unwrap();
            }
        }
        let mut redis = stack.redis_conn().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("switchyard:*").query(&mut redis).unwrap();
        // The outbox (the session write's guard) is a field of the session hash (a large one
        // has a key of its own, with the session's expiry); connseq is written for HTTP
        // request bodies only.
        let expiring = ["switchyard:session:", "switchyard:reply:"];
        for prefix in expiring {
            let matching: Vec<&String> = keys.iter().filter(|k| k.starts_with(prefix)).collect();
            assert!(!matching.is_empty(), "no {prefix}* key written; keys: {keys:?}");
            for key in matching {
                let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut redis).unwrap();
                assert!(ttl > 0, "{key} has no expiry (PTTL {ttl})");
            }
        }
    })
    .await
}

/// The session's expiry is refreshed only once a quarter of it has run down (not at every
/// message), and that is enough: a session in steady use outlives its TTL many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_use_outlives_its_ttl() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("chat-session-ttl")
            .workers(1)
            .worker_arg("--session-ttl=4")
            .start()
            .await;
        let session = "5d1b0c9e-2f4a-4b6c-8d3e-7a9f1e2b3c4d";
        let mut client = stack.ws(&format!("/ws/chat/?session_uuid={session}")).await;
        let mut redis = stack.redis_conn().unwrap();
        let key = format!("switchyard:session:{{{session}}}");
        // 8 s of use, a message every 100 ms: two TTLs. `~x` is when the key expires, as set
        // by the last refresh (due once a quarter of the TTL has run down: about every 1 s).
        let mut refreshes = std::collections::BTreeSet::new();
        for n in 1..=80u64 {
            client.send_text(format!("m{n}")).await.unwrap();
            assert_eq!(
                client.recv_count(REPLY_TIMEOUT).await.unwrap(),
                n,
                "the session was lost"
            );
            let expires: u64 = redis::cmd("HGET").arg(&key).arg("~x").query(&mut redis).unwrap();
            refreshes.insert(expires);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut redis).unwrap();
        assert!(ttl > 0 && ttl <= 4000, "PTTL {ttl}");
        assert!(
            (3..40).contains(&refreshes.len()),
            "the session's expiry was set {} times for 80 messages over 8 s",
            refreshes.len()
        );
        // Unused, it goes.
        tokio::time::sleep(Duration::from_millis(4500)).await;
        let exists: bool = redis::cmd("EXISTS").arg(&key).query(&mut redis).unwrap();
        assert!(!exists, "an unused session outlived its TTL");
    })
    .await
}

/// A connection's outbox is a field of its session; once the connection is gone, that field
/// is kept for a while (a slow worker may still commit one of its messages) and then deleted
/// by a later commit of the session, so a session shared by many connections over time does
/// not pile up outboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outboxes_of_connections_that_are_gone_are_purged() {
    bounded(Duration::from_secs(60), async {
        // The closing delay is the session TTL when that is shorter than an hour.
        let stack = Stack::builder("chat-outbox-purge")
            .workers(1)
            .worker_arg("--session-ttl=4")
            .start()
            .await;
        let session = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
        let url = format!("/ws/chat/?session_uuid={session}");
        let key = format!("switchyard:session:{{{session}}}");
        let mut redis = stack.redis_conn().unwrap();
        let outboxes = |redis: &mut TestConn| -> Vec<String> {
            let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query(redis).unwrap();
            fields.into_iter().filter(|f| f.starts_with("~o:")).collect()
        };
        for n in 1..=4u64 {
            let mut client = stack.ws(&url).await;
            client.send_text("hello").await.unwrap();
            assert_eq!(client.recv_count(REPLY_TIMEOUT).await.unwrap(), n);
            client.close().await;
        }
        let gone = switchyard_tests::eventually(Duration::from_secs(10), || {
            let listed: Option<String> = redis::cmd("HGET").arg(&key).arg("~c").query(&mut redis).unwrap();
            async move { listed.filter(|l| l.split(' ').count() == 8) }
        })
        .await
        .expect("the four closed connections are listed for purging");
        assert_eq!(outboxes(&mut redis).len(), 4, "{gone}");
        // Past the closing delay, a later commit of the session purges them (a live
        // connection keeps the session in use meanwhile: unused, it would expire first).
        let mut client = stack.ws(&url).await;
        for n in 5..=28u64 {
            client.send_text("hello").await.unwrap();
            assert_eq!(client.recv_count(REPLY_TIMEOUT).await.unwrap(), n);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let left = outboxes(&mut redis);
        assert_eq!(left.len(), 1, "only the live connection's outbox is left: {left:?}");
        let listed: Option<String> = redis::cmd("HGET").arg(&key).arg("~c").query(&mut redis).unwrap();
        assert_eq!(listed, None);
    })
    .await
}
