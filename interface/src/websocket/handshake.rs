//! The WebSocket handshake, decided by a worker.
//!
//! As in ASGI, the application decides whether a connection is accepted: the
//! interface appends `websocket.connect` to the route's channel and holds the
//! HTTP upgrade until a worker answers. Accept → 101 and the connection task
//! starts; close before accept → 403; no answer within `--connect-timeout` →
//! 503 (and a disconnect, so a late worker can clean up).
//!
//! Before a worker is asked, [`crate::front::admission`] may turn the upgrade away:
//! Origin not allowed → 403, connection ceiling → 503, per-IP ceiling → 429
//! (both with Retry-After). The admitted connection's slot lives as long as
//! its task. The 101 must reach the client within `--header-read-timeout`,
//! so no stage from accept to an open socket waits without bound.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use fastwebsockets::{Role, WebSocket};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use switchyard_protocol::{close, encode, Action, ChannelMessage, ConnectScope, Event, ReplyAddress};
use tokio::time::Instant;
use tracing::Instrument;

use super::connection::{Connection, Opened};
use super::frames;
use super::writer::FrameWriter;
use crate::bus::registry::{ConnEvent, Events};
use crate::front::admission::{Refusal, Slot};
use crate::front::response::{header_pairs, text_response, Body};
use crate::front::router::{Entered, Target};
use crate::shutdown::TaskGuard;
use crate::state::Shared;

/// Answers an upgrade request on a routed path.
pub async fn upgrade(
    shared: Arc<Shared>,
    mut request: Request<Incoming>,
    target: Target,
    remote: SocketAddr,
) -> Response<Body> {
    // Held by the connection task: the interface does not exit under it.
    let Some(guard) = shared.shutdown.guard() else {
        return text_response(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down\n");
    };
    let slot = match admit(&shared, &request, remote) {
        Ok(slot) => slot,
        Err(refusal) => return refused(&shared, refusal),
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(error) => return text_response(StatusCode::BAD_REQUEST, &format!("bad WebSocket handshake: {error}\n")),
    };
    let (id, mut events) = shared.registry.open(shared.config.max_send_queue);
    let reply = ReplyAddress::new(shared.id.clone(), id).to_string();
    let stream = shared.stream_for(&target.channel, id);
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let scope = ConnectScope {
        headers: header_pairs(request.headers()),
        client: remote.to_string(),
        subprotocols: offered_subprotocols(&request),
    };
    let connect = ChannelMessage::new(reply.clone(), 1, path.clone(), query.clone(), Event::Connect(scope));
    let appended = shared.outbound.send(stream.clone(), encode(&connect));
    let deadline = Instant::now() + shared.config.connect_timeout;

    let verdict = tokio::time::timeout_at(deadline, async {
        if appended.await.ok().flatten().is_none() {
            return Verdict::Unavailable;
        }
        wait_for_verdict(&mut events).await
    })
    .await
    .unwrap_or(Verdict::Unavailable);

    match verdict {
        Verdict::Accept { subprotocol, actions } => {
            let mut response = response.map(|_| Body::default());
            if let Some(value) = subprotocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
                response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
            let opened = Opened {
                id,
                channel: target.channel.clone(),
                reply,
                stream,
                path,
                query,
                actions,
            };
            let span = tracing::info_span!(parent: None, "ws", conn = id, channel = %target.channel);
            let connection = run_connection(shared, opened, upgrade, events, (target.enter(), slot, guard));
            tokio::spawn(connection.instrument(span));
            response
        }
        Verdict::Refuse => {
            shared.registry.close(id);
            shared.metrics.error("handshake_refused");
            text_response(StatusCode::FORBIDDEN, "connection refused by the application\n")
        }
        Verdict::Unavailable => {
            shared.registry.close(id);
            shared.metrics.error("handshake_timeout");
            disconnect_before_open(&shared, reply, stream, path, query);
            tracing::warn!(channel = %target.channel, "no worker answered the handshake in time");
            text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no worker answered in time; try again later\n",
            )
        }
    }
}

/// Seconds a client refused by a connection ceiling is told to wait.
const RETRY_AFTER_SECONDS: u64 = 5;

