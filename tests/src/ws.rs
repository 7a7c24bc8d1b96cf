//! WebSocket client helpers over tokio-tungstenite, plus a raw client for frames that
//! tungstenite refuses to send.
//!
//! Why this exists: every test talks to the interface as a real client would. The helpers
//! turn the stream of frames into what a test asserts on — the next application frame with a
//! time limit, the next chat answer with heartbeats (`{"ts": …}`) skipped, the close code —
//! and report a refused handshake with its HTTP status. The raw client exists because
//! tungstenite will not put invalid UTF-8 into a text frame; conformance tests (close 1007)
//! write the masked frame bytes themselves after a manual handshake.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The underlying tokio-tungstenite stream.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a handshake may take before the helper gives up (the interface holds the
/// handshake until a worker answers, up to its connect timeout).
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(15);

/// Why a WebSocket handshake failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with a non-101 HTTP status.
    Status(u16),
    /// Anything else (refused, reset, timed out, protocol error).
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Status(s) => write!(f, "handshake answered with HTTP {s}"),
            ConnectError::Other(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// What a client received, with control frames (ping/pong) already skipped.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame from the server: code (if any) and reason.
    Close(Option<u16>, String),
    /// The stream ended (TCP closed) without a close frame, or errored.
    Ended(String),
}

/// A connected WebSocket client.
pub struct WsClient {
    ws: WsStream,
    url: String,
}

/// One handshake attempt.
pub async fn connect(url: &str) -> Result<WsClient, ConnectError> {
    let config = WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..Default::default()
    };
    let fut = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    match tokio::time::timeout(HANDSHAKE_LIMIT, fut).await {
        Err(_) => Err(ConnectError::Other(format!(
            "no handshake answer within {HANDSHAKE_LIMIT:?}"
        ))),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(ConnectError::Status(resp.status().as_u16())),
        Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
        Ok(Ok((ws, _resp))) => Ok(WsClient {
            ws,
            url: url.to_string(),
        }),
    }
}

