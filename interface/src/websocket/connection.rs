//! The connection task: one per WebSocket, owner of its write half.
//!
//! It keeps the per-connection order guarantee with [`Flow`] (`flow.rs`, the
//! rules without I/O): at most one client message in flight, the next one
//! released only when a reply carries the `done` marker for it, a repeated
//! reply ignored, so redelivery can never apply twice here.
//!
//! It also runs the connection's endings: a client close, a worker's close
//! action, a broken socket, or the interface's drain (drain notice → worker's
//! goodbye → close 1001). Messages the client sent before closing still reach
//! the workers, in order; only then is the disconnect sent.
//!
//! A message nobody will answer (Redis lost it) does not silence the
//! connection: after `--redeliver-after` it looks at the entry
//! (`bus/stalls.rs`) and sends it again if it was lost, and after
//! `--redis-hold` more it closes with 1013. A new message for a channel whose
//! backlog is full (`bus/backlog.rs`) closes the connection with 1013 too.
//!
//! And it enforces the per-connection limits (`limits.rs`, `docs/limits.md`):
//! it pings, closes a client not heard from for the idle timeout (1001), one
//! over its message rate (1008), and one that does not read (1008): its
//! mailbox overflowed or a write stayed blocked for the send timeout. A write
//! is abandoned half-way in that case, so the socket is dropped without a
//! close frame; a connection blocked in a write must not block its task for
//! good, or its mailbox could never be drained.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{CloseCode, Frame, OpCode, Payload as FramePayload};
use switchyard_cli::seconds;
use switchyard_protocol::close::{
    ABNORMAL, GOING_AWAY, INVALID_DATA, NORMAL, NO_STATUS, POLICY_VIOLATION, TOO_BIG, TRY_AGAIN_LATER,
};
use switchyard_protocol::groups::Position;
use switchyard_protocol::stream::EntryId;
use switchyard_protocol::{encode, Action, ChannelMessageRef, Event, Payload};
use tokio::time::{sleep_until, Instant};

use super::flow::{Done, Flow, Step};
use super::frames::{Inbound, Inbox};
use super::rate::TokenBucket;
use super::writer::FrameWriter;
use crate::bus::outbound::Appended;
use crate::bus::recovery::Join;
use crate::bus::registry::{Backlog, ConnEvent, Events};
use crate::bus::stalls::{self, EntryState};
use crate::state::Shared;

/// How long to wait for the client's answer to our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long a stall check may take before it is tried again later.
const STALL_LOOKUP: Duration = Duration::from_secs(5);

/// Everything the handshake learned, handed to the connection task.
pub struct Opened {
    pub id: u64,
    /// The channel its route leads to.
    pub channel: Arc<str>,
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
    writer: FrameWriter,
    /// Order, queue and endings: what to send next.
    flow: Flow,
    /// Whether Redis has the message in flight yet.
    appended: Option<Appended>,
    /// The message in flight as appended, and its entry id once Redis has it:
    /// what a stall check looks up and a redelivery appends again.
    in_flight: Option<(Bytes, Option<EntryId>)>,
    groups: HashSet<String>,
    /// We sent the first close frame and owe the client a moment to answer.
    awaiting_close_reply: bool,
    /// The fill level of our mailbox; says when a client reads too slowly.
    backlog: Arc<Backlog>,
    /// The message rate limit, when there is one.
    rate: Option<TokenBucket>,
}

/// The deadlines of one round of the connection loop; one timer waits for
/// the earliest.
#[derive(Clone, Copy)]
struct Alarms {
    /// No close frame sent or received yet.
    open: bool,
    /// Draining: the drain's deadline (close with 1001) is set.
    draining: bool,
    /// The drain's deadline (while open).
    drain: Option<Instant>,
    /// A closed connection's last wait for answers to what it sent.
    linger: Option<Instant>,
    /// Look at the entry of the message in flight (`--redeliver-after`).
    stall: Option<Instant>,
    /// Give up on a message sent again (`--redis-hold`).
    give_up: Option<Instant>,
    /// Nothing heard from the client (while reading and open).
    idle: Option<Instant>,
    /// The next ping (while open).
    ping: Option<Instant>,
}

