//! HTTP requests through workers.
//!
//! A request on an HTTP route is a connection of its own (an id in the
//! registry, a reply address) and follows the same one-in-flight rule as a
//! WebSocket: its body goes out as `http.request` chunks of up to 64 KiB,
//! `seq` 1, 2, …, each released only when the worker has acknowledged the
//! previous one with `done`. So the interface never holds more than one chunk,
//! and a body over `--max-body` is refused with 413 as soon as it is seen.
//!
//! The worker answers the last chunk with `http.response.start` and
//! `http.response.body` actions. A large response comes in several replies —
//! unsolicited ones (no `done`) carrying body pieces, then the final one — and
//! is streamed to the client as it arrives; a small one is sent with a
//! `Content-Length`. No answer within `--http-timeout` (for the response head,
//! then for each further piece) → 503, as Daphne does. When the request ends
//! before its response did (timeout, client gone), the worker is told with
//! `http.disconnect`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_bytes::ByteBuf;
use switchyard_protocol::{encode, Action, ChannelMessageRef, Event, HttpRequest, ReplyAddress};
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};

use crate::bus::registry::ConnEvent;
use crate::front::response::{full, header_pairs, stream_body, text_response, Body};
use crate::front::router::{Entered, Target};
use crate::state::Shared;

/// Largest request body chunk per message.
pub const CHUNK: usize = 64 << 10;

/// Daphne's words for the same situation.
const TIMED_OUT: &str = "Worker server failed to respond within time limit.\n";

/// Response headers that describe one hop; hyper sets its own.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Answers a request on an HTTP route with the workers' response.
pub async fn forward(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    target: Target,
    remote: SocketAddr,
    id: u64,
) -> Response<Body> {
    if shared.shutdown.is_draining() {
        return text_response(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down\n");
    }
    let max_body = shared.config.max_body;
    if content_length(&request).is_some_and(|length| length > max_body) {
        return too_large(max_body);
    }
    let deadline = Instant::now() + shared.config.http_timeout;
    let (parts, body) = request.into_parts();
    let head = HttpRequest {
        method: parts.method.as_str().to_owned(),
        headers: header_pairs(&parts.headers),
        client: remote.to_string(),
        body: ByteBuf::new(),
        more_body: false,
    };
    let mut exchange = Exchange {
        events: shared.registry.register(id),
        reply: ReplyAddress::new(shared.id.clone(), id).to_string(),
        stream: shared.stream_for(&target.channel, id),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        id,
        next_seq: 1,
        last_done: 0,
        pending: VecDeque::new(),
        finished: false,
        failed: false,
        _entered: target.enter(),
        shared,
    };
    let sent = timeout_at(deadline, exchange.send_request(head, body, max_body)).await;
    match sent {
        Err(_) => return exchange.timed_out(),
        Ok(Err(Refusal::TooLarge)) => return too_large(max_body),
        Ok(Err(Refusal::ClientGone)) => return text_response(StatusCode::BAD_REQUEST, "request body ended early\n"),
        Ok(Err(Refusal::Unavailable)) => {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "request could not be queued; try again later\n",
            );
        }
        Ok(Ok(())) => {}
    }
    let head = match timeout_at(deadline, exchange.response_head()).await {
        Err(_) => return exchange.timed_out(),
        Ok(head) => head,
    };
    match head.and_then(|(status, headers)| exchange.into_response(status, headers)) {
        Ok(response) => response,
        Err(problem) => {
            tracing::warn!(channel = %target.channel, problem, "bad response from the worker");
            text_response(
                StatusCode::BAD_GATEWAY,
                &format!("bad response from the application: {problem}\n"),
            )
        }
    }
}

enum Refusal {
    TooLarge,
    ClientGone,
    Unavailable,
}

/// One request on its way through the workers; dropping it before the
/// response is complete tells the worker with `http.disconnect`.
struct Exchange {
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<ConnEvent>,
    id: u64,
    reply: String,
    stream: Arc<str>,
    path: String,
    query: String,
    next_seq: u64,
    last_done: u64,
    /// Response actions received but not applied yet.
    pending: VecDeque<Action>,
    /// The response has been received completely.
    finished: bool,
    /// The response stream was cut.
    failed: bool,
    _entered: Entered,
}

