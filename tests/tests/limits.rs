//! RFC 6455 limits and validation at the interface: oversize → 1009, invalid UTF-8 → 1007.

use std::time::Duration;

use switchyard_tests::stack::REPLY_TIMEOUT;
use switchyard_tests::ws::RawWs;
use switchyard_tests::{bounded, Incoming, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_closed_with_1009() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("oversize")
            .workers(1)
            .interface_arg("--max-message-size")
            .interface_arg("1024")
            .start()
            .await;

        // Under the limit: echoed.
        let mut c = stack.ws("/ws/echo/").await;
        let small = "a".repeat(1000);
        c.send_text(small.clone()).await.unwrap();
        assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text(small));

        // Over the limit, text.
        c.send_text("x".repeat(4096)).await.unwrap();
        assert_eq!(c.expect_close(Duration::from_secs(10)).await.unwrap(), Some(1009));

        // Over the limit, binary.
        let mut c = stack.ws("/ws/echo/").await;
        c.send_binary(vec![7u8; 4096]).await.unwrap();
        assert_eq!(c.expect_close(Duration::from_secs(10)).await.unwrap(), Some(1009));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_is_closed_with_1007() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("utf8").workers(1).start().await;
        let mut raw = RawWs::connect(&stack.addr, "/ws/echo/").await.unwrap();

        // A valid masked text frame first: proves the raw framing is right.
        raw.write_frame(true, 0x1, b"hi").await.unwrap();
        let echoed = raw.read_frame(REPLY_TIMEOUT).await.unwrap();
        assert_eq!((echoed.opcode, echoed.payload.as_slice()), (0x1, &b"hi"[..]));

        // Text frame with invalid UTF-8 (0xC0 0xAF is an overlong '/', 0xFF never valid).
        raw.write_frame(true, 0x1, b"ok \xc0\xaf \xff").await.unwrap();
        assert_eq!(raw.expect_close(Duration::from_secs(10)).await.unwrap(), Some(1007));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_across_fragments_is_closed_with_1007() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("utf8-fragments").workers(1).start().await;
        let mut raw = RawWs::connect(&stack.addr, "/ws/echo/").await.unwrap();

        // A fragmented valid message: "hé" split inside the two-byte 'é'.
        raw.write_frame(false, 0x1, b"h\xc3").await.unwrap();
        raw.write_frame(true, 0x0, b"\xa9").await.unwrap();
        let echoed = raw.read_frame(REPLY_TIMEOUT).await.unwrap();
        assert_eq!((echoed.opcode, echoed.payload.as_slice()), (0x1, "hé".as_bytes()));

        // A fragmented invalid one: a lead byte followed by a non-continuation byte.
        raw.write_frame(false, 0x1, b"h\xc3").await.unwrap();
        raw.write_frame(true, 0x0, b"(").await.unwrap();
        assert_eq!(raw.expect_close(Duration::from_secs(10)).await.unwrap(), Some(1007));
    })
    .await
}
