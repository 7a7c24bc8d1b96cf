//! The frame reader: socket frames in, complete client messages out.
//!
//! fastwebsockets parses single frames; the reader reassembles fragmented
//! messages, enforces the message size limit (1009), checks UTF-8 as the
//! fragments arrive (1007), validates close frames (1002), and hands pings on
//! so the connection task can answer them. It stops at the first close or
//! error: nothing is read after that.
//!
//! It runs inside the connection task, not in a task of its own: a second task
//! and the channel between them cost about 2 KiB per idle connection, which
//! matters at 100,000 connections. fastwebsockets' `read_frame` is not
//! cancel-safe (a frame half read when its future is dropped is lost), so
//! [`Inbox`] never drops a read: the read in progress is a boxed future kept
//! across the connection task's `select!` rounds, and only a finished read
//! starts the next one. Not polling the inbox is the back-pressure: the
//! socket is not read and TCP pushes back on the client.
//!
//! The inbox also remembers when the client was last heard from, any frame
//! counting (a pong or one fragment of a long message too), for the idle
//! timeout: the peer is alive as long as frames arrive.
//!
//! The frame logic is kept free of the socket (`on_frame`, `Assembler`, `close_frame`)
//! so it can be tested without one; [`fuzzing`] exposes exactly that to the
//! fuzz targets in `fuzz/`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use fastwebsockets::{CloseCode, Frame, OpCode, WebSocketError, WebSocketRead};
use switchyard_protocol::close::{INVALID_DATA, NO_STATUS, PROTOCOL_ERROR, TOO_BIG};
use switchyard_protocol::Payload;
use tokio::time::Instant;

use super::io::ReadHalf;

/// What the reader hands to the connection task.
#[derive(Debug)]
pub enum Inbound {
    Message(Payload),
    Ping(Vec<u8>),
    /// The client closed with this code (1005 when it gave none).
    Close {
        code: u16,
        reason: String,
    },
    /// The client broke the protocol; close with this code.
    Fail {
        code: u16,
        reason: &'static str,
    },
}

/// Control frames carry at most 125 bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The socket's read half with its reassembly state.
struct Reader {
    socket: WebSocketRead<ReadHalf>,
    assembler: Assembler,
}

/// What one read of the socket gave.
enum Read {
    /// A complete message or control event; `None` at end of stream or on a
    /// broken socket.
    Item(Option<Inbound>),
    /// A frame that completes nothing yet (a pong, a fragment).
    Heard,
}

impl Reader {
    /// Reads one frame.
    async fn next(&mut self) -> Read {
        let mut no_obligated_sends = |_: Frame<'_>| std::future::ready(Ok::<(), Infallible>(()));
        Read::Item(Some(match self.socket.read_frame(&mut no_obligated_sends).await {
            Ok(frame) => match on_frame(&mut self.assembler, frame) {
                Some(item) => item,
                None => return Read::Heard,
            },
            Err(WebSocketError::InvalidUTF8) => fail(INVALID_DATA, "invalid UTF-8 in text message"),
            Err(WebSocketError::FrameTooLarge) => fail(TOO_BIG, "message too big"),
            Err(WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) | WebSocketError::ConnectionClosed) => {
                return Read::Item(None)
            }
            Err(_) => fail(PROTOCOL_ERROR, "protocol error"),
        }))
    }
}

type Reading = Pin<Box<dyn Future<Output = (Reader, Read)> + Send>>;

/// What the client sends, one item at a time; see the module doc for why
/// this is cancel-safe.
pub struct Inbox {
    /// The read in progress, if one was started and has not finished.
    reading: Option<Reading>,
    /// The reader between reads; `None` while a read is in progress and
    /// for good after a close, an error or the end of the stream.
    idle: Option<Reader>,
    /// When the last frame arrived (or the inbox was made).
    last_heard: Instant,
}

impl Inbox {
    pub fn new(mut socket: WebSocketRead<ReadHalf>, max_message_size: usize) -> Inbox {
        socket.set_auto_close(false);
        socket.set_auto_pong(false);
        // fastwebsockets refuses frames of `>= limit` bytes.
        socket.set_max_message_size(max_message_size.saturating_add(1));
        Inbox {
            reading: None,
            idle: Some(Reader {
                socket,
                assembler: Assembler::new(max_message_size),
            }),
            last_heard: Instant::now(),
        }
    }

