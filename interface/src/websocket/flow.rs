//! The per-connection message flow, without sockets or Redis: what to send to
//! the workers next, and when the connection is finished.
//!
//! Why a separate file: the order guarantee lives here — at most one client
//! message in flight, the next one released only when a reply's `done` covers
//! it, a repeated `done` ignored — and so do the endings (a closed socket
//! still hands its queued messages on; a drain sends `drain` after them and
//! closes with 1001 once the worker answered it), and so does the clock of a
//! stalled message (unanswered for `--redeliver-after`: look at its entry,
//! maybe send it again; still unanswered `--redis-hold` later: give up). Kept
//! free of I/O, each rule has a unit test below; `connection.rs` does the
//! reading, writing and waiting around it.

use std::collections::VecDeque;
use std::time::Duration;

use switchyard_protocol::Event;
use tokio::time::Instant;

/// Client messages read ahead of the one in flight; when full, the inbox is
/// not polled, the socket is not read and TCP pushes back on the client.
pub const MAX_PENDING: usize = 16;
/// How long a closed connection keeps handing its queued messages to workers.
pub const LINGER: Duration = Duration::from_secs(10);

/// What the connection task should do next.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Append this message (sequence number `seq`) to the channel stream.
    Release { seq: u64, event: Event },
    /// The worker answered the drain notice: close with 1001.
    CloseForDrain,
    /// The socket is closed and nothing is left to hand on: send the
    /// disconnect with this close code.
    Finish(u16),
    /// Nothing to do until a reply, a client message or a timer.
    Wait,
}

/// What a reply's `done` marker means for the flow.
#[derive(Debug, PartialEq)]
pub enum Done {
    /// A sequence number already done: a redelivered reply, to be ignored
    /// whole (its actions were applied the first time).
    Repeated,
    /// New progress; `released_after` is how long the message in flight took,
    /// when this reply finished it.
    Progress { released_after: Option<Duration> },
}

/// The message in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    /// When it left.
    since: Instant,
    /// When its stall clock started: when it left, or when it was last found
    /// still in hand.
    watched_from: Instant,
    /// When it was sent again after a stall.
    redelivered: Option<Instant>,
}

#[derive(Debug)]
pub struct Flow {
    /// Sequence number of the next message (1 was the connect).
    next_seq: u64,
    in_flight: Option<InFlight>,
    /// The highest sequence number a worker has finished.
    last_done: u64,
    /// Client messages waiting for the one in flight.
    pending: VecDeque<Event>,
    /// Set once the socket is closed (by either side): the close code, and
    /// until when queued messages are still handed to workers.
    closed: Option<(u16, Instant)>,
    /// When the interface drains: the deadline, and the drain notice's sequence
    /// number once it was released.
    drain: Option<(Instant, Option<u64>)>,
}

impl Default for Flow {
    fn default() -> Flow {
        Flow::new()
    }
}

impl Flow {
    /// A flow right after the connect (sequence number 1) was answered.
    pub fn new() -> Flow {
        Flow {
            next_seq: 2,
            in_flight: None,
            last_done: 1,
            pending: VecDeque::new(),
            closed: None,
            drain: None,
        }
    }

    /// The next thing to do, releasing a message when nothing is in flight.
    pub fn next_step(&mut self, now: Instant) -> Step {
        if self.in_flight.is_some() {
            return Step::Wait;
        }
        if let Some(event) = self.pending.pop_front() {
            return self.release(event, now);
        }
        if let Some((code, _)) = self.closed {
            return Step::Finish(code);
        }
        match self.drain {
            Some((_, None)) => {
                let step = self.release(Event::Drain, now);
                if let Step::Release { seq, .. } = &step {
                    self.drain = self.drain.map(|(deadline, _)| (deadline, Some(*seq)));
                }
                step
            }
            Some((_, Some(seq))) if self.last_done >= seq => Step::CloseForDrain,
            _ => Step::Wait,
        }
    }

    fn release(&mut self, event: Event, now: Instant) -> Step {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight = Some(InFlight {
            seq,
            since: now,
            watched_from: now,
            redelivered: None,
        });
        Step::Release { seq, event }
    }

    /// Whether to read the client: open, not draining, and room in the queue.
    pub fn reading(&self) -> bool {
        self.closed.is_none() && self.drain.is_none() && self.pending.len() < MAX_PENDING
    }

    /// Queues a client message behind the one in flight.
    pub fn push(&mut self, event: Event) {
        self.pending.push_back(event);
    }

    /// Classifies a reply's `done` marker before its actions are applied.
    pub fn is_repeated(&self, done: u64) -> bool {
        done <= self.last_done
    }

