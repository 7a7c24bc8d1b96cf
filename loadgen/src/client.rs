//! Opening one WebSocket client connection: bind a source address, TCP connect, HTTP/1.1 upgrade.
//!
//! Every scenario opens connections the same way, so binding (see `source.rs`), Nagle, the
//! handshake (fastwebsockets over hyper) and the connect timeout live here.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use fastwebsockets::{handshake, WebSocket};
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::target::Target;

/// An open client WebSocket.
pub type Ws = WebSocket<TokioIo<Upgraded>>;

/// Runs hyper's connection driver (alive only until the upgrade completes) on tokio.
struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Why a connection attempt failed, kept coarse so reports can count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectFailure {
    /// The TCP connect (or the source bind) failed.
    Tcp,
    /// The server answered the upgrade with something other than 101 (e.g. 403, 503).
    Rejected,
    /// Any other handshake error (EOF, bad headers).
    Handshake,
    /// Connect + handshake exceeded the timeout.
    Timeout,
}

/// TCP-connects to `addr`, first binding `source` (port chosen by the kernel) if given.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let stream = match source {
        Some(src) if src.is_ipv4() == addr.is_ipv4() => {
            let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_nonblocking(true)?;
            socket
                .bind(&SocketAddr::new(src, 0).into())
                .with_context(|| format!("binding source address {src}"))?;
            let socket = TcpSocket::from_std_stream(socket.into());
            socket.connect(addr).await?
        }
        _ => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens one WebSocket to `target` within `timeout`.
pub async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    timeout: Duration,
) -> std::result::Result<Ws, (ConnectFailure, anyhow::Error)> {
    match tokio::time::timeout(timeout, connect_inner(target, source)).await {
        Ok(result) => result,
        Err(_) => Err((ConnectFailure::Timeout, anyhow!("connect timed out after {timeout:?}"))),
    }
}

async fn connect_inner(
    target: &Target,
    source: Option<IpAddr>,
) -> std::result::Result<Ws, (ConnectFailure, anyhow::Error)> {
    let stream = tcp_connect(target.addr, source)
        .await
        .map_err(|e| (ConnectFailure::Tcp, e))?;
    let request = Request::builder()
        .method("GET")
        .uri(target.path_and_query.as_str())
        .header(HOST, target.host_header.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| (ConnectFailure::Handshake, anyhow!(e)))?;
    let (mut ws, _response) = handshake::client(&SpawnExecutor, request, stream)
        .await
        .map_err(|e| match e {
            fastwebsockets::WebSocketError::InvalidStatusCode(code) => {
                (ConnectFailure::Rejected, anyhow!("upgrade refused with HTTP {code}"))
            }
            other => (ConnectFailure::Handshake, anyhow!(other)),
        })?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    Ok(ws)
}