    /// When the client's last frame arrived.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// The next item; `None` once the socket is gone without a close frame,
    /// or after the client's close (or a protocol error) was handed out.
    ///
    /// Cancel-safe: dropping this future keeps the read in progress for the
    /// next call, and an item is only taken once it is complete.
    pub async fn recv(&mut self) -> Option<Inbound> {
        loop {
            if self.reading.is_none() {
                let mut reader = self.idle.take()?;
                self.reading = Some(Box::pin(async move {
                    let read = reader.next().await;
                    (reader, read)
                }));
            }
            let reading = self.reading.as_mut()?;
            let (reader, read) = reading.as_mut().await;
            self.reading = None;
            let item = match read {
                Read::Heard => {
                    self.last_heard = Instant::now();
                    self.idle = Some(reader);
                    continue;
                }
                Read::Item(item) => item,
            };
            if item.is_some() {
                self.last_heard = Instant::now();
            }
            if matches!(item, Some(Inbound::Message(_) | Inbound::Ping(_))) {
                self.idle = Some(reader);
            }
            return item;
        }
    }
}

/// What one frame (as fastwebsockets lets it through) means; `None`: nothing yet.
fn on_frame(assembler: &mut Assembler, frame: Frame<'_>) -> Option<Inbound> {
    Some(match frame.opcode {
        OpCode::Text | OpCode::Binary | OpCode::Continuation => match assembler.push(frame) {
            Ok(Some(payload)) => Inbound::Message(payload),
            Ok(None) => return None,
            Err(fail) => fail,
        },
        // fastwebsockets refuses long pings itself, but not long pongs or closes.
        OpCode::Ping => Inbound::Ping(frame.payload.to_vec()),
        OpCode::Pong if frame.payload.len() > MAX_CONTROL_PAYLOAD => {
            fail(PROTOCOL_ERROR, "control frame over 125 bytes")
        }
        OpCode::Pong => return None,
        OpCode::Close => close_frame(&frame.payload),
    })
}

fn fail(code: u16, reason: &'static str) -> Inbound {
    Inbound::Fail { code, reason }
}

/// Validates a close frame's payload (RFC 6455 §5.5.1, §7.4).
fn close_frame(payload: &[u8]) -> Inbound {
    match payload {
        _ if payload.len() > MAX_CONTROL_PAYLOAD => fail(PROTOCOL_ERROR, "control frame over 125 bytes"),
        [] => Inbound::Close {
            code: NO_STATUS,
            reason: String::new(),
        },
        [_] => fail(PROTOCOL_ERROR, "close frame with a one-byte payload"),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode::from(code).is_allowed() {
                return fail(PROTOCOL_ERROR, "invalid close code");
            }
            match std::str::from_utf8(reason) {
                Ok(reason) => Inbound::Close {
                    code,
                    reason: reason.to_owned(),
                },
                Err(_) => fail(INVALID_DATA, "invalid UTF-8 in close reason"),
            }
        }
    }
}

/// Reassembles fragmented messages.
struct Assembler {
    max: usize,
    /// Opcode and bytes of the message being assembled.
    partial: Option<(OpCode, Vec<u8>)>,
    /// Bytes of a text message already known to be valid UTF-8.
    checked: usize,
}

impl Assembler {
    fn new(max: usize) -> Assembler {
        Assembler {
            max,
            partial: None,
            checked: 0,
        }
    }

    fn push(&mut self, frame: Frame<'_>) -> Result<Option<Payload>, Inbound> {
        match (frame.opcode, self.partial.is_some()) {
            (OpCode::Continuation, false) => return Err(fail(PROTOCOL_ERROR, "continuation without a message")),
            (OpCode::Text | OpCode::Binary, true) => {
                return Err(fail(PROTOCOL_ERROR, "new message inside a fragmented one"))
            }
            (OpCode::Text | OpCode::Binary, false) if frame.fin => {
                return finish(frame.opcode, frame.payload.to_vec()).map(Some);
            }
            (OpCode::Text | OpCode::Binary, false) => {
                self.partial = Some((frame.opcode, Vec::with_capacity(frame.payload.len())));
                self.checked = 0;
            }
            _ => {}
        }
        let Some((opcode, buffer)) = self.partial.as_mut() else {
            return Err(fail(PROTOCOL_ERROR, "unexpected frame"));
        };
        if buffer.len() + frame.payload.len() > self.max {
            return Err(fail(TOO_BIG, "message too big"));
        }
        buffer.extend_from_slice(&frame.payload);
        if *opcode == OpCode::Text {
            match std::str::from_utf8(&buffer[self.checked..]) {
                Ok(_) => self.checked = buffer.len(),
                // An incomplete character at the end may be finished by the next fragment.
                Err(error) if error.error_len().is_none() && !frame.fin => self.checked += error.valid_up_to(),
                Err(_) => return Err(fail(INVALID_DATA, "invalid UTF-8 in text message")),
            }
        }
        if !frame.fin {
            return Ok(None);
        }
        let (opcode, buffer) = self.partial.take().unwrap_or((OpCode::Binary, Vec::new()));
        finish(opcode, buffer).map(Some)
    }
}

fn finish(opcode: OpCode, bytes: Vec<u8>) -> Result<Payload, Inbound> {
    if opcode == OpCode::Text {
        String::from_utf8(bytes)
            .map(Payload::text)
            .map_err(|_| fail(INVALID_DATA, "invalid UTF-8 in text message"))
    } else {
        Ok(Payload::bytes(bytes))
    }
}

