//! Who is connected: connection ids → the mailbox of their task.
//!
//! The reply reader and the group fan-out only know connection ids; this map
//! turns an id into the channel that wakes the connection's task. Each
//! connection task owns its socket; nobody else writes to it. An HTTP request
//! routed to workers is a connection too, for as long as it waits on them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use switchyard_protocol::{GroupMessage, Reply};
use tokio::sync::mpsc;

/// Something for a connection's task to apply to its socket.
///
/// Kept to two words: tokio's channels allocate their slots 32 at a time, so
/// every idle connection's mailbox costs 32 × this size (a `Reply` inline
/// made that 1.8 KiB instead of 0.5 KiB).
#[derive(Debug)]
pub enum ConnEvent {
    Reply(Box<Reply>),
    Group(Arc<GroupMessage>),
}

pub type Mailbox = mpsc::UnboundedSender<ConnEvent>;

/// Live connections of this interface.
#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Mailbox>>,
}

impl Registry {
    /// Registers a new connection and returns its id and mailbox.
    pub fn open(&self) -> (u64, mpsc::UnboundedReceiver<ConnEvent>) {
        let id = self.next_id();
        (id, self.register(id))
    }

    /// A fresh id (HTTP requests get one each, whether or not they reach a worker).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a connection under an id from [`Registry::next_id`].
    pub fn register(&self, id: u64) -> mpsc::UnboundedReceiver<ConnEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(id, tx);
        rx
    }

    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Delivers an event; `false` when the connection is gone.
    pub fn deliver(&self, id: u64, event: ConnEvent) -> bool {
        match self.lock().get(&id) {
            Some(mailbox) => mailbox.send(event).is_ok(),
            None => false,
        }
    }

    /// Delivers one broadcast to many connections under one lock.
    pub fn deliver_all(&self, ids: &[u64], message: &Arc<GroupMessage>) -> usize {
        let connections = self.lock();
        ids.iter()
            .filter_map(|id| connections.get(id))
            .filter(|mailbox| mailbox.send(ConnEvent::Group(message.clone())).is_ok())
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
}