impl Alarms {
    fn earliest(&self) -> Option<Instant> {
        [self.drain, self.linger, self.stall, self.give_up, self.idle, self.ping]
            .into_iter()
            .flatten()
            .min()
    }
}

impl Connection {
    pub fn new(shared: Arc<Shared>, opened: Opened, writer: FrameWriter, backlog: Arc<Backlog>) -> Connection {
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
            flow: Flow::new(),
            appended: None,
            in_flight: None,
            groups: HashSet::new(),
            awaiting_close_reply: false,
        }
    }

    /// Runs the connection to its end, then tells the workers it is gone.
    /// `held` is kept until then (the route count, the admission slot, the
    /// shutdown guard).
    ///
    /// Not an `async fn`: an async fn keeps its arguments twice in its state,
    /// as passed and as moved into its body (here 700 bytes per connection,
    /// `-Zprint-type-sizes`); the block captures them once. For the same
    /// reason what happens once or rarely (the accept's actions, a close's
    /// write, an alarm) is boxed: whatever the task awaits inline is part of its state,
    /// idle or not.
    #[expect(clippy::manual_async_fn, reason = "an async fn would keep its arguments twice")]
    pub fn run<H: Send + 'static>(
        mut self,
        mut inbound: Inbox,
        mut events: Events,
        held: H,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            self.shared.metrics.connections_active.inc();
            let actions = std::mem::take(&mut self.opened.actions);
            Box::pin(self.apply_actions(actions)).await;
            let code = self.serve(&mut inbound, &mut events).await;
            if self.awaiting_close_reply {
                let drain = async { while inbound.recv().await.is_some() {} };
                let _ = Box::pin(tokio::time::timeout(CLOSE_WAIT, drain)).await;
            }
            self.finish(code);
            drop(held);
        }
    }

    async fn serve(&mut self, inbound: &mut Inbox, events: &mut Events) -> u16 {
        let mut shutdown = self.shared.shutdown.clone();
        let ping_interval = self.shared.limits.ping_interval;
        let mut next_ping = ping_interval.map(|interval| Instant::now() + interval);
        // While the inbox is not polled nothing can be heard; the idle clock
        // starts again when reading resumes.
        let mut was_reading = true;
        let mut resumed = Instant::now();
        // One timer for every deadline, moved rather than made anew each round.
        let alarm = sleep_until(far_future());
        tokio::pin!(alarm);
        loop {
            match self.flow.next_step(Instant::now()) {
                Step::Release { seq, event } => self.release(seq, event),
                Step::Finish(code) => return code,
                Step::CloseForDrain => {
                    self.close(GOING_AWAY, "server shutting down").await;
                    continue;
                }
                Step::Wait => {}
            }
            let reading = self.flow.reading();
            if reading && !was_reading {
                resumed = Instant::now();
            }
            was_reading = reading;
            let alarms = self.alarms(inbound, reading, resumed, next_ping);
            let wake_at = alarms.earliest();
            if let Some(at) = wake_at {
                if alarm.deadline() != at {
                    alarm.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                // An overflow wakes this task with `ConnEvent::Overflowed` and is read from its
                // flag: a wait for it made anew each round (twice a message) joined and left
                // its waiters' list under a lock (2–4% of the interface's samples under load).
                _ = std::future::ready(()), if alarms.open && self.backlog.is_overflowed() => {
                    self.shared.metrics.error("slow_reader");
                    tracing::info!(conn = self.opened.id, "client does not read: its send queue is full");
                    self.close(POLICY_VIOLATION, "send queue full").await;
                }
                _ = &mut alarm, if wake_at.is_some() => {
                    let rung = Box::pin(self.on_alarm(alarms, inbound, &mut next_ping)).await;
                    if let Some(code) = rung {
                        return code;
                    }
                }
                appended = wait_appended(&mut self.appended), if self.appended.is_some() => {
                    self.appended = None;
                    if let (Some(id), Some((_, entry))) = (&appended, &mut self.in_flight) {
                        *entry = Some(*id);
                    }
                    if appended.is_none() {
                        self.shared.metrics.error("redis_unavailable");
                        self.close(TRY_AGAIN_LATER, "message could not be queued").await;
                        self.flow.append_failed();
                    }
                }
                event = events.recv() => match event {
                    Some(event) => self.apply_event(event).await,
                    None => return ABNORMAL,
                },
                deadline = shutdown.draining(), if !alarms.draining => {
                    self.flow.start_drain(deadline);
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

    /// Every deadline the connection is waiting for now.
    fn alarms(&self, inbound: &Inbox, reading: bool, resumed: Instant, next_ping: Option<Instant>) -> Alarms {
        let open = self.flow.closed().is_none();
        let limits = &self.shared.limits;
        let config = &self.shared.config;
        Alarms {
            open,
            draining: self.flow.drain_deadline().is_some(),
            drain: self.flow.drain_deadline().filter(|_| open),
            linger: self.flow.linger_until(),
            stall: seconds::off_if_zero(config.redeliver_after)
                .and_then(|after| self.flow.stall_check_at(after))
                .filter(|_| self.appended.is_none()),
            give_up: self.flow.give_up_at(config.redis_hold),
            idle: limits
                .idle_timeout
                .filter(|_| reading && open)
                .map(|timeout| inbound.last_heard().max(resumed) + timeout),
            ping: next_ping.filter(|_| open),
        }
    }

    /// The alarm rang: the first deadline due, in the order below. `Some` ends
    /// the connection with that code.
    async fn on_alarm(&mut self, alarms: Alarms, inbound: &mut Inbox, next_ping: &mut Option<Instant>) -> Option<u16> {
        let now = Instant::now();
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        if due(alarms.drain) {
            self.close(GOING_AWAY, "server shutting down").await;
            self.flow.abandon_queue();
            return Some(GOING_AWAY);
        }
        if due(alarms.linger) {
            tracing::warn!(
                conn = self.opened.id,
                "closed connection still had unanswered messages; sending disconnect anyway"
            );
            return Some(self.flow.closed().unwrap_or(ABNORMAL));
        }
        if due(alarms.stall) {
            self.check_stall().await;
        } else if due(alarms.give_up) {
            self.shared.metrics.stalled("closed");
            tracing::warn!(conn = self.opened.id, "message sent again is still unanswered: closing");
            self.close(TRY_AGAIN_LATER, "message unanswered; try again later").await;
            self.flow.append_failed();
        } else if due(alarms.idle) {
            // A busy mailbox may have kept the inbox from being polled: look once more.
            if let Ok(item) = tokio::time::timeout(Duration::ZERO, inbound.recv()).await {
                match item {
                    Some(item) => self.on_inbound(item).await,
                    None => self.mark_closed(ABNORMAL),
                }
                return None;
            }
            let limits = &self.shared.limits;
            if limits
                .idle_timeout
                .is_some_and(|timeout| inbound.last_heard() + timeout > now)
            {
                return None;
            }
            self.shared.metrics.error("idle_timeout");
            tracing::info!(conn = self.opened.id, "nothing heard from the client: closing");
            self.close(GOING_AWAY, "idle timeout").await;
        } else if due(alarms.ping) {
            *next_ping = self.shared.limits.ping_interval.map(|interval| now + interval);
            if self
                .write(Frame::new(true, OpCode::Ping, None, FramePayload::Borrowed(&[])))
                .await
            {
                self.shared.metrics.pings_sent.inc();
            }
        }
        None
    }

    /// Sends message number `seq` to the channel.
    fn release(&mut self, seq: u64, event: Event) {
        if matches!(event, Event::Receive(_)) {
            self.shared.metrics.message("in");
        }
        let opened = &self.opened;
        let message = ChannelMessageRef::new(&opened.reply, seq, &opened.path, &opened.query, &event);
        let payload = Bytes::from(encode(&message));
        self.appended = Some(self.shared.outbound.send(self.opened.stream.clone(), payload.clone()));
        self.in_flight = Some((payload, None));
    }

    /// The message in flight waited `--redeliver-after`: sent again if its
    /// entry was lost, left alone if a worker has it or it is queued.
    async fn check_stall(&mut self) {
        let now = Instant::now();
        let Some((payload, Some(entry))) = &self.in_flight else {
            self.flow.still_in_hand(now);
            return;
        };
        let shared = &self.shared;
        let lookup = stalls::entry_state(&shared.redis, &shared.keys, &self.opened.stream, *entry);
        match tokio::time::timeout(STALL_LOOKUP, lookup).await {
            Ok(Ok(EntryState::Lost)) => {
                shared.metrics.stalled("redelivered");
                tracing::warn!(conn = self.opened.id, entry = %entry, "message unanswered and its entry lost: sending it again");
                self.appended = Some(shared.outbound.send(self.opened.stream.clone(), payload.clone()));
                self.flow.redelivered(now);
            }
            Ok(Ok(EntryState::Waiting)) => self.flow.still_in_hand(now),
            Ok(Err(error)) => {
                tracing::debug!(conn = self.opened.id, %error, "cannot look at a stalled message's entry; later");
                self.flow.still_in_hand(now);
            }
            Err(_) => self.flow.still_in_hand(now),
        }
    }

    async fn on_inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Message(payload) => {
                if self.shared.backlogs.is_full(&self.opened.channel) {
                    self.shared.metrics.backlog_refused(&self.opened.channel, "message");
                    tracing::info!(conn = self.opened.id, channel = %self.opened.channel, "channel backlog full: closing");
                    self.close(TRY_AGAIN_LATER, "channel backlog full; try again later")
                        .await;
                    return;
                }
                let now = Instant::now();
                if self.rate.as_mut().is_some_and(|bucket| !bucket.take(now)) {
                    self.shared.metrics.error("rate_limited");
                    tracing::info!(conn = self.opened.id, "client over its message rate: closing");
                    self.close(POLICY_VIOLATION, "message rate exceeded").await;
                    return;
                }
                self.flow.push(Event::Receive(payload));
            }
            Inbound::Ping(data) => {
                let _ = self.write(Frame::pong(FramePayload::Owned(data))).await;
            }
            Inbound::Close { code, .. } => {
                // Answer with the same code (none when the client gave none).
                let echo = if code == NO_STATUS {
                    Frame::close_raw(FramePayload::Owned(Vec::new()))
                } else {
                    Frame::close(code, b"")
                };
                let _ = self.write(echo).await;
                self.mark_closed(code);
            }
            Inbound::Fail { code, reason } => {
                self.shared.metrics.error(match code {
                    INVALID_DATA => "invalid_utf8",
                    TOO_BIG => "message_too_big",
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
                if reply.done.is_some_and(|done| self.flow.is_repeated(done)) {
                    tracing::debug!(conn = self.opened.id, done = reply.done, "repeated reply ignored");
                    return;
                }
                self.apply_actions(reply.actions).await;
                if let Some(done) = reply.done {
                    if let Done::Progress {
                        released_after: Some(took),
                    } = self.flow.done(done, Instant::now())
                    {
                        self.shared.metrics.message_duration.observe(took.as_secs_f64());
                    }
                }
            }
            ConnEvent::Group(message) => {
                self.send_payload(&message.payload).await;
            }
            // Its work is done: it woke the task, and `serve` reads the flag first.
            ConnEvent::Overflowed => {}
        }
    }

    async fn apply_actions(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Accept { .. } => {}
                Action::Send(payload) => self.send_payload(&payload).await,
                Action::Close { code, reason } => {
                    let code = if CloseCode::from(code).is_allowed() && code != NO_STATUS {
                        code
                    } else {
                        NORMAL
                    };
                    self.close(code, &reason).await;
                }
                Action::GroupAdd {
                    group,
                    since,
                    epoch,
                    plain,
                } => {
                    let since = since.map(|seq| Join {
                        since: Position::new(epoch.unwrap_or_default(), seq),
                        plain,
                    });
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
        if self.flow.closed().is_some() {
            return;
        }
        let frame = match (&payload.text, &payload.bytes) {
            (Some(text), _) => Frame::text(FramePayload::Borrowed(text.as_bytes())),
            (None, Some(bytes)) => Frame::binary(FramePayload::Borrowed(bytes)),
            (None, None) => return,
        };
        if self.write(frame).await {
            self.shared.metrics.message("out");
        }
    }

    /// Sends our close frame (once) and stops reading.
    async fn close(&mut self, code: u16, reason: &str) {
        if self.flow.closed().is_some() {
            return;
        }
        let reason = truncate_utf8(reason, 123);
        // Boxed: a close happens once, its write need not be part of every
        // caller's state.
        if Box::pin(self.write(Frame::close(code, reason.as_bytes()))).await {
            self.awaiting_close_reply = true;
        }
        self.mark_closed(code);
    }

    fn mark_closed(&mut self, code: u16) {
        self.flow.mark_closed(code, Instant::now());
    }

    /// Writes a frame; a failed write means the socket is gone. A write
    /// that blocks past the send timeout, or until the mailbox overflows, is
    /// abandoned (the frame may be half written) and the socket dropped.
    async fn write(&mut self, frame: Frame<'_>) -> bool {
        if self.flow.closed().is_some() {
            return false;
        }
        // After an overflow only our close frame is written, if the socket takes it soon.
        let overflowed = self.backlog.is_overflowed();
        let limit = if overflowed {
            Some(CLOSE_WAIT)
        } else {
            self.shared.limits.send_timeout
        };
        let written = {
            let mut write = std::pin::pin!(self.writer.write(frame));
            // Most writes finish at once (the socket has room): no timer for them.
            match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                Poll::Ready(result) => Some(result),
                Poll::Pending => {
                    let deadline = limit.map(|limit| Instant::now() + limit);
                    let blocked = async {
                        tokio::select! {
                            biased;
                            result = &mut write => Some(result),
                            _ = self.backlog.overflow(), if !overflowed => None,
                            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => None,
                        }
                    };
                    Box::pin(blocked).await
                }
            }
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
        let opened = &self.opened;
        let gone = Event::Disconnect { code };
        let message = ChannelMessageRef::new(
            &opened.reply,
            self.flow.disconnect_seq(),
            &opened.path,
            &opened.query,
            &gone,
        );
        shared
            .outbound
            .send_detached(self.opened.stream.clone(), encode(&message));
        shared.metrics.connections_active.dec();
        tracing::debug!(conn = self.opened.id, code, "connection closed");
    }
}

async fn wait_appended(appended: &mut Option<Appended>) -> Option<EntryId> {
    match appended {
        Some(rx) => rx.await.ok().flatten(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every idle connection carries its task's whole state: 3,096 bytes
    /// before the arguments stopped being kept twice and the rare awaits were
    /// boxed, 1,784 after (release build; `docs/benchmarks.md`, idle
    /// connections). This fails when the task grows back.
    #[test]
    fn a_connection_task_stays_small() {
        let size = returned_size::<Connection, Inbox, Events, (), _>(Connection::run::<()>);
        eprintln!("connection task: {size} bytes");
        assert!(
            size <= 2_048,
            "the connection task is {size} bytes; an idle connection pays for all of it"
        );
    }
}