/// The socket-free frame logic for the fuzz targets in `fuzz/`; not an API.
///
/// [`fuzzing::Reader::frame`] is what the reader does with one frame that
/// fastwebsockets let through. fastwebsockets itself refuses, before that:
/// frames of more than the message size limit, fragmented control frames,
/// pings over 125 bytes, and unfragmented text that is not UTF-8.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::Inbound;
    pub use fastwebsockets::OpCode;
    use fastwebsockets::{Frame, Payload as FramePayload};

    pub struct Reader(super::Assembler);

    impl Reader {
        pub fn new(max_message_size: usize) -> Reader {
            Reader(super::Assembler::new(max_message_size))
        }

        pub fn frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Option<Inbound> {
            let frame = Frame::new(fin, opcode, None, FramePayload::Owned(payload.to_vec()));
            super::on_frame(&mut self.0, frame)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::Payload as FramePayload;

    fn frame(fin: bool, opcode: OpCode, data: &[u8]) -> Frame<'static> {
        Frame::new(fin, opcode, None, FramePayload::Owned(data.to_vec()))
    }

    #[test]
    fn reassembles_fragments() {
        let mut a = Assembler::new(100);
        assert!(a.push(frame(false, OpCode::Text, b"he")).unwrap().is_none());
        assert!(a.push(frame(false, OpCode::Continuation, b"ll")).unwrap().is_none());
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, b"o")).unwrap(),
            Some(Payload::text("hello"))
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_fine() {
        let euro = "€".as_bytes();
        let mut a = Assembler::new(100);
        assert!(a.push(frame(false, OpCode::Text, &euro[..1])).unwrap().is_none());
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, &euro[1..])).unwrap(),
            Some(Payload::text("€"))
        );
    }

    #[test]
    fn invalid_utf8_fails_fast() {
        let mut a = Assembler::new(100);
        let result = a.push(frame(false, OpCode::Text, &[0xff, b'a']));
        assert!(matches!(result, Err(Inbound::Fail { code: 1007, .. })));
    }

    #[test]
    fn oversize_fragmented_message_is_1009() {
        let mut a = Assembler::new(4);
        assert!(a.push(frame(false, OpCode::Binary, b"abc")).unwrap().is_none());
        assert!(matches!(
            a.push(frame(true, OpCode::Continuation, b"de")),
            Err(Inbound::Fail { code: 1009, .. })
        ));
    }

    #[test]
    fn stray_continuation_is_a_protocol_error() {
        let mut a = Assembler::new(10);
        assert!(matches!(
            a.push(frame(true, OpCode::Continuation, b"x")),
            Err(Inbound::Fail { code: 1002, .. })
        ));
    }

    #[test]
    fn close_frames_are_validated() {
        assert!(matches!(close_frame(&[]), Inbound::Close { code: 1005, .. }));
        assert!(matches!(close_frame(&[3]), Inbound::Fail { code: 1002, .. }));
        assert!(matches!(
            close_frame(&1000u16.to_be_bytes()),
            Inbound::Close { code: 1000, .. }
        ));
        assert!(matches!(
            close_frame(&999u16.to_be_bytes()),
            Inbound::Fail { code: 1002, .. }
        ));
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        assert!(matches!(close_frame(&bad_reason), Inbound::Fail { code: 1007, .. }));
    }

    #[test]
    fn control_frames_over_125_bytes_are_protocol_errors() {
        // Autobahn 7.3.6: a close whose reason makes the payload 126 bytes.
        let mut long_close = 1000u16.to_be_bytes().to_vec();
        long_close.extend_from_slice(&[b'a'; 124]);
        assert!(matches!(close_frame(&long_close), Inbound::Fail { code: 1002, .. }));
        long_close.pop();
        assert!(matches!(close_frame(&long_close), Inbound::Close { code: 1000, .. }));

        let mut a = Assembler::new(1000);
        assert!(on_frame(&mut a, frame(true, OpCode::Pong, &[0; 125])).is_none());
        assert!(matches!(
            on_frame(&mut a, frame(true, OpCode::Pong, &[0; 126])),
            Some(Inbound::Fail { code: 1002, .. })
        ));
    }

    #[test]
    fn control_frames_may_come_between_fragments() {
        let mut a = Assembler::new(100);
        assert!(on_frame(&mut a, frame(false, OpCode::Text, b"he")).is_none());
        assert!(matches!(
            on_frame(&mut a, frame(true, OpCode::Ping, b"p")),
            Some(Inbound::Ping(_))
        ));
        assert!(on_frame(&mut a, frame(true, OpCode::Pong, b"")).is_none());
        assert!(matches!(
            on_frame(&mut a, frame(true, OpCode::Continuation, b"y")),
            Some(Inbound::Message(p)) if p == Payload::text("hey")
        ));
    }
}