    /// Records a reply's `done` marker (after its actions were applied).
    pub fn done(&mut self, done: u64, now: Instant) -> Done {
        if self.is_repeated(done) {
            return Done::Repeated;
        }
        self.last_done = done;
        let released_after = match self.in_flight {
            Some(flight) if flight.seq <= done => {
                self.in_flight = None;
                Some(now.saturating_duration_since(flight.since))
            }
            _ => None,
        };
        Done::Progress { released_after }
    }

    /// When to look at the message in flight's entry: `after` its stall clock
    /// started, unless it was sent again already.
    pub fn stall_check_at(&self, after: Duration) -> Option<Instant> {
        self.in_flight
            .filter(|flight| flight.redelivered.is_none())
            .map(|flight| flight.watched_from + after)
    }

    /// A worker still has the message (or it is queued): check again later.
    pub fn still_in_hand(&mut self, now: Instant) {
        if let Some(flight) = &mut self.in_flight {
            flight.watched_from = now;
        }
    }

    /// The message was sent again (same sequence number).
    pub fn redelivered(&mut self, now: Instant) {
        if let Some(flight) = &mut self.in_flight {
            flight.redelivered = Some(now);
        }
    }

    /// When to give up on a message sent again and still unanswered.
    pub fn give_up_at(&self, hold: Duration) -> Option<Instant> {
        self.in_flight.and_then(|flight| flight.redelivered).map(|at| at + hold)
    }

    /// The message in flight could not be appended (Redis unreachable): it
    /// and the queue behind it are dropped; the connection is being closed.
    pub fn append_failed(&mut self) {
        self.in_flight = None;
        self.pending.clear();
    }

    /// The socket is closed with `code`; the first code wins. Queued messages
    /// are still handed on until `now + LINGER`.
    pub fn mark_closed(&mut self, code: u16, now: Instant) {
        if self.closed.is_none() {
            self.closed = Some((code, now + LINGER));
        }
    }

    /// The close code, once closed.
    pub fn closed(&self) -> Option<u16> {
        self.closed.map(|(code, _)| code)
    }

    /// Until when a closed connection still hands its queue on.
    pub fn linger_until(&self) -> Option<Instant> {
        self.closed.map(|(_, until)| until)
    }

    /// The interface drains: no more reading; after the queue, a drain notice.
    pub fn start_drain(&mut self, deadline: Instant) {
        if self.drain.is_none() {
            self.drain = Some((deadline, None));
        }
    }

