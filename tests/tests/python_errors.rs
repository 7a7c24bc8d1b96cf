//! Python workers facing bad input and operators: garbage on a stream is dead-lettered
//! (logged, acknowledged, the worker keeps serving), a consumer exception closes its
//! connection with 1011 and nothing else, `--metrics-bind` serves the Rust worker's series
//! (and counts the failure), a message that aborts every Python worker taking it is
//! dead-lettered after `--max-deliveries` with its connection closed 1011 while others are
//! answered, and `--check` and bad flags answer before anything starts.

use std::time::Duration;

use switchyard_tests::python::{python, python_path, python_stack, APPS};
use switchyard_tests::stack::{channel_stream, deadletter_stream, xrange_all, Probe, REPLY_TIMEOUT};
use switchyard_tests::{bounded, eventually, ports::free_port, Incoming};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_stream_is_dead_lettered_and_the_python_worker_goes_on() {
    bounded(Duration::from_secs(60), async {
        let mut stack = python_stack("py-dead-letter").start().await;
        stack.spawn_python_worker(&[]);
        stack.wait_workers_live(Probe::Chat).await;
        let stream = channel_stream("chat");
        let mut con = stack.redis_conn().unwrap();
        let add = |con: &mut switchyard_tests::TestConn, field: &str, value: &[u8]| -> String {
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg(field)
                .arg(value)
                .query(con)
                .unwrap()
        };
        let garbage = add(&mut con, "m", b"garbage");
        let no_m = add(&mut con, "foo", b"bar");
        // msgpack {"v": 99}: a protocol version this worker does not speak.
        let new_version = add(&mut con, "m", &[0x81, 0xa1, b'v', 99]);
        // A map announcing three entries that ends after the first: truncated msgpack.
        let truncated = add(&mut con, "m", &[0x83, 0xa1, b'v', 1, 0xa4, b't', b'y']);
        // An HTTP event on a WebSocket channel: a routing mistake.
        let wrong_kind = add(
            &mut con,
            "m",
            &switchyard_protocol::encode(&switchyard_protocol::ChannelMessage::new(
                "if-x!1".into(),
                1,
                "/".into(),
                String::new(),
                switchyard_protocol::Event::HttpDisconnect,
            )),
        );
        let ids = [&garbage, &no_m, &new_version, &truncated, &wrong_kind];
        let dl = deadletter_stream();
        let found = eventually(Duration::from_secs(20), || {
            let entries = xrange_all(&mut con, &dl).unwrap_or_default();
            let all = ids
                .iter()
                .all(|id| entries.iter().any(|e| e.field("id") == Some(id.as_str())));
            async move { all.then_some(entries) }
        })
        .await
        .expect("every bad entry in the dead-letter stream within 20 s");
        for id in ids {
            let e = found.iter().find(|e| e.field("id") == Some(id.as_str())).unwrap();
            assert_eq!(e.field("stream"), Some(stream.as_str()), "{e:?}");
            assert!(e.field("error").is_some_and(|s| !s.is_empty()), "{e:?}");
            assert!(e.field("consumer").is_some(), "{e:?}");
        }
        let error_of = |id: &str| {
            found
                .iter()
                .find(|e| e.field("id") == Some(id))
                .unwrap()
                .field("error")
                .unwrap()
                .to_owned()
        };
        assert!(
            error_of(&new_version).contains("version 99"),
            "{}",
            error_of(&new_version)
        );
        assert!(
            error_of(&wrong_kind).contains("serves websocket consumers"),
            "{}",
            error_of(&wrong_kind)
        );
        assert_eq!(
            found
                .iter()
                .find(|e| e.field("id") == Some(garbage.as_str()))
                .unwrap()
                .field("field:m"),
            Some("garbage"),
            "the dead letter keeps the entry's fields"
        );
        let log = stack.workers[0].log();
        for id in [&garbage, &new_version, &truncated] {
            assert!(
                log.contains(id.as_str()),
                "worker log does not name dead-lettered entry {id}"
            );
        }
        // Acknowledged: nothing left pending.
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("workers")
            .query(&mut con)
            .unwrap();
        let redis::Value::Array(summary) = pending else {
            panic!("XPENDING: {pending:?}")
        };
        assert_eq!(
            summary.first(),
            Some(&redis::Value::Int(0)),
            "entries left pending: {summary:?}"
        );

        assert!(stack.workers[0].is_running(), "worker died on a bad entry");
        let mut c = stack.ws("/ws/chat/").await;
        assert_eq!(c.chat("still alive?", REPLY_TIMEOUT).await.unwrap(), 1);
        c.close().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_exception_closes_its_connection_with_1011_and_nothing_else() {
    bounded(Duration::from_secs(60), async {
        let port = free_port();
        let mut stack = python_stack("py-1011").start().await;
        let bind = format!("127.0.0.1:{port}");
        stack.spawn_python_worker(&["--metrics-bind", &bind]);
        stack.wait_workers_live(Probe::Chat).await;

        let mut bystander = stack.ws("/ws/broken/").await;
        bystander.send_text("hello").await.unwrap();
        assert_eq!(
            bystander.recv(REPLY_TIMEOUT).await.unwrap(),
            Incoming::Text("fine: hello".into())
        );

        let mut victim = stack.ws("/ws/broken/").await;
        victim.send_text("boom").await.unwrap();
        assert_eq!(victim.expect_close(REPLY_TIMEOUT).await.unwrap(), Some(1011));

        bystander.send_text("still here").await.unwrap();
        assert_eq!(
            bystander.recv(REPLY_TIMEOUT).await.unwrap(),
            Incoming::Text("fine: still here".into())
        );
        bystander.close().await;
        let log = stack.workers[0].log();
        assert!(
            log.contains("boom, on purpose") && log.contains("Traceback"),
            "no traceback logged:\n{log}"
        );
        assert!(stack.workers[0].is_running());

        // The metrics the Rust worker serves, from the Python worker.
        let metrics = switchyard_tests::http::get(&bind, "/metrics").await.unwrap();
        assert_eq!(metrics.status, 200);
        for series in [
            "switchyard_worker_messages_handled_total{channel=\"broken\",type=\"websocket.receive\",outcome=\"committed\"}",
            "switchyard_worker_message_handling_seconds_count{channel=\"broken\"}",
            "switchyard_worker_messages_in_flight",
            "switchyard_worker_dead_letters_total",
            "switchyard_worker_claimed_messages_total",
            "switchyard_worker_redis_errors_total",
            "switchyard_worker_consumer_failures_total{channel=\"broken\",kind=\"error\"} 1",
        ] {
            assert!(
                metrics.body.contains(series),
                "/metrics lacks {series}:\n{}",
                metrics.body
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_aborts_python_workers_is_dead_lettered_after_max_deliveries() {
    bounded(Duration::from_secs(200), async {
        // The default --max-deliveries.
        const LIMIT: u64 = 5;
        let mut stack = python_stack("py-poison").start().await;
        stack.spawn_python_worker(&[]);
        stack.spawn_python_worker(&[]);
        stack.wait_workers_live(Probe::Chat).await;
        let mut bystander = stack.ws("/ws/broken/").await;
        let mut victim = stack.ws("/ws/broken/").await;
        victim.send_text("abort").await.unwrap();

        // Every worker that takes it dies; restarted (as a supervisor would) until the
        // message is given up. The bystander is answered in between.
        let mut dead = Vec::new();
        let mut n = 0;
        let started = std::time::Instant::now();
        let code = loop {
            assert!(
                started.elapsed() < Duration::from_secs(150),
                "the poisoned connection was not closed within 150 s"
            );
            if let Ok(Incoming::Close(code, _)) = victim.recv(Duration::from_millis(500)).await {
                break code;
            }
            for index in 0..stack.workers.len() {
                if !dead.contains(&index) && !stack.workers[index].is_running() {
                    dead.push(index);
                    stack.spawn_python_worker(&[]);
                }
            }
            n += 1;
            bystander.send_text(format!("n{n}")).await.unwrap();
            assert_eq!(
                bystander.recv(Duration::from_secs(30)).await.unwrap(),
                Incoming::Text(format!("fine: n{n}")),
                "the bystander was not answered while the poison circulated"
            );
        };
        eprintln!(
            "[test] closed after {:?}; {} Python workers died",
            started.elapsed(),
            dead.len()
        );
        assert_eq!(code, Some(1011));
        let mut con = stack.redis_conn().unwrap();
        let letters = xrange_all(&mut con, &deadletter_stream()).unwrap_or_default();
        let letter = letters
            .iter()
            .find(|e| e.field("field:m").is_some_and(|m| m.contains("abort")))
            .unwrap_or_else(|| panic!("no dead letter holds the poison: {letters:?}"));
        assert_eq!(
            letter.field("deliveries"),
            Some((LIMIT + 1).to_string().as_str()),
            "{letter:?}"
        );
        assert!(
            letter.field("error").is_some_and(|e| e.contains("--max-deliveries")),
            "{letter:?}"
        );
        bystander.close().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_configuration_and_bad_flags_are_refused() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(python());
        command
            .args(["-m", "switchyard", "runworker"])
            .args(args)
            .env("PYTHONPATH", python_path())
            .env_remove("REDIS_URL")
            .env_remove("SWITCHYARD_ONLY_CHANNELS");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(
        &["--check", "--redis-url", "redis://sy:secret@127.0.0.1:1/", APPS],
        &[("SWITCHYARD_ONLY_CHANNELS", "chat,http.*")],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("channels served: ['chat', 'http.django']"), "{out}");
    assert!(
        out.contains("redis://sy:***@127.0.0.1:1/") && !out.contains("secret"),
        "{out}"
    );

    for (args, flag) in [
        (vec!["--concurrency", "0", APPS], "--concurrency"),
        (vec!["--max-deliveries", "0", APPS], "--max-deliveries"),
        (vec!["--redis-url", "http://x", APPS], "--redis-url"),
        (vec!["--redis-ca-file", "/nope.pem", APPS], "--redis-ca-file"),
        (vec!["--only-channels", "a[b", APPS], "--only-channels"),
        (vec!["--only-channels", "nothing-matches", APPS], "--only-channels"),
        (vec!["no_such_module:APPS"], "APPS"),
    ] {
        let (code, _, err) = run(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: the error should name {flag}: {err}");
        assert!(
            !err.contains("Traceback"),
            "{args:?}: a clear error, not a traceback: {err}"
        );
    }
}
