//! The one-call commit of a single Redis (`protocol/lua/commit_fused.lua`), run on a real
//! redis-server exactly as the Rust worker calls it: what it commits gets its session
//! writes, its reply and its ack in that call; a message committed before (by a worker that
//! died, or a slow one racing its claimer) gets none of them, so the stored outcome is the
//! one finished; a message older than the last committed one is only acknowledged.
//! The whole worker path over it is covered by the chat, ordering, restart and chaos tests.

use std::time::Duration;

use redis::{Commands, Value};
use switchyard_protocol::{scripts, Keys, WORKER_GROUP};
use switchyard_tests::{bounded, RedisServer, TestDir};

const SESSION_TTL_MS: u64 = 60_000;
const REPLY_TTL_MS: u64 = 30_000;

struct Message<'a> {
    seq: u64,
    entry: &'a str,
    count: &'a str,
    reply: &'a [u8],
}

/// One fused call for `messages`, all of connection `if-1!7` on session `s1`.
fn commit(con: &mut redis::Connection, keys: &Keys, shard: &str, messages: &[Message<'_>]) -> Vec<Value> {
    let script = redis::Script::new(&scripts::commit_fused());
    let mut invocation = script.prepare_invoke();
    invocation.arg(SESSION_TTL_MS).arg(3_600_000u64).arg(1_000_000u64);
    for message in messages {
        invocation
            .key(keys.session("s1"))
            .key(keys.outbox("s1", "if-1!7"))
            .arg(message.seq)
            .arg("if-1!7")
            .arg(format!("outcome of {}", message.seq))
            .arg("")
            .arg(1)
            .arg("count")
            .arg(message.count)
            .arg(0);
    }
    invocation.arg(REPLY_TTL_MS).arg(WORKER_GROUP).arg(1).arg(1);
    for message in messages {
        invocation.arg(1).arg(message.reply).arg(1).arg(message.entry);
    }
    invocation.arg(messages.len());
    invocation.key(keys.reply_stream("if-1")).key(shard);
    invocation.invoke(con).unwrap()
}

fn pending(con: &mut redis::Connection, shard: &str) -> u64 {
    let summary: Vec<Value> = redis::cmd("XPENDING").arg(shard).arg(WORKER_GROUP).query(con).unwrap();
    match summary.first() {
        Some(Value::Int(n)) => *n as u64,
        other => panic!("XPENDING answered {other:?}"),
    }
}

fn replies(con: &mut redis::Connection, keys: &Keys) -> Vec<Vec<u8>> {
    let entries: redis::streams::StreamRangeReply = con.xrange_all(keys.reply_stream("if-1")).unwrap();
    entries
        .ids
        .iter()
        .flat_map(|entry| entry.map.values())
        .map(|value| match value {
            Value::BulkString(bytes) => bytes.clone(),
            other => panic!("reply field {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_once_replies_once_and_acks_what_is_done() {
    bounded(Duration::from_secs(60), async {
        let dir = TestDir::new("commit-fused");
        let redis = RedisServer::start(dir.path()).await.unwrap();
        let mut con = redis.conn().unwrap();
        let keys = Keys::new("sy");
        let shard = "sy:chan:{chat:0}";
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(shard)
            .arg(WORKER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query(&mut con)
            .unwrap();
        let mut ids = Vec::new();
        for n in 0..3 {
            let id: String = con.xadd(shard, "*", &[("m", format!("message {n}"))]).unwrap();
            ids.push(id);
        }
        let _: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(WORKER_GROUP)
            .arg("w1")
            .arg("STREAMS")
            .arg(shard)
            .arg(">")
            .query(&mut con)
            .unwrap();
        assert_eq!(pending(&mut con, shard), 3);

        // Message 2 committed: its session write, its reply, its ack, in one call.
        let first = Message {
            seq: 2,
            entry: &ids[0],
            count: "1",
            reply: b"reply 2",
        };
        assert_eq!(commit(&mut con, &keys, shard, &[first]), vec![Value::Int(1)]);
        let count: String = con.hget(keys.session("s1"), "count").unwrap();
        assert_eq!(count, "1");
        assert_eq!(replies(&mut con, &keys), vec![b"reply 2".to_vec()]);
        assert_eq!(pending(&mut con, shard), 2, "the committed message is acknowledged");
        let ttl: i64 = con.pttl(keys.reply_stream("if-1")).unwrap();
        assert!(
            ttl > 0 && ttl <= REPLY_TTL_MS as i64,
            "the reply stream has its TTL: {ttl}"
        );

        // Message 2 again (its claimer, computed from the old session): nothing is written,
        // replied or acknowledged here; the stored outcome comes back to be finished.
        let again = Message {
            seq: 2,
            entry: &ids[1],
            count: "99",
            reply: b"reply 2, computed again",
        };
        let result = commit(&mut con, &keys, shard, &[again]);
        assert_eq!(result, vec![Value::BulkString(b"2 outcome of 2".to_vec())]);
        let count: String = con.hget(keys.session("s1"), "count").unwrap();
        assert_eq!(
            count, "1",
            "a message committed before does not write the session again"
        );
        assert_eq!(replies(&mut con, &keys).len(), 1, "nor reply");
        assert_eq!(pending(&mut con, shard), 2, "nor acknowledge");

        // Message 3 committed, then message 2 seen once more: older than the last committed,
        // so only its ack is left. Both in one call, in that order.
        let third = Message {
            seq: 3,
            entry: &ids[1],
            count: "2",
            reply: b"reply 3",
        };
        let stale = Message {
            seq: 2,
            entry: &ids[2],
            count: "77",
            reply: b"stale",
        };
        assert_eq!(
            commit(&mut con, &keys, shard, &[third, stale]),
            vec![Value::Int(1), Value::Int(0)]
        );
        let count: String = con.hget(keys.session("s1"), "count").unwrap();
        assert_eq!(count, "2");
        assert_eq!(replies(&mut con, &keys), vec![b"reply 2".to_vec(), b"reply 3".to_vec()]);
        assert_eq!(
            pending(&mut con, shard),
            0,
            "the committed and the stale one are acknowledged"
        );
    })
    .await
}
