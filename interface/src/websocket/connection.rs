//! The connection task: one per WebSocket, owner of its write half.
//!
//! It keeps the per-connection order guarantee: at most one client message is
//! in flight; the next one is released only when a reply carries the `done`
//! marker for the current sequence number. A repeated reply for a sequence
//! number already done is ignored, so redelivery can never apply twice here.
//!
//! It also runs the connection's endings: a client close, a worker's close
//! action, a broken socket, or the interface's drain (drain notice → worker's
//! goodbye → close 1001). Messages the client sent before closing still reach
//! the workers, in order; only then is the disconnect sent.
//!
//! And it enforces the per-connection limits (`limits.rs`, `docs/limits.md`):
//! it pings, closes a client not heard from for the idle timeout (1001), one
//! over its message rate (1008), and one that does not read (1008): its
//! mailbox overflowed or a write stayed blocked for the send timeout. A write
//! is abandoned half-way in that case, so the socket is dropped without a
//! close frame; a connection blocked in a write must not block its task for
//! good, or its mailbox could never be drained.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{CloseCode, Frame, OpCode, Payload as FramePayload, WebSocketWrite};
use switchyard_protocol::groups::Position;
use switchyard_protocol::{encode, Action, ChannelMessage, Event, Payload};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};

use super::frames::{Inbound, Inbox, POLICY_VIOLATION};
use super::io::WriteHalf;
use super::rate::TokenBucket;
use crate::bus::registry::{Backlog, ConnEvent, Events};
use crate::state::Shared;

/// Client messages read ahead of the one in flight; when full, the inbox is
/// not polled, the socket is not read and TCP pushes back on the client.
const MAX_PENDING: usize = 16;
/// How long a closed connection keeps handing its queued messages to workers.
const LINGER: Duration = Duration::from_secs(10);
/// How long to wait for the client's answer to our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
const GOING_AWAY: u16 = 1001;
const ABNORMAL: u16 = 1006;
const TRY_AGAIN_LATER: u16 = 1013;

/// Everything the handshake learned, handed to the connection task.
pub struct Opened {
    pub id: u64,
    pub reply: String,
    pub stream: Arc<str>,
    pub path: String,
    pub query: String,
    /// Actions that came with the accept (sends, group adds), applied first.
    pub actions: Vec<Action>,
}

pub struct Connection {
    shared: Arc<Shared>,
    opened: Opened,
    writer: WebSocketWrite<WriteHalf>,
    /// Sequence number of the next message (1 was the connect).
    next_seq: u64,
    /// The message in flight: its sequence number, when it left, and whether
    /// Redis has it yet.
    in_flight: Option<(u64, Instant)>,
    appended: Option<oneshot::Receiver<bool>>,
    last_done: u64,
    pending: VecDeque<Event>,
    groups: HashSet<String>,
    /// Set once the socket is closed (by either side): the close code, and
    /// until when queued messages are still handed to workers.
    closed: Option<(u16, Instant)>,
    /// We sent the first close frame and owe the client a moment to answer.
    awaiting_close_reply: bool,
    /// The fill level of our mailbox; says when a client reads too slowly.
    backlog: Arc<Backlog>,
    /// The message rate limit, when there is one.
    rate: Option<TokenBucket>,
}

impl Connection {
    pub fn new(
        shared: Arc<Shared>,
        opened: Opened,
        writer: WebSocketWrite<WriteHalf>,
        backlog: Arc<Backlog>,
    ) -> Connection {
        let rate = shared
            .limits
            .message_rate
            .map(|(rate, burst)| TokenBucket::new(rate, burst, Instant::now()));
        Connection {
            shared,
            opened,
            writer,
            backlog,
            rate,
            next_seq: 2,
            in_flight: None,
            appended: None,
            last_done: 1,
            pending: VecDeque::new(),
            groups: HashSet::new(),
            closed: None,
            awaiting_close_reply: false,
        }
    }