/// Retries the handshake until it is accepted or `timeout` has passed (workers may still be
/// starting: until one is live the interface answers 503 after its connect timeout).
pub async fn connect_retry(url: &str, timeout: Duration) -> Result<WsClient> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last;
    loop {
        match connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("could not connect to {url} within {timeout:?}; last error: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl WsClient {
    /// The URL this client connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The raw stream, for tests that need it.
    pub fn stream(&mut self) -> &mut WsStream {
        &mut self.ws
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.ws.send(Message::Text(text.into())).await.context("send text")
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: impl Into<Vec<u8>>) -> Result<()> {
        self.ws.send(Message::Binary(data.into())).await.context("send binary")
    }

    /// Queues a text frame without flushing (for bursts; call `flush`).
    pub async fn feed_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.ws.feed(Message::Text(text.into())).await.context("feed text")
    }

    /// Flushes queued frames.
    pub async fn flush(&mut self) -> Result<()> {
        self.ws.flush().await.context("flush")
    }

    /// Next application frame or close, skipping ping/pong; errors if nothing arrives
    /// within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("nothing received within {timeout:?}"))?;
            return Ok(match next {
                None => Incoming::Ended("stream ended".into()),
                Some(Err(e)) => Incoming::Ended(e.to_string()),
                Some(Ok(Message::Text(t))) => Incoming::Text(t),
                Some(Ok(Message::Binary(b))) => Incoming::Binary(b),
                Some(Ok(Message::Close(frame))) => match frame {
                    Some(f) => Incoming::Close(Some(u16::from(f.code)), f.reason.into_owned()),
                    None => Incoming::Close(None, String::new()),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// Next text frame parsed as JSON, skipping heartbeats (objects with a `ts` key).
    /// Anything else (binary, close, end) is an error.
    pub async fn recv_json(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                Incoming::Text(t) => {
                    let v: Value =
                        serde_json::from_str(&t).with_context(|| format!("text frame is not JSON: {t:?}"))?;
                    if is_heartbeat(&v) {
                        continue;
                    }
                    return Ok(v);
                }
                other => bail!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// Next chat answer `{"count": n}` (heartbeats skipped); returns n.
    pub async fn recv_count(&mut self, timeout: Duration) -> Result<u64> {
        let v = self.recv_json(timeout).await?;
        v.get("count")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("expected {{\"count\": n}}, got {v}"))
    }

    /// Sends a text message on a chat connection and returns the count it was answered with.
    pub async fn chat(&mut self, text: &str, timeout: Duration) -> Result<u64> {
        self.send_text(text).await?;
        self.recv_count(timeout).await
    }

    /// Sends `n` chat messages one after the other, checking that the answers count 1..=n.
    pub async fn chat_counts_to(&mut self, n: u64, timeout: Duration) {
        for i in 1..=n {
            let count = self
                .chat(&format!("message {i}"), timeout)
                .await
                .unwrap_or_else(|e| panic!("message {i}: {e:#}"));
            assert_eq!(count, i, "answer to message {i}");
        }
    }

    /// Reads until a close frame arrives (skipping heartbeats and other text) and returns
    /// its code; errors if the stream ends without one or `timeout` passes.
    pub async fn expect_close(&mut self, timeout: Duration) -> Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                Incoming::Close(code, _) => return Ok(code),
                Incoming::Ended(why) => bail!("stream ended without a close frame: {why}"),
                Incoming::Text(_) | Incoming::Binary(_) => continue,
            }
        }
    }

    /// Sends a normal close (1000) and waits briefly for the server's close.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// True for a chat heartbeat frame `{"ts": …}`.
pub fn is_heartbeat(v: &Value) -> bool {
    v.get("ts").is_some()
}

/// A WebSocket client that writes raw frames: for bytes tungstenite will not send.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame as read by [`RawWs`].
#[derive(Debug, Clone, PartialEq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// Close code of a close frame (opcode 8) with a payload.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl RawWs {
    /// Opens a TCP connection to `addr` and performs the upgrade handshake for `path`;
    /// errors unless the answer is `101`.
    pub async fn connect(addr: &str, path: &str) -> Result<RawWs> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let head_end = tokio::time::timeout(HANDSHAKE_LIMIT, async {
            loop {
                if let Some(pos) = find(&buf, b"\r\n\r\n") {
                    return Ok::<usize, anyhow::Error>(pos + 4);
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed during handshake");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .map_err(|_| anyhow!("no handshake answer within {HANDSHAKE_LIMIT:?}"))??;
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("handshake not accepted: {head:?}");
        }
        // RFC 6455 §1.3: accept key for the fixed sample nonce above.
        if !head
            .to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=")
        {
            bail!("handshake answer lacks the right Sec-WebSocket-Accept: {head:?}");
        }
        buf.drain(..head_end);
        Ok(RawWs { stream, buf })
    }

    /// Writes one client frame, masked as RFC 6455 requires of clients.
    pub async fn write_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> Result<()> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= 0xffff {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Reads one server frame (servers do not mask). Errors on timeout or EOF.
    pub async fn read_frame(&mut self, timeout: Duration) -> Result<RawFrame> {
        tokio::time::timeout(timeout, self.read_frame_inner())
            .await
            .map_err(|_| anyhow!("no frame within {timeout:?}"))?
    }

    async fn read_frame_inner(&mut self) -> Result<RawFrame> {
        self.fill(2).await?;
        let fin = self.buf[0] & 0x80 != 0;
        let opcode = self.buf[0] & 0x0f;
        let masked = self.buf[1] & 0x80 != 0;
        let len7 = (self.buf[1] & 0x7f) as usize;
        let (len, mut off) = match len7 {
            126 => {
                self.fill(4).await?;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10).await?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n, 2),
        };
        let mut mask = None;
        if masked {
            self.fill(off + 4).await?;
            mask = Some([self.buf[off], self.buf[off + 1], self.buf[off + 2], self.buf[off + 3]]);
            off += 4;
        }
        self.fill(off + len).await?;
        let mut payload: Vec<u8> = self.buf[off..off + len].to_vec();
        if let Some(m) = mask {
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
        }
        self.buf.drain(..off + len);
        Ok(RawFrame { fin, opcode, payload })
    }

    async fn fill(&mut self, n: usize) -> Result<()> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 8192];
            let got = self.stream.read(&mut chunk).await?;
            if got == 0 {
                bail!("connection closed by the server");
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
        Ok(())
    }

    /// Reads frames until a close frame, returning its code; other frames are skipped.
    pub async fn expect_close(&mut self, timeout: Duration) -> Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.read_frame(left).await?;
            if f.opcode == 8 {
                return Ok(f.close_code());
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
