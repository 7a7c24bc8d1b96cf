//! Entries a worker cannot decode — garbage, no message field, a newer protocol version,
//! truncated msgpack — go to the dead-letter stream with a log line; the worker stays alive.

use std::time::Duration;

use switchyard_tests::stack::{channel_stream, deadletter_stream, xrange_all, REPLY_TIMEOUT};
use switchyard_tests::{bounded, eventually, Incoming, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_entries_go_to_dead_letter_and_worker_survives() {
    bounded(Duration::from_secs(60), async {
        let mut stack = Stack::builder("dead-letter").workers(1).start().await;
        let stream = channel_stream("echo");
        let mut con = stack.redis_conn().unwrap();
        // One entry whose `m` is not a valid message, one without an `m` field at all.
        let bad_m: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("m")
            .arg("garbage")
            .query(&mut con)
            .unwrap();
        let no_m: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("foo")
            .arg("bar")
            .query(&mut con)
            .unwrap();
        // msgpack {"v": 99}: a message from a protocol version this build does not speak.
        let new_version: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("m")
            .arg(&[0x81u8, 0xa1, b'v', 99][..])
            .query(&mut con)
            .unwrap();
        // A map announcing three entries that ends after the first: truncated msgpack.
        let truncated: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("m")
            .arg(&[0x83u8, 0xa1, b'v', 1, 0xa4, b't', b'y'][..])
            .query(&mut con)
            .unwrap();

        let dl = deadletter_stream();
        let entries = eventually(Duration::from_secs(20), || {
            let entries = xrange_all(&mut con, &dl).unwrap_or_default();
            let has = |id: &str| entries.iter().any(|e| e.field("id") == Some(id));
            let found = has(&bad_m) && has(&no_m) && has(&new_version) && has(&truncated);
            async move { found.then_some(()) }
        })
        .await
        .map(|_| xrange_all(&mut con, &dl).unwrap());
        let entries = entries.unwrap_or_else(|| {
            panic!(
                "{dl} does not name the bad entries ({bad_m}, {no_m}, {new_version}, {truncated}) within 20 s; it holds: {:?}",
                xrange_all(&mut con, &dl).unwrap_or_default()
            )
        });
        for id in [&bad_m, &no_m, &new_version, &truncated] {
            let e = entries.iter().find(|e| e.field("id") == Some(id.as_str())).unwrap();
            assert_eq!(e.field("stream"), Some(stream.as_str()), "dead-letter entry {e:?}");
            assert!(
                e.field("error").is_some_and(|s| !s.is_empty()),
                "dead-letter entry has no error: {e:?}"
            );
        }

        let version_error = entries
            .iter()
            .find(|e| e.field("id") == Some(new_version.as_str()))
            .and_then(|e| e.field("error"))
            .unwrap_or_default();
        assert!(
            version_error.contains("version 99"),
            "the dead letter should name the protocol version: {version_error:?}"
        );
        let log = stack.workers[0].log();
        for id in [&bad_m, &new_version, &truncated] {
            assert!(log.contains(id.as_str()), "worker log does not name dead-lettered entry {id}");
        }

        assert!(stack.workers[0].is_running(), "worker died on a bad entry");
        let mut c = stack.ws("/ws/echo/").await;
        c.send_text("still alive?").await.unwrap();
        assert_eq!(
            c.recv(REPLY_TIMEOUT).await.unwrap(),
            Incoming::Text("still alive?".into())
        );
        c.close().await;
    })
    .await
}