    /// Runs the connection to its end, then tells the workers it is gone.
    pub async fn run(mut self, mut inbound: Inbox, mut events: Events) {
        self.shared.metrics.connections_active.inc();
        let actions = std::mem::take(&mut self.opened.actions);
        self.apply_actions(actions).await;
        let code = self.serve(&mut inbound, &mut events).await;
        if self.awaiting_close_reply {
            let _ = tokio::time::timeout(CLOSE_WAIT, async { while inbound.recv().await.is_some() {} }).await;
        }
        self.finish(code);
    }

    async fn serve(&mut self, inbound: &mut Inbox, events: &mut Events) -> u16 {
        let mut shutdown = self.shared.shutdown.clone();
        let mut drain_deadline: Option<Instant> = None;
        let mut drain_seq: Option<u64> = None;
        let limits = self.shared.limits.clone();
        let mut next_ping = limits.ping_interval.map(|interval| Instant::now() + interval);
        // While the inbox is not polled nothing can be heard; the idle clock
        // starts again when reading resumes.
        let mut was_reading = true;
        let mut resumed = Instant::now();
        loop {
            if self.in_flight.is_none() {
                if let Some(event) = self.pending.pop_front() {
                    self.release(event);
                } else if let Some((code, _)) = self.closed {
                    return code;
                } else if drain_deadline.is_some() && drain_seq.is_none() {
                    drain_seq = Some(self.release(Event::Drain));
                } else if drain_seq.is_some_and(|seq| self.last_done >= seq) {
                    self.close(GOING_AWAY, "server shutting down").await;
                    continue;
                }
            }
            let reading = self.closed.is_none() && drain_deadline.is_none() && self.pending.len() < MAX_PENDING;
            if reading && !was_reading {
                resumed = Instant::now();
            }
            was_reading = reading;
            let idle_at = limits
                .idle_timeout
                .filter(|_| reading)
                .map(|timeout| inbound.last_heard().max(resumed) + timeout);
            let timer = [idle_at, next_ping].into_iter().flatten().min();
            let linger_until = self.closed.map(|(_, until)| until);
            tokio::select! {
                biased;
                _ = self.backlog.overflow(), if self.closed.is_none() => {
                    self.shared.metrics.error("slow_reader");
                    tracing::info!(conn = self.opened.id, "client does not read: its send queue is full");
                    self.close(POLICY_VIOLATION, "send queue full").await;
                }
                _ = sleep_until(drain_deadline.unwrap_or_else(far_future)), if drain_deadline.is_some() && self.closed.is_none() => {
                    self.close(GOING_AWAY, "server shutting down").await;
                    self.pending.clear();
                    return GOING_AWAY;
                }
                _ = sleep_until(linger_until.unwrap_or_else(far_future)), if linger_until.is_some() => {
                    tracing::warn!(conn = self.opened.id, "closed connection still had unanswered messages; sending disconnect anyway");
                    return self.closed.map_or(ABNORMAL, |(code, _)| code);
                }
                ok = wait_appended(&mut self.appended), if self.appended.is_some() => {
                    self.appended = None;
                    if !ok {
                        self.shared.metrics.error("redis_unavailable");
                        self.close(TRY_AGAIN_LATER, "message could not be queued").await;
                        self.pending.clear();
                        self.in_flight = None;
                    }
                }
                _ = sleep_until(timer.unwrap_or_else(far_future)), if timer.is_some() && self.closed.is_none() => {
                    let now = Instant::now();
                    if idle_at.is_some_and(|at| at <= now) {
                        // A busy mailbox may have kept the inbox from being polled: look once more.
                        if let Ok(item) = tokio::time::timeout(Duration::ZERO, inbound.recv()).await {
                            match item {
                                Some(item) => self.on_inbound(item).await,
                                None => self.mark_closed(ABNORMAL),
                            }
                            continue;
                        }
                        if limits.idle_timeout.is_some_and(|timeout| inbound.last_heard() + timeout > now) {
                            continue;
                        }
                        self.shared.metrics.error("idle_timeout");
                        tracing::info!(conn = self.opened.id, "nothing heard from the client: closing");
                        self.close(GOING_AWAY, "idle timeout").await;
                    } else if let (Some(at), Some(interval)) = (next_ping, limits.ping_interval) {
                        if at <= now {
                            next_ping = Some(now + interval);
                            if self.write(Frame::new(true, OpCode::Ping, None, FramePayload::Borrowed(&[]))).await {
                                self.shared.metrics.pings_sent.inc();
                            }
                        }
                    }
                }
                event = events.recv() => match event {
                    Some(event) => self.apply_event(event).await,
                    None => return ABNORMAL,
                },
                deadline = shutdown.draining(), if drain_deadline.is_none() => {
                    drain_deadline = Some(deadline);
                }
                item = inbound.recv(), if reading => match item {
                    Some(item) => self.on_inbound(item).await,
                    None => {
                        self.mark_closed(ABNORMAL);
                    }
                },
            }
        }
    }

