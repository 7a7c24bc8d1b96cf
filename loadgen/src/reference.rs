//! A reference chat-counter and rooms server (Rust, fastwebsockets, no Redis) for testing the
//! load tool.
//!
//! It exists so the scenarios can be checked — and the load tool's own ceiling on this machine
//! measured — without Switchyard or Python: `switchyard-bench reference-server` serves the same
//! protocols in one process (`/ws/rooms/…` speaks Switchyard's rooms protocol, every other path
//! the chat counter), and the integration tests start it in-process. Several servers can share
//! one [`Hub`] of rooms, standing in for several interfaces on one Redis. It can misbehave on
//! purpose (skip a count, push heartbeats, drop or repeat a broadcast) to prove that those are
//! detected or ignored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Args;
use fastwebsockets::{upgrade, FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How the reference server behaves.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Skip this count once per connection (answer n+1 instead of n): an order violation.
    #[arg(long)]
    pub skip_at: Option<u64>,

    /// Push a `{"ts": …}` heartbeat before every answer.
    #[arg(long)]
    pub heartbeat: bool,

    /// Rooms: do not deliver the broadcast with this seq to this server's members.
    #[arg(long)]
    pub drop_seq: Option<u64>,

    /// Rooms: deliver the broadcast with this seq twice to this server's members.
    #[arg(long)]
    pub repeat_seq: Option<u64>,
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

/// Binds `addr` (loopback only) and serves in the background with rooms of its own; returns the
/// bound address.
pub async fn spawn(addr: SocketAddr, behaviour: Behaviour) -> Result<SocketAddr> {
    spawn_with_hub(addr, behaviour, Arc::new(Hub::default())).await
}

/// Like [`spawn`], sharing `hub`'s rooms with every other server given the same hub.
pub async fn spawn_with_hub(addr: SocketAddr, behaviour: Behaviour, hub: Arc<Hub>) -> Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        bail!("the reference server only listens on loopback, not {addr}");
    }
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, behaviour, hub));
    Ok(local)
}

/// Serves until `max_seconds` pass (the `reference-server` subcommand).
pub async fn run(args: ServeArgs) -> Result<()> {
    let limit = crate::options::seconds("--max-seconds", args.max_seconds, 0.1, crate::options::MAX_SECONDS)?;
    let local = spawn(args.bind, args.behaviour).await?;
    eprintln!("reference server on ws://{local}/ws/chat/ and ws://{local}/ws/rooms/ for at most {limit:?}");
    tokio::select! {
        _ = tokio::time::sleep(limit) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, behaviour: Behaviour, hub: Arc<Hub>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // Two frames in a row (heartbeat + answer) would otherwise meet Nagle + delayed ACK.
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, behaviour, hub.clone()));
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
    hub: Arc<Hub>,
) -> Result<Response<Empty<Bytes>>, fastwebsockets::WebSocketError> {
    let rooms = req.uri().path().starts_with("/ws/rooms/");
    let (response, fut) = upgrade::upgrade(&mut req)?;
    if rooms {
        tokio::spawn(async move {
            let Ok(ws) = fut.await else { return };
            serve_rooms(ws, behaviour, hub).await;
        });
        return Ok(response);
    }
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

/// A member's outgoing frames and the server behaviour it was accepted under.
struct Seat {
    out: mpsc::UnboundedSender<Vec<u8>>,
    behaviour: Behaviour,
}

#[derive(Default)]
struct Room {
    seq: u64,
    members: HashMap<u64, Seat>,
}

/// Rooms shared by the servers spawned with it (what Redis is to Switchyard's interfaces).
#[derive(Default)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
}

impl Hub {
    fn join(&self, room: &str, id: u64, seat: Seat) {
        if let Ok(mut rooms) = self.rooms.lock() {
            rooms.entry(room.to_string()).or_default().members.insert(id, seat);
        }
    }

    fn leave(&self, room: &str, id: u64) {
        if let Ok(mut rooms) = self.rooms.lock() {
            if let Some(r) = rooms.get_mut(room) {
                r.members.remove(&id);
            }
        }
    }

    /// One broadcast: the next seq, then the frame queued to every member.
    fn say(&self, room: &str, text: &str) {
        let Ok(mut rooms) = self.rooms.lock() else { return };
        let r = rooms.entry(room.to_string()).or_default();
        r.seq += 1;
        let seq = r.seq;
        let frame = json!({ "room": room, "text": text, "seq": seq })
            .to_string()
            .into_bytes();
        for seat in r.members.values() {
            if seat.behaviour.drop_seq == Some(seq) {
                continue;
            }
            let _ = seat.out.send(frame.clone());
            if seat.behaviour.repeat_seq == Some(seq) {
                let _ = seat.out.send(frame.clone());
            }
        }
    }
}

/// One `/ws/rooms/` connection: a writer task fed by the hub, a reader handling commands.
async fn serve_rooms(
    ws: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
    behaviour: Behaviour,
    hub: Arc<Hub>,
) {
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let (read, mut write) = ws.split(tokio::io::split);
    let mut read = FragmentCollectorRead::new(read);
    let (out, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let (obligated_tx, mut obligated) = mpsc::unbounded_channel::<Frame<'static>>();
    let writer = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                Some(text) = queue.recv() => Frame::text(Payload::Owned(text)),
                Some(frame) = obligated.recv() => frame,
                else => return,
            };
            if write.write_frame(frame).await.is_err() {
                return;
            }
        }
    });
    let mut send_fn = |frame: Frame<'_>| {
        let owned = Frame::new(frame.fin, frame.opcode, None, Payload::Owned(frame.payload.to_vec()));
        std::future::ready(obligated_tx.send(owned).map_err(|_| "writer gone"))
    };
    let mut joined: Vec<String> = Vec::new();
    while let Ok(frame) = read.read_frame(&mut send_fn).await {
        match frame.opcode {
            OpCode::Text => {
                let command: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
                let field = |k: &str| command.get(k).and_then(Value::as_str).map(str::to_owned);
                if let Some(room) = field("join") {
                    hub.join(
                        &room,
                        id,
                        Seat {
                            out: out.clone(),
                            behaviour,
                        },
                    );
                    let _ = out.send(json!({ "joined": room }).to_string().into_bytes());
                    joined.push(room);
                } else if let (Some(text), Some(room)) = (field("say"), field("room")) {
                    hub.say(&room, &text);
                } else {
                    let _ = out.send(br#"{"error":"unknown command"}"#.to_vec());
                }
            }
            OpCode::Close => break,
            _ => {}
        }
    }
    for room in &joined {
        hub.leave(room, id);
    }
    drop(out);
    drop(obligated_tx);
    let _ = writer.await;
}
