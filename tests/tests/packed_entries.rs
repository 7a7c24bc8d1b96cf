//! Packed entries with Rust workers (docs/protocol.md, "Packed entries"): an interface writes
//! the messages of one flush bound for a shard as one entry, and each is still handled, and
//! committed, once.
//!
//! - (A worker killed with `kill -9` midway through packed entries under load:
//!   `worker_restart.rs`, which also checks that entries held several messages.)
//! - A packed entry written by hand with an innocent message, garbage, a message that aborts
//!   every worker that runs it, and another innocent one: the innocents are answered and not
//!   dead-lettered, the garbage is dead-lettered as its own part, the poison is given up past
//!   `--max-deliveries` as its own part, and the entry ends acknowledged.
//! - With `--pack-entries false` every message has an entry of its own.

use std::time::Duration;

use switchyard_protocol::{encode, ChannelMessage, Event, Payload};
use switchyard_tests::load::bursts_answered_in_order;
use switchyard_tests::stack::{channel_stream, deadletter_stream, pending_entries, xrange_all, PREFIX};
use switchyard_tests::{bounded, Stack};

const REPLY_TIMEOUT: Duration = Duration::from_secs(25);
const ABORT: &str = "packed: abort";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpacked_the_interface_writes_an_entry_per_message() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("packed-off")
            .interface_arg("--pack-entries")
            .interface_arg("false")
            .start()
            .await;
        let mut clients = Vec::new();
        for _ in 0..20 {
            clients.push(stack.ws("/ws/chat/").await);
        }
        bursts_answered_in_order(clients, 50, REPLY_TIMEOUT).await;
        let added = stack.entries_once_settled("chat").await;
        assert!(
            added >= 20 * 50,
            "{added} entries for 1,000 messages with --pack-entries false"
        );
    })
    .await
}

/// A `websocket.receive` of `text` on the echo channel, for a connection of an interface
/// that is not there (its reply stream is read directly).
fn receive(conn: u64, text: &str) -> Vec<u8> {
    let event = Event::Receive(Payload::text(text));
    let message = ChannelMessage::new(
        format!("packed-test!{conn}"),
        2,
        "/ws/echo/".into(),
        String::new(),
        event,
    );
    encode(&message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_entry_with_garbage_and_a_poison_message_in_it() {
    bounded(Duration::from_secs(120), async {
        let mut stack = Stack::builder("packed-poison")
            .worker_env("SWITCHYARD_TEST_ABORT_ON", ABORT)
            .worker_env("SWITCHYARD_MAX_DELIVERIES", "3")
            .start()
            .await;
        let stream = channel_stream("echo");
        let mut con = stack.redis_conn().unwrap();
        let id: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("m")
            .arg(receive(1, "packed first"))
            .arg("m")
            .arg(&b"\xc1 not msgpack"[..])
            .arg("m")
            .arg(receive(2, ABORT))
            .arg("m")
            .arg(receive(3, "packed last"))
            .query(&mut con)
            .unwrap();

        // Every worker that runs the poison dies; start another each time (as a supervisor
        // would) until the entry is acknowledged.
        let mut dead = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(100);
        while pending_entries(&mut con, &stream) > 0 || dead.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "entry {id} still pending after 100 s; {} workers died",
                dead.len()
            );
            for index in 0..stack.workers.len() {
                if !dead.contains(&index) && !stack.workers[index].is_running() {
                    eprintln!("[test] {} died; starting another worker", stack.workers[index].name());
                    dead.push(index);
                    stack.spawn_worker();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("[test] entry {id} acknowledged after {} workers died", dead.len());
        assert_eq!(
            dead.len(),
            3,
            "the poison runs --max-deliveries times, then is given up"
        );

        let replies = xrange_all(&mut con, &format!("{PREFIX}:reply:{{packed-test}}")).unwrap();
        let answered = |text: &str| {
            replies
                .iter()
                .flat_map(|entry| &entry.fields)
                .any(|(name, value)| name == "m" && value.contains(text))
        };
        assert!(
            answered("packed first"),
            "the first innocent was not answered: {replies:?}"
        );
        assert!(
            answered("packed last"),
            "the last innocent was not answered: {replies:?}"
        );

        let letters: Vec<_> = xrange_all(&mut con, &deadletter_stream())
            .unwrap()
            .into_iter()
            .filter(|letter| letter.field("id") == Some(id.as_str()))
            .collect();
        let parts: Vec<&str> = letters.iter().filter_map(|letter| letter.field("part")).collect();
        assert!(
            parts.iter().all(|part| *part == "1" || *part == "2"),
            "an innocent was dead-lettered: {letters:?}"
        );
        let garbage = letters.iter().find(|letter| letter.field("part") == Some("1"));
        let garbage = garbage.unwrap_or_else(|| panic!("no dead letter for the garbage: {letters:?}"));
        assert!(garbage.field("field:m").is_some_and(|m| m.contains("not msgpack")));
        assert!(garbage.field("error").is_some());
        let poison = letters.iter().find(|letter| letter.field("part") == Some("2"));
        let poison = poison.unwrap_or_else(|| panic!("no dead letter for the poison: {letters:?}"));
        assert!(poison.field("field:m").is_some_and(|m| m.contains(ABORT)), "{poison:?}");
        assert!(
            !poison.field("field:m").is_some_and(|m| m.contains("packed first")),
            "{poison:?}"
        );
        assert_eq!(poison.field("deliveries"), Some("4"), "{poison:?}");
    })
    .await
}