    /// Sends a message to the channel; returns its sequence number.
    fn release(&mut self, event: Event) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if matches!(event, Event::Receive(_)) {
            self.shared.metrics.message("in");
        }
        let message = ChannelMessage::new(
            self.opened.reply.clone(),
            seq,
            self.opened.path.clone(),
            self.opened.query.clone(),
            event,
        );
        self.appended = Some(self.shared.outbound.send(self.opened.stream.clone(), encode(&message)));
        self.in_flight = Some((seq, Instant::now()));
        seq
    }

    async fn on_inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Message(payload) => {
                let now = Instant::now();
                if self.rate.as_mut().is_some_and(|bucket| !bucket.take(now)) {
                    self.shared.metrics.error("rate_limited");
                    tracing::info!(conn = self.opened.id, "client over its message rate: closing");
                    self.close(POLICY_VIOLATION, "message rate exceeded").await;
                    return;
                }
                self.pending.push_back(Event::Receive(payload));
            }
            Inbound::Ping(data) => {
                let _ = self.write(Frame::pong(FramePayload::Owned(data))).await;
            }
            Inbound::Close { code, .. } => {
                // Answer with the same code (none when the client gave none).
                let echo = if code == 1005 {
                    Frame::close_raw(FramePayload::Owned(Vec::new()))
                } else {
                    Frame::close(code, b"")
                };
                let _ = self.write(echo).await;
                self.mark_closed(code);
            }
            Inbound::Fail { code, reason } => {
                self.shared.metrics.error(match code {
                    1007 => "invalid_utf8",
                    1009 => "message_too_big",
                    POLICY_VIOLATION => "policy_violation",
                    _ => "protocol_error",
                });
                tracing::info!(
                    conn = self.opened.id,
                    code,
                    reason,
                    "closing connection after a client error"
                );
                self.close(code, reason).await;
            }
        }
    }

    async fn apply_event(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Reply(reply) => {
                if let Some(done) = reply.done {
                    if done <= self.last_done {
                        tracing::debug!(conn = self.opened.id, done, "repeated reply ignored");
                        return;
                    }
                }
                self.apply_actions(reply.actions).await;
                if let Some(done) = reply.done {
                    self.last_done = done;
                    if let Some((seq, since)) = self.in_flight {
                        if seq <= done {
                            self.shared
                                .metrics
                                .message_duration
                                .observe(since.elapsed().as_secs_f64());
                            self.in_flight = None;
                        }
                    }
                }
            }
            ConnEvent::Group(message) => {
                self.send_payload(&message.payload).await;
            }
        }
    }

    async fn apply_actions(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Accept { .. } => {}
                Action::Send(payload) => self.send_payload(&payload).await,
                Action::Close { code, reason } => {
                    let code = if CloseCode::from(code).is_allowed() && code != 1005 {
                        code
                    } else {
                        1000
                    };
                    self.close(code, &reason).await;
                }
                Action::GroupAdd { group, since, epoch } => {
                    let since = since.map(|seq| Position::new(epoch.unwrap_or_default(), seq));
                    self.shared.groups.add(&group, self.opened.id, since);
                    self.groups.insert(group);
                }
                Action::GroupDiscard { group } => {
                    self.shared.groups.discard(&group, self.opened.id);
                    self.groups.remove(&group);
                }
                // HTTP actions mean nothing on a WebSocket.
                Action::HttpResponseStart { .. } | Action::HttpResponseBody { .. } => {}
            }
        }
    }

    async fn send_payload(&mut self, payload: &Payload) {
        if self.closed.is_some() {
            return;
        }
        let frame = match (&payload.text, &payload.bytes) {
            (Some(text), _) => Frame::text(FramePayload::Owned(text.as_bytes().to_vec())),
            (None, Some(bytes)) => Frame::binary(FramePayload::Owned(bytes.to_vec())),
            (None, None) => return,
        };
        if self.write(frame).await {
            self.shared.metrics.message("out");
        }
    }

    /// Sends our close frame (once) and stops reading.
    async fn close(&mut self, code: u16, reason: &str) {
        if self.closed.is_some() {
            return;
        }
        let reason = truncate_utf8(reason, 123);
        if self.write(Frame::close(code, reason.as_bytes())).await {
            self.awaiting_close_reply = true;
        }
        self.mark_closed(code);
    }

    fn mark_closed(&mut self, code: u16) {
        if self.closed.is_none() {
            self.closed = Some((code, Instant::now() + LINGER));
        }
    }

    /// Writes a frame; a failed write means the socket is gone. A write
    /// that blocks past the send timeout, or until the mailbox overflows, is
    /// abandoned (the frame may be half written) and the socket dropped.
    async fn write(&mut self, frame: Frame<'_>) -> bool {
        if self.closed.is_some() {
            return false;
        }
        // After an overflow only our close frame is written, if the socket takes it soon.
        let overflowed = self.backlog.is_overflowed();
        let limit = if overflowed {
            Some(CLOSE_WAIT)
        } else {
            self.shared.limits.send_timeout
        };
        let deadline = limit.map(|limit| Instant::now() + limit);
        let written = tokio::select! {
            biased;
            result = self.writer.write_frame(frame) => Some(result),
            _ = self.backlog.overflow(), if !overflowed => None,
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => None,
        };
        match written {
            Some(Ok(())) => true,
            Some(Err(error)) => {
                tracing::debug!(conn = self.opened.id, %error, "socket write failed");
                self.mark_closed(ABNORMAL);
                false
            }
            None => {
                if !overflowed {
                    self.shared.metrics.error("slow_reader");
                }
                tracing::info!(conn = self.opened.id, "client does not read: dropping the connection");
                self.awaiting_close_reply = false;
                self.mark_closed(POLICY_VIOLATION);
                false
            }
        }
    }

    /// Leaves every group and tells the workers the connection is gone.
    fn finish(self, code: u16) {
        let shared = &self.shared;
        shared.registry.close(self.opened.id);
        for group in &self.groups {
            shared.groups.discard(group, self.opened.id);
        }
        let message = ChannelMessage::new(
            self.opened.reply.clone(),
            self.next_seq,
            self.opened.path.clone(),
            self.opened.query.clone(),
            Event::Disconnect { code },
        );
        shared
            .outbound
            .send_detached(self.opened.stream.clone(), encode(&message));
        shared.metrics.connections_active.dec();
        tracing::debug!(conn = self.opened.id, code, "connection closed");
    }
}

async fn wait_appended(appended: &mut Option<oneshot::Receiver<bool>>) -> bool {
    match appended {
        Some(rx) => rx.await.unwrap_or(false),
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
