//! The chat app: a per-connection counter, and sessions that resume by `session_uuid`.

use std::time::Duration;

use switchyard_tests::stack::REPLY_TIMEOUT;
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
        // The outbox (the session write's guard) expires with the session; connseq is
        // written for HTTP request bodies only.
        let expiring = ["switchyard:session:", "switchyard:outbox:", "switchyard:reply:"];
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
