//! Who is connected: connection ids → the mailbox of their task.
//!
//! The reply reader and the group fan-out only know connection ids; this map
//! turns an id into the channel that wakes the connection's task. Each
//! connection task owns its socket; nobody else writes to it. An HTTP request
//! routed to workers is a connection too, for as long as it waits on them.
//!
//! A WebSocket's mailbox is bounded by a [`Backlog`]: a client that stops
//! reading blocks its task in a socket write, and without a bound every reply
//! and broadcast for it would pile up here. Delivery never waits: past the
//! bound an event is refused and the task is told to close the connection
//! (a group broadcast must not stall on one slow member). The bound is a
//! counter beside an unbounded channel rather than a bounded channel, so an
//! idle connection costs no more than before (a few words, no semaphore).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use switchyard_protocol::{GroupMessage, Reply};
use tokio::sync::{mpsc, Notify};

/// Something for a connection's task to apply to its socket.
///
/// Kept to two words: tokio's channels allocate their slots 32 at a time, so
/// every idle connection's mailbox costs 32 × this size (a `Reply` inline
/// made that 1.8 KiB instead of 0.5 KiB).
#[derive(Debug)]
pub enum ConnEvent {
    Reply(Box<Reply>),
    Group(Arc<GroupMessage>),
    /// The mailbox refused an event ([`Backlog`]): sent once, past the bound, so that the
    /// connection's task wakes and finds [`Backlog::is_overflowed`]. A wait of its own for
    /// the overflow, made anew each round, took a lock twice a message.
    Overflowed,
}

/// The sending side of a connection's mailbox.
struct Mailbox {
    sender: mpsc::UnboundedSender<ConnEvent>,
    /// WebSockets only; HTTP requests are bounded by their own timeout.
    backlog: Option<Arc<Backlog>>,
}

impl Mailbox {
    fn send(&self, event: ConnEvent) -> bool {
        if let Some(backlog) = &self.backlog {
            match backlog.admit() {
                Admission::Admitted => {}
                Admission::Overflowed => {
                    let _ = self.sender.send(ConnEvent::Overflowed);
                    return false;
                }
                Admission::Refused => return false,
            }
        }
        self.sender.send(event).is_ok()
    }
}

/// What [`Backlog::admit`] says of one more event.
enum Admission {
    Admitted,
    /// Refused, and the first refused: the mailbox overflowed now.
    Overflowed,
    /// Refused: it overflowed before.
    Refused,
}

/// How many events wait in one connection's mailbox, and whether it overflowed.
pub struct Backlog {
    /// Largest number of waiting events; 0: unbounded.
    limit: usize,
    queued: AtomicUsize,
    overflowed: AtomicBool,
    wake: Notify,
}

