//! Django served through Switchyard: the example's views (`examples/django/`) behind the
//! interface's `--http-route /django/=http.django`, run by Python workers through Django's
//! ASGI handler — a GET, a POST whose body comes in several 64 KiB chunks (handled by
//! whichever worker takes each), a streamed response, a failing view (500, and the next
//! request is served), and a group send from an async Django view.

mod http_common;

use std::time::Duration;

use http::Method;
use http_common::Client;
use switchyard_tests::python::python_stack;
use switchyard_tests::stack::{Probe, REPLY_TIMEOUT};
use switchyard_tests::{bounded, Stack};

async fn django_stack(name: &str) -> Stack {
    let mut stack = python_stack(name).start().await;
    stack.spawn_python_worker(&[]);
    stack.spawn_python_worker(&[]);
    stack.wait_workers_live(Probe::Chat).await;
    stack
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_views_get_post_and_stream_through_the_interface() {
    bounded(Duration::from_secs(120), async {
        let stack = django_stack("py-django").await;
        let mut client = Client::connect(&stack.addr).await.unwrap();

        let hello = client.get("/django/hello/?name=switchyard").await.unwrap();
        assert_eq!(hello.status, 200, "{}", hello.text());
        assert_eq!(hello.header("content-type"), Some("application/json"));
        assert_eq!(
            hello.json(),
            serde_json::json!({"hello": "switchyard", "method": "GET", "path": "/django/hello/"})
        );

        // A small body, then one of 4 chunks and a bit (the interface sends 64 KiB chunks).
        for size in [11, 4 * 65_536 + 123] {
            let body = pattern(size);
            let echo = client
                .send(
                    Method::POST,
                    "/django/echo/",
                    &[("content-type", "application/octet-stream")],
                    body.clone(),
                )
                .await
                .unwrap();
            assert_eq!(echo.status, 200, "POST of {size} bytes: {}", echo.text());
            assert_eq!(echo.header("x-body-length"), Some(size.to_string().as_str()));
            assert!(echo.body == body, "POST of {size} bytes came back different");
        }

        // 300,000 bytes made by a streaming view: several early replies, then the last piece.
        let streamed = client.get("/django/stream/?size=300000").await.unwrap();
        assert_eq!(streamed.status, 200);
        let expected: Vec<u8> = b"0123456789abcdef".iter().copied().cycle().take(300_000).collect();
        assert_eq!(streamed.body.len(), 300_000);
        assert!(streamed.body == expected, "streamed body differs");

        // A view that raises: 500, logged with its traceback, and the worker goes on.
        let failed = client.get("/django/fail/").await.unwrap();
        assert_eq!(failed.status, 500, "{}", failed.text());
        let after = client.get("/django/hello/").await.unwrap();
        assert_eq!(after.status, 200);
        let logs: String = stack.workers.iter().map(|w| w.log()).collect();
        assert!(
            logs.contains("this view fails on purpose"),
            "the failing view's error is not logged"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_django_view_broadcasts_to_the_chat_group() {
    bounded(Duration::from_secs(90), async {
        let stack = django_stack("py-django-broadcast").await;
        let mut members = Vec::new();
        for _ in 0..5 {
            let mut m = stack.ws("/ws/chat/").await;
            assert_eq!(m.chat("in", REPLY_TIMEOUT).await.unwrap(), 1);
            members.push(m);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut client = Client::connect(&stack.addr).await.unwrap();
        let sent = client
            .send(Method::POST, "/django/broadcast/", &[], "hello from Django")
            .await
            .unwrap();
        assert_eq!(sent.status, 200, "{}", sent.text());
        for (i, m) in members.iter_mut().enumerate() {
            let got = m.recv_json(REPLY_TIMEOUT).await.unwrap();
            assert_eq!(got["broadcast"], "hello from Django", "member {i}: {got}");
            assert!(
                m.recv(Duration::from_millis(300)).await.is_err(),
                "member {i} got it twice"
            );
        }
    })
    .await
}
