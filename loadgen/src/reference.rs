//! A reference chat-counter server (Rust, fastwebsockets, no Redis) for testing the load tool.
//!
//! It exists so the scenarios can be checked — and the load tool's own ceiling on this machine
//! measured — without Switchyard or Python: `switchyard-bench reference-server` serves the same
//! protocol in one process, and the integration tests start it in-process. It can misbehave on
//! purpose (skip a count, push heartbeats) to prove that those are detected or ignored.

use std::net::SocketAddr;

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Args;
use fastwebsockets::{upgrade, FragmentCollector, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How the reference server behaves.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Skip this count once per connection (answer n+1 instead of n): an order violation.
    #[arg(long)]
    pub skip_at: Option<u64>,

    /// Push a `{"ts": …}` heartbeat before every answer.
    #[arg(long)]
    pub heartbeat: bool,
}

/// `reference-server` options.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765")]
    pub bind: SocketAddr,

    /// Stop after this many seconds (every run is bounded).
    #[arg(long, default_value_t = 600.0)]
    pub max_seconds: f64,

    #[command(flatten)]
    pub behaviour: Behaviour,
}

/// Binds `addr` (loopback only) and serves in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr, behaviour: Behaviour) -> Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        bail!("the reference server only listens on loopback, not {addr}");
    }
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, behaviour));
    Ok(local)
}

/// Serves until `max_seconds` pass (the `reference-server` subcommand).
pub async fn run(args: ServeArgs) -> Result<()> {
    let limit = crate::options::seconds("--max-seconds", args.max_seconds, 0.1, crate::options::MAX_SECONDS)?;
    let local = spawn(args.bind, args.behaviour).await?;
    eprintln!("reference chat-counter server on ws://{local}/ws/chat/ for at most {limit:?}");
    tokio::select! {
        _ = tokio::time::sleep(limit) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, behaviour: Behaviour) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // Two frames in a row (heartbeat + answer) would otherwise meet Nagle + delayed ACK.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, behaviour));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    mut req: Request<Incoming>,
    behaviour: Behaviour,
) -> Result<Response<Empty<Bytes>>, fastwebsockets::WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let Ok(ws) = fut.await else { return };
        let mut ws = FragmentCollector::new(ws);
        let mut n = 0u64;
        loop {
            let Ok(frame) = ws.read_frame().await else { return };
            match frame.opcode {
                OpCode::Text => {
                    n += 1;
                    if behaviour.skip_at == Some(n) {
                        n += 1;
                    }
                    if behaviour.heartbeat {
                        let hb = br#"{"ts": "2024-01-01T00:00:00Z"}"#.to_vec();
                        if ws.write_frame(Frame::text(Payload::Owned(hb))).await.is_err() {
                            return;
                        }
                    }
                    let answer = format!("{{\"count\": {n}}}").into_bytes();
                    if ws.write_frame(Frame::text(Payload::Owned(answer))).await.is_err() {
                        return;
                    }
                }
                OpCode::Close => return,
                _ => {}
            }
        }
    });
    Ok(response)
}