impl Backlog {
    pub fn new(limit: usize) -> Backlog {
        Backlog {
            limit,
            queued: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Takes a slot for one more event; refused (for good) once the limit was hit.
    fn admit(&self) -> Admission {
        if self.overflowed.load(Ordering::Acquire) {
            return Admission::Refused;
        }
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        if self.limit == 0 || before < self.limit {
            return Admission::Admitted;
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
        if self.overflowed.swap(true, Ordering::AcqRel) {
            return Admission::Refused;
        }
        // A write blocked on a client that does not read waits for this.
        self.wake.notify_one();
        Admission::Overflowed
    }

    fn taken(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Resolves once an event was refused; cancel-safe.
    pub async fn overflow(&self) {
        loop {
            let woken = self.wake.notified();
            if self.is_overflowed() {
                return;
            }
            woken.await;
        }
    }
}

/// The receiving side of a WebSocket's mailbox.
pub struct Events {
    receiver: mpsc::UnboundedReceiver<ConnEvent>,
    backlog: Arc<Backlog>,
}

impl Events {
    /// The next event; cancel-safe like the channel's `recv`.
    pub async fn recv(&mut self) -> Option<ConnEvent> {
        let event = self.receiver.recv().await?;
        if !matches!(event, ConnEvent::Overflowed) {
            self.backlog.taken();
        }
        Some(event)
    }

    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }
}

/// Live connections of this interface.
pub struct Registry {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Mailbox>>,
}

impl Default for Registry {
    /// Connection ids start at the current time in microseconds, not at 1: an
    /// interface restarted under the same `--id` (after `kill -9`, or when a
    /// drain ran out of time) must not reuse an id whose replies or sequence
    /// record are still in Redis — a new connection would get an old one's
    /// late replies, or have its messages taken for repeats. Ids stay below
    /// 2^53, so they survive JSON and JavaScript numbers.
    fn default() -> Self {
        Registry {
            next_id: AtomicU64::new(switchyard_protocol::time::now_us()),
            connections: Mutex::default(),
        }
    }
}

impl Registry {
    /// Registers a new WebSocket whose mailbox holds at most `max_queued`
    /// events (0: unbounded); returns its id and mailbox.
    pub fn open(&self, max_queued: usize) -> (u64, Events) {
        let id = self.next_id();
        let (sender, receiver) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::new(max_queued));
        let mailbox = Mailbox {
            sender,
            backlog: Some(backlog.clone()),
        };
        self.lock().insert(id, mailbox);
        (id, Events { receiver, backlog })
    }

    /// A fresh id (HTTP requests get one each, whether or not they reach a worker).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a connection under an id from [`Registry::next_id`].
    pub fn register(&self, id: u64) -> mpsc::UnboundedReceiver<ConnEvent> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().insert(id, Mailbox { sender, backlog: None });
        receiver
    }

    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Delivers an event; `false` when the connection is gone or its mailbox is full.
    pub fn deliver(&self, id: u64, event: ConnEvent) -> bool {
        match self.lock().get(&id) {
            Some(mailbox) => mailbox.send(event),
            None => false,
        }
    }

    /// Delivers one broadcast to many connections under one lock; never waits.
    pub fn deliver_all(&self, ids: &[u64], message: &Arc<GroupMessage>) -> usize {
        let connections = self.lock();
        ids.iter()
            .filter_map(|id| connections.get(id))
            .filter(|mailbox| mailbox.send(ConnEvent::Group(message.clone())))
            .count()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Mailbox>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_slots_stay_small() {
        assert!(std::mem::size_of::<ConnEvent>() <= 16);
    }

    fn group_message() -> Arc<GroupMessage> {
        Arc::new(GroupMessage::new(
            "g".into(),
            1,
            switchyard_protocol::Payload::text("x"),
        ))
    }

    #[tokio::test]
    async fn a_full_mailbox_refuses_and_overflows_for_good() {
        let registry = Registry::default();
        let (id, mut events) = registry.open(2);
        let message = group_message();
        assert_eq!(registry.deliver_all(&[id], &message), 1);
        assert_eq!(registry.deliver_all(&[id], &message), 1);
        assert!(!events.backlog().is_overflowed());
        assert_eq!(registry.deliver_all(&[id], &message), 0);
        assert!(events.backlog().is_overflowed());
        // Already signalled: resolves at once.
        events.backlog().overflow().await;
        // Reading makes room, but an overflowed connection stays refused.
        assert!(events.recv().await.is_some());
        assert!(!registry.deliver(id, ConnEvent::Group(message)));
    }

    #[test]
    fn an_overflow_wakes_the_connection_once() {
        let registry = Registry::default();
        let (id, mut events) = registry.open(1);
        let message = group_message();
        assert!(registry.deliver(id, ConnEvent::Group(message.clone())));
        for _ in 0..3 {
            assert!(!registry.deliver(id, ConnEvent::Group(message.clone())));
        }
        // The admitted event, then one wake-up however many were refused, then nothing.
        assert!(matches!(events.receiver.try_recv(), Ok(ConnEvent::Group(_))));
        assert!(matches!(events.receiver.try_recv(), Ok(ConnEvent::Overflowed)));
        assert!(events.receiver.try_recv().is_err());
        assert!(events.backlog().is_overflowed());
    }

    #[tokio::test]
    async fn reading_makes_room() {
        let registry = Registry::default();
        let (id, mut events) = registry.open(1);
        let message = group_message();
        for _ in 0..10 {
            assert!(registry.deliver(id, ConnEvent::Group(message.clone())));
            assert!(events.recv().await.is_some());
        }
        assert!(!events.backlog().is_overflowed());
    }

    #[test]
    fn zero_is_unbounded() {
        let registry = Registry::default();
        let (id, events) = registry.open(0);
        let message = group_message();
        for _ in 0..5000 {
            assert!(registry.deliver(id, ConnEvent::Group(message.clone())));
        }
        assert!(!events.backlog().is_overflowed());
    }
}