/// Origin allowlist, then the connection ceilings.
fn admit(shared: &Shared, request: &Request<Incoming>, remote: SocketAddr) -> Result<Slot, Refusal> {
    if !shared.admission.origin_allowed(request.headers()) {
        return Err(Refusal::Origin);
    }
    shared.admission.admit(remote.ip())
}

/// The answer to a refused upgrade, counted by reason.
fn refused(shared: &Shared, refusal: Refusal) -> Response<Body> {
    shared.metrics.handshake_refused(refusal.reason());
    tracing::debug!(reason = refusal.reason(), "WebSocket upgrade refused");
    let (status, text) = match refusal {
        Refusal::Origin => (StatusCode::FORBIDDEN, "origin not allowed\n"),
        Refusal::MaxConnections => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections on this server; try again later\n",
        ),
        Refusal::PerIp => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address; try again later\n",
        ),
    };
    let mut response = text_response(status, text);
    if refusal != Refusal::Origin {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    }
    response
}

enum Verdict {
    Accept {
        subprotocol: Option<String>,
        actions: Vec<Action>,
    },
    Refuse,
    Unavailable,
}

/// Waits for the reply that completes the connect (sequence number 1).
async fn wait_for_verdict(events: &mut Events) -> Verdict {
    let mut early = Vec::new();
    while let Some(event) = events.recv().await {
        let ConnEvent::Reply(reply) = event else {
            continue;
        };
        if reply.done != Some(1) {
            early.extend(reply.actions);
            continue;
        }
        early.extend(reply.actions);
        let mut actions = early.into_iter();
        for action in actions.by_ref() {
            match action {
                Action::Accept { subprotocol } => {
                    return Verdict::Accept {
                        subprotocol,
                        actions: actions.collect(),
                    }
                }
                Action::Close { .. } => return Verdict::Refuse,
                _ => {}
            }
        }
        return Verdict::Refuse;
    }
    Verdict::Unavailable
}

fn offered_subprotocols<B>(request: &Request<B>) -> Vec<String> {
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Waits for the upgrade to complete, then starts the connection's own task.
/// Two tasks, the first short-lived: what the upgrade needed is not kept
/// for the life of the connection.
#[expect(clippy::manual_async_fn, reason = "an async fn would keep its arguments twice")]
fn run_connection(
    shared: Arc<Shared>,
    opened: Opened,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    events: Events,
    // For as long as the connection lives: counted on its route, holding its
    // admission slot, keeping the interface from exiting.
    held: (Entered, Slot, TaskGuard),
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let socket = match tokio::time::timeout(shared.config.header_read_timeout, upgrade).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => {
                tracing::debug!(%error, "upgrade did not complete");
                shared.registry.close(opened.id);
                disconnect_before_open(&shared, opened.reply, opened.stream, opened.path, opened.query);
                return;
            }
            Err(_) => {
                tracing::debug!("the 101 did not reach the client in time");
                shared.metrics.error("upgrade_timeout");
                shared.registry.close(opened.id);
                disconnect_before_open(&shared, opened.reply, opened.stream, opened.path, opened.query);
                return;
            }
        };
        // The upgraded stream already is our TokioIo; rewrap to split it.
        // fastwebsockets reads frames; `FrameWriter` writes them, on the raw
        // write half (fastwebsockets' writer does not give it back).
        let socket = WebSocket::after_handshake(socket.into_inner(), Role::Server);
        let write_half = Cell::new(None);
        let (read, _) = socket.split(|io| {
            let (read, write) = tokio::io::split(io);
            write_half.set(Some(write));
            (read, tokio::io::sink())
        });
        let Some(write) = write_half.into_inner() else {
            return;
        };
        let inbox = frames::Inbox::new(read, shared.config.max_message_size);
        let backlog = events.backlog().clone();
        let connection = Connection::new(shared, opened, FrameWriter::new(write), backlog);
        tokio::spawn(connection.run(inbox, events, held).in_current_span());
    }
}

/// Tells the workers that a connection whose connect (sequence 1) they may
/// have answered never opened, so a consumer that accepted it runs its
/// disconnect and cleans up (sessions, groups) as for any other connection.
fn disconnect_before_open(shared: &Shared, reply: String, stream: Arc<str>, path: String, query: String) {
    let gone = ChannelMessage::new(reply, 2, path, query, Event::Disconnect { code: close::ABNORMAL });
    shared.outbound.send_detached(stream, encode(&gone));
}
