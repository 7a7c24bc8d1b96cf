//! The frame writer: a server's frames onto the write half.
//!
//! Why not fastwebsockets' `WebSocketWrite`: its `write_frame` future is 320
//! bytes, and whatever the connection task awaits is part of that task's
//! state for its whole life, idle or not (`-Zprint-type-sizes`, see
//! `docs/benchmarks.md`, idle connections). A server frame is only a header
//! and the unmasked payload, so it is written here in a few lines: small
//! frames copied with their header into one buffer per connection and sent
//! with one `write_all`; large ones sent as header + payload in one vectored
//! write, without a copy. Payloads may be borrowed: a reply's text goes from
//! the decoded reply to the socket without an intermediate `Vec`.

use std::io::{self, IoSlice};

use fastwebsockets::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::io::WriteHalf;

/// Payloads up to this size are copied into the buffer (one contiguous
/// write); larger ones are written vectored (the size fastwebsockets uses).
const COPY_MAX: usize = 1024;
/// The longest frame header of a server frame (no mask): 2 + 8 bytes.
const MAX_HEAD: usize = 10;

pub struct FrameWriter<W = WriteHalf> {
    half: W,
    /// Header and payload of the frame being written; at most
    /// `COPY_MAX + MAX_HEAD` bytes, kept between frames.
    buffer: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(half: W) -> FrameWriter<W> {
        FrameWriter {
            half,
            buffer: Vec::new(),
        }
    }

    /// Writes one frame. Cancel-unsafe like any write: dropped half-way, the
    /// socket is left mid-frame (the connection then drops it).
    pub async fn write(&mut self, mut frame: Frame<'_>) -> io::Result<()> {
        if frame.payload.len() <= COPY_MAX {
            let bytes = frame.write(&mut self.buffer);
            return self.half.write_all(bytes).await;
        }
        // Boxed: the vectored loop's state is not carried by every connection.
        Box::pin(self.write_vectored(frame)).await
    }

    async fn write_vectored(&mut self, mut frame: Frame<'_>) -> io::Result<()> {
        let mut head = [0u8; MAX_HEAD];
        let head_len = frame.fmt_head(&mut head);
        let payload: &[u8] = &frame.payload;
        let total = head_len + payload.len();
        let mut written = 0;
        while written < total {
            let n = if written < head_len {
                let parts = [IoSlice::new(&head[written..head_len]), IoSlice::new(payload)];
                self.half.write_vectored(&parts).await?
            } else {
                self.half.write(&payload[written - head_len..]).await?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            written += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};

    use super::FrameWriter;

    /// Frames written by the writer, read back by fastwebsockets as a client.
    #[tokio::test]
    async fn a_client_reads_back_small_large_and_control_frames() {
        let (server, client) = tokio::io::duplex(4096);
        let (_, server_write) = tokio::io::split(server);
        let mut writer = FrameWriter::new(server_write);
        let small = b"hello".to_vec();
        // Over the copy limit, over 64 KiB (a 64-bit length), and more than
        // the duplex buffer: written in several parts.
        let large: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let writing = tokio::spawn(async move {
            writer.write(Frame::text(Payload::Borrowed(&small))).await.unwrap();
            writer.write(Frame::binary(Payload::Borrowed(&large))).await.unwrap();
            writer.write(Frame::text(Payload::Borrowed(b"after"))).await.unwrap();
            writer.write(Frame::close(1000, b"bye")).await.unwrap();
        });
        let mut reader = WebSocket::after_handshake(client, Role::Client);
        reader.set_auto_close(false);
        let frame = reader.read_frame().await.unwrap();
        assert_eq!((frame.opcode, &*frame.payload), (OpCode::Text, &b"hello"[..]));
        let frame = reader.read_frame().await.unwrap();
        assert_eq!(frame.opcode, OpCode::Binary);
        let expected: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(&*frame.payload, &expected[..]);
        let frame = reader.read_frame().await.unwrap();
        assert_eq!((frame.opcode, &*frame.payload), (OpCode::Text, &b"after"[..]));
        let frame = reader.read_frame().await.unwrap();
        assert_eq!(frame.opcode, OpCode::Close);
        assert_eq!(&frame.payload[..2], &1000u16.to_be_bytes());
        writing.await.unwrap();
    }
}