    /// The drain deadline, once draining.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain.map(|(deadline, _)| deadline)
    }

    /// The drain deadline passed: what is still queued is given up.
    pub fn abandon_queue(&mut self) {
        self.pending.clear();
    }

    /// The sequence number the disconnect message carries.
    pub fn disconnect_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_protocol::close::{GOING_AWAY, NORMAL};
    use switchyard_protocol::Payload;

    fn text(s: &str) -> Event {
        Event::Receive(Payload::text(s))
    }

    fn released(step: Step) -> (u64, Event) {
        match step {
            Step::Release { seq, event } => (seq, event),
            other => panic!("expected a release, got {other:?}"),
        }
    }

    #[test]
    fn one_message_in_flight_the_next_released_by_its_done() {
        let now = Instant::now();
        let mut flow = Flow::new();
        flow.push(text("a"));
        flow.push(text("b"));
        assert_eq!(released(flow.next_step(now)), (2, text("a")));
        assert_eq!(flow.next_step(now), Step::Wait, "b waits for a's done");
        // A reply without progress for the message in flight does not release b.
        assert_eq!(flow.done(1, now), Done::Repeated);
        assert_eq!(flow.next_step(now), Step::Wait);
        let later = now + Duration::from_millis(5);
        assert_eq!(
            flow.done(2, later),
            Done::Progress {
                released_after: Some(Duration::from_millis(5))
            }
        );
        assert_eq!(released(flow.next_step(later)), (3, text("b")));
    }

    #[test]
    fn a_repeated_done_is_ignored() {
        let now = Instant::now();
        let mut flow = Flow::new();
        flow.push(text("a"));
        released(flow.next_step(now));
        assert!(!flow.is_repeated(2));
        assert!(matches!(flow.done(2, now), Done::Progress { .. }));
        assert!(flow.is_repeated(2), "the same done again is a redelivery");
        assert_eq!(flow.done(2, now), Done::Repeated);
        assert!(flow.is_repeated(1));
    }

    #[test]
    fn a_done_ahead_of_the_one_in_flight_also_finishes_it() {
        // Messages handled by a worker that took over count as done too.
        let now = Instant::now();
        let mut flow = Flow::new();
        flow.push(text("a"));
        released(flow.next_step(now));
        assert!(matches!(
            flow.done(5, now),
            Done::Progress {
                released_after: Some(_)
            }
        ));
        assert!(flow.is_repeated(4));
    }

    #[test]
    fn a_full_queue_stops_reading() {
        let mut flow = Flow::new();
        for n in 0..MAX_PENDING {
            assert!(flow.reading(), "room for message {n}");
            flow.push(text("x"));
        }
        assert!(!flow.reading());
        released(flow.next_step(Instant::now()));
        assert!(flow.reading(), "one message left the queue");
    }

    #[test]
    fn a_closed_connection_hands_its_queue_on_then_finishes() {
        let now = Instant::now();
        let mut flow = Flow::new();
        flow.push(text("a"));
        flow.push(text("b"));
        flow.mark_closed(NORMAL, now);
        flow.mark_closed(GOING_AWAY, now);
        assert_eq!(flow.closed(), Some(NORMAL), "the first close code wins");
        assert_eq!(flow.linger_until(), Some(now + LINGER));
        assert!(!flow.reading());
        let (seq, _) = released(flow.next_step(now));
        flow.done(seq, now);
        let (seq, _) = released(flow.next_step(now));
        assert_eq!(flow.next_step(now), Step::Wait, "b still in flight");
        flow.done(seq, now);
        assert_eq!(flow.next_step(now), Step::Finish(NORMAL));
        assert_eq!(flow.disconnect_seq(), 4, "the disconnect follows b (3)");
    }

    #[test]
    fn a_drain_sends_the_notice_after_the_queue_and_closes_when_answered() {
        let now = Instant::now();
        let mut flow = Flow::new();
        flow.push(text("a"));
        flow.start_drain(now + Duration::from_secs(30));
        assert!(!flow.reading(), "a draining connection is not read");
        assert_eq!(flow.drain_deadline(), Some(now + Duration::from_secs(30)));
        let (seq, event) = released(flow.next_step(now));
        assert_eq!(event, text("a"), "queued messages go first");
        flow.done(seq, now);
        let (drain_seq, event) = released(flow.next_step(now));
        assert_eq!(event, Event::Drain);
        assert_eq!(flow.next_step(now), Step::Wait);
        flow.done(drain_seq, now);
        assert_eq!(flow.next_step(now), Step::CloseForDrain);
    }

    #[test]
    fn a_failed_append_drops_the_message_and_the_queue() {
        let now = Instant::now();
        let mut flow = Flow::new();
        flow.push(text("a"));
        flow.push(text("b"));
        released(flow.next_step(now));
        flow.append_failed();
        flow.mark_closed(1013, now);
        assert_eq!(flow.next_step(now), Step::Finish(1013));
    }

    #[test]
    fn a_stalled_message_is_looked_at_then_sent_again_then_given_up() {
        let now = Instant::now();
        let after = Duration::from_secs(30);
        let hold = Duration::from_secs(30);
        let mut flow = Flow::new();
        assert_eq!(flow.stall_check_at(after), None, "nothing in flight");
        flow.push(text("a"));
        let (seq, _) = released(flow.next_step(now));
        assert_eq!(flow.stall_check_at(after), Some(now + after));
        assert_eq!(flow.give_up_at(hold), None);
        // A slow worker still has it: the clock starts again.
        let later = now + after;
        flow.still_in_hand(later);
        assert_eq!(flow.stall_check_at(after), Some(later + after));
        // Lost: sent again; no more checks, a deadline instead.
        let again = later + after;
        flow.redelivered(again);
        assert_eq!(flow.stall_check_at(after), None);
        assert_eq!(flow.give_up_at(hold), Some(again + hold));
        // Answered after all: the next message has a fresh clock.
        flow.push(text("b"));
        flow.done(seq, again);
        released(flow.next_step(again));
        assert_eq!(flow.give_up_at(hold), None);
        assert_eq!(flow.stall_check_at(after), Some(again + after));
        assert!(matches!(
            flow.done(seq + 1, again + Duration::from_secs(1)),
            Done::Progress { released_after: Some(took) } if took == Duration::from_secs(1)
        ));
    }

    #[test]
    fn an_abandoned_queue_is_not_sent() {
        let now = Instant::now();
        let mut flow = Flow::new();
        flow.push(text("a"));
        flow.start_drain(now);
        flow.abandon_queue();
        flow.mark_closed(GOING_AWAY, now);
        assert_eq!(flow.next_step(now), Step::Finish(GOING_AWAY));
    }
}