impl Exchange {
    /// Sends the request body in chunks, one in flight.
    async fn send_request(&mut self, head: HttpRequest, mut body: Incoming, max_body: u64) -> Result<(), Refusal> {
        let mut buffer = BytesMut::new();
        let mut total: u64 = 0;
        loop {
            let ended = match body.frame().await {
                None => true,
                Some(Err(error)) => {
                    tracing::debug!(%error, "client request body failed");
                    return Err(Refusal::ClientGone);
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        total += data.len() as u64;
                        if total > max_body {
                            return Err(Refusal::TooLarge);
                        }
                        buffer.extend_from_slice(&data);
                    }
                    false
                }
            };
            while buffer.len() >= CHUNK || ended {
                let piece = buffer.split_to(buffer.len().min(CHUNK)).freeze();
                let more_body = !(ended && buffer.is_empty());
                let chunk = HttpRequest {
                    body: ByteBuf::from(Vec::from(piece)),
                    more_body,
                    ..head.clone()
                };
                let seq = self.send(Event::HttpRequest(chunk)).await?;
                if !more_body {
                    return Ok(());
                }
                self.wait_done(seq).await;
            }
        }
    }

    /// Appends one message to the channel; returns its sequence number.
    async fn send(&mut self, event: Event) -> Result<u64, Refusal> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let message = ChannelMessageRef::new(&self.reply, seq, &self.path, &self.query, &event);
        match self.shared.outbound.send(self.stream.clone(), encode(&message)).await {
            Ok(Some(_)) => Ok(seq),
            _ => Err(Refusal::Unavailable),
        }
    }

    /// Waits for the reply that completes `seq`, keeping any actions it brings.
    async fn wait_done(&mut self, seq: u64) {
        while self.last_done < seq && self.next_reply().await {}
    }

    /// Takes the next reply into `pending`; `false` when the mailbox is closed.
    async fn next_reply(&mut self) -> bool {
        loop {
            match self.events.recv().await {
                Some(ConnEvent::Reply(reply)) => {
                    if let Some(done) = reply.done {
                        if done <= self.last_done {
                            tracing::debug!(done, "repeated reply ignored");
                            continue;
                        }
                        self.last_done = done;
                    }
                    self.pending.extend(reply.actions);
                    return true;
                }
                Some(ConnEvent::Group(_) | ConnEvent::Overflowed) => continue,
                None => return false,
            }
        }
    }

    /// Waits for `http.response.start`.
    async fn response_head(&mut self) -> Result<(u16, Vec<(String, String)>), &'static str> {
        loop {
            match self.pending.pop_front() {
                Some(Action::HttpResponseStart { status, headers }) => return Ok((status, headers)),
                Some(Action::HttpResponseBody { .. }) => return Err("body before http.response.start"),
                Some(_) => continue,
                None if self.last_done >= self.next_seq - 1 => return Err("no http.response.start"),
                None => {
                    if !self.next_reply().await {
                        return Err("connection table closed");
                    }
                }
            }
        }
    }

    /// The response: with the whole body when it is already here, streamed
    /// otherwise.
    fn into_response(mut self, status: u16, headers: Vec<(String, String)>) -> Result<Response<Body>, &'static str> {
        let status = StatusCode::from_u16(status).map_err(|_| "invalid status code")?;
        let body = match self.whole_body() {
            Some(bytes) => {
                self.finished = true;
                full(bytes)
            }
            None => stream_body(futures::stream::unfold(self, |mut exchange| async move {
                let piece = exchange.next_piece().await?;
                Some((piece, exchange))
            })),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        for (name, value) in headers {
            if HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str()) {
                continue;
            }
            match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
                (Ok(name), Ok(value)) => {
                    response.headers_mut().append(name, value);
                }
                _ => tracing::debug!(name, "invalid response header dropped"),
            }
        }
        Ok(response)
    }

    /// The complete body, when every piece of it is already here.
    fn whole_body(&mut self) -> Option<Bytes> {
        let complete = self
            .pending
            .iter()
            .any(|action| matches!(action, Action::HttpResponseBody { more_body: false, .. }));
        if !complete {
            return None;
        }
        let mut body = BytesMut::new();
        while let Some(action) = self.pending.pop_front() {
            if let Action::HttpResponseBody { body: piece, more_body } = action {
                body.extend_from_slice(&piece);
                if !more_body {
                    break;
                }
            }
        }
        Some(body.freeze())
    }

    /// The next piece of a streamed response body; `None` at its end. An
    /// error cuts the client's connection: a response already under way can
    /// only be ended that way.
    async fn next_piece(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            if self.finished || self.failed {
                return None;
            }
            match self.pending.pop_front() {
                Some(Action::HttpResponseBody { body, more_body }) => {
                    self.finished = !more_body;
                    if !body.is_empty() {
                        return Some(Ok(Bytes::from(body.into_vec())));
                    }
                }
                Some(Action::HttpResponseStart { .. }) => {
                    // A worker took over mid-stream and started again.
                    tracing::warn!("response started twice; cutting the connection");
                    return self.fail("response restarted by another worker");
                }
                Some(_) => {}
                // The final reply came without the end of the body: the
                // application failed midway.
                None if self.last_done >= self.next_seq - 1 => {
                    return self.fail("application ended the response early");
                }
                None => match timeout(self.shared.config.http_timeout, self.next_reply()).await {
                    Ok(true) => {}
                    Ok(false) => return self.fail("connection table closed"),
                    Err(_) => {
                        tracing::warn!("worker stopped streaming the response; cutting the connection");
                        return self.fail("response timed out");
                    }
                },
            }
        }
    }

    /// Ends the stream with an error; the disconnect still goes out on drop.
    fn fail(&mut self, why: &'static str) -> Option<std::io::Result<Bytes>> {
        self.pending.clear();
        self.failed = true;
        Some(Err(std::io::Error::other(why)))
    }

    fn timed_out(self) -> Response<Body> {
        tracing::warn!(stream = %self.stream, "no worker answered the HTTP request in time");
        text_response(StatusCode::SERVICE_UNAVAILABLE, TIMED_OUT)
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.shared.registry.close(self.id);
        if self.next_seq > 1 && !self.finished {
            let gone = Event::HttpDisconnect;
            let message = ChannelMessageRef::new(&self.reply, self.next_seq, &self.path, &self.query, &gone);
            self.shared
                .outbound
                .send_detached(self.stream.clone(), encode(&message));
        }
    }
}

fn content_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(max_body: u64) -> Response<Body> {
    text_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body larger than {max_body} bytes (--max-body)\n"),
    )
}
