//! A client connection whose reading never stops: a reader task plus a writer owned by the caller.
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so a scenario cannot race a read against a
//! send timer. Instead the read half runs in its own task for the connection's whole life — it
//! hands every text frame to a callback (the scenario's bookkeeping) and forwards the frames
//! the protocol obliges us to send (pong, close echo) to the writer. The caller keeps the write
//! half and "services" those obligations whenever it waits, with cancel-safe `select!`s only.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::client::Ws;

type Io = TokioIo<Upgraded>;

/// How the read side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// The server sent a close frame with this code (1005 if none), then closed TCP.
    Closed(u16),
    /// TCP closed without a close frame.
    Eof,
    /// A protocol or I/O error.
    Error(String),
    /// The reader was stopped by us (close handshake did not finish in time).
    Aborted,
}

impl std::fmt::Display for ReadEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadEnd::Closed(code) => write!(f, "server closed the WebSocket (code {code})"),
            ReadEnd::Eof => write!(f, "server closed TCP without a close frame"),
            ReadEnd::Error(e) => write!(f, "read error: {e}"),
            ReadEnd::Aborted => write!(f, "close handshake timed out"),
        }
    }
}

/// A running connection: the write half, the obligations queue, and the reader task.
pub struct Duplex {
    write: WebSocketWrite<WriteHalf<Io>>,
    obligated: mpsc::UnboundedReceiver<Frame<'static>>,
    reader: JoinHandle<ReadEnd>,
    ended: Option<ReadEnd>,
}

impl Duplex {
    /// Splits `ws` and starts its reader; `on_text` sees every complete text message.
    pub fn start<F>(ws: Ws, on_text: F) -> Self
    where
        F: FnMut(&[u8]) + Send + 'static,
    {
        let (read, write) = ws.split(tokio::io::split);
        let read = FragmentCollectorRead::new(read);
        let (tx, obligated) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(read, tx, on_text));
        Duplex {
            write,
            obligated,
            reader,
            ended: None,
        }
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: Vec<u8>) -> Result<()> {
        if let Some(end) = &self.ended {
            bail!("{end}");
        }
        self.write
            .write_frame(Frame::text(Payload::Owned(text)))
            .await
            .map_err(|e| anyhow!("write failed: {e}"))
    }

    /// Sends `message` and waits (answering pings) until `answered` is notified — by the
    /// `on_text` this connection was started with — failing after `within` with
    /// `no {answer} within …`.
    pub async fn exchange(
        &mut self,
        message: Vec<u8>,
        answered: &Notify,
        within: Duration,
        answer: &str,
    ) -> Result<()> {
        self.send_text(message).await?;
        match self
            .service_until(tokio::time::timeout(within, answered.notified()))
            .await?
        {
            Ok(()) => Ok(()),
            Err(_) => bail!("no {answer} within {within:?}"),
        }
    }

    /// Waits for `until` while answering pings; fails if the read side ends first.
    pub async fn service_until<T>(&mut self, until: impl Future<Output = T>) -> Result<T> {
        tokio::pin!(until);
        loop {
            if let Some(end) = &self.ended {
                bail!("{end}");
            }
            tokio::select! {
                out = &mut until => return Ok(out),
                frame = self.obligated.recv() => {
                    if let Some(frame) = frame {
                        self.write_obligated(frame).await;
                    }
                }
                end = &mut self.reader => {
                    let end = end.unwrap_or(ReadEnd::Aborted);
                    while let Ok(frame) = self.obligated.try_recv() {
                        self.write_obligated(frame).await;
                    }
                    self.ended = Some(end);
                }
            }
        }
    }

    async fn write_obligated(&mut self, frame: Frame<'static>) {
        // Best effort: a failed pong or close echo shows up as a read error soon after.
        let _ = self.write.write_frame(frame).await;
    }

    /// Closes with 1000 and waits (at most `wait`) for the server's close and TCP FIN, so the
    /// server, not the client, keeps the TIME_WAIT.
    pub async fn close(mut self, wait: Duration) -> ReadEnd {
        if let Some(end) = self.ended.take() {
            return end;
        }
        let _ = self.write.write_frame(Frame::close(1000, b"")).await;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                frame = self.obligated.recv() => {
                    if let Some(frame) = frame {
                        self.write_obligated(frame).await;
                    }
                }
                end = &mut self.reader => return end.unwrap_or(ReadEnd::Aborted),
                _ = tokio::time::sleep_until(deadline) => {
                    self.reader.abort();
                    return ReadEnd::Aborted;
                }
            }
        }
    }

    /// Drops the connection without a close handshake.
    pub fn abort(self) {
        self.reader.abort();
    }
}

async fn read_loop<F>(
    mut read: FragmentCollectorRead<ReadHalf<Io>>,
    tx: mpsc::UnboundedSender<Frame<'static>>,
    mut on_text: F,
) -> ReadEnd
where
    F: FnMut(&[u8]),
{
    let mut close_code: Option<u16> = None;
    let mut send_fn = |frame: Frame<'_>| {
        let owned = Frame::new(frame.fin, frame.opcode, None, Payload::Owned(frame.payload.to_vec()));
        std::future::ready(tx.send(owned).map_err(|_| "connection writer is gone".to_string()))
    };
    loop {
        match read.read_frame(&mut send_fn).await {
            Ok(frame) => match frame.opcode {
                OpCode::Text if close_code.is_none() => on_text(&frame.payload),
                OpCode::Close => {
                    let code = match frame.payload.get(..2) {
                        Some(b) => u16::from_be_bytes([b[0], b[1]]),
                        None => 1005,
                    };
                    close_code = Some(code);
                }
                _ => {}
            },
            Err(e) => {
                return match close_code {
                    Some(code) => ReadEnd::Closed(code),
                    None => match e {
                        fastwebsockets::WebSocketError::UnexpectedEOF => ReadEnd::Eof,
                        other => ReadEnd::Error(other.to_string()),
                    },
                }
            }
        }
    }
}
