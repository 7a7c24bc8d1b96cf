//! Packed entries: one stream entry, several messages.
//!
//! An interface writes every message of one flush bound for a shard as one entry, an `m`
//! field each (docs/protocol.md, "Packed entries"), so Redis runs one `XADD`, one read and
//! one `XACK` per entry instead of per message. Each message is still handled on its own
//! task, as if it were an entry. What they share is the acknowledgement: an entry may be
//! acknowledged only when every message in it is finished, or a worker dying midway would
//! lose the rest. [`split`] makes the messages; [`Part::finish`] says when the last one is
//! done. An entry with a single `m` (every entry at a low rate, and garbage) is handled
//! exactly as before packing: its commit acknowledges it.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use switchyard_protocol::stream::StreamEntry;
use switchyard_protocol::PAYLOAD_FIELD;

/// One message as read: an entry of its own, or one `m` of a packed entry (then `entry`
/// holds that field only, under the entry's id).
pub struct Incoming {
    pub entry: StreamEntry,
    pub part: Option<Part>,
}

impl Incoming {
    /// The message's name: `ID`, or `ID#N` for the message at index `N` of a packed entry.
    pub fn name(&self) -> Cow<'_, str> {
        match &self.part {
            None => Cow::Borrowed(&self.entry.id),
            Some(part) => Cow::Owned(format!("{}#{}", self.entry.id, part.index)),
        }
    }

    /// The index in its entry (0 for an entry of its own).
    pub fn index(&self) -> usize {
        self.part.as_ref().map_or(0, |part| part.index)
    }
}

/// A message of a packed entry: its index and what its entry's messages share.
#[derive(Clone)]
pub struct Part {
    pub index: usize,
    finished: Arc<Mutex<Finished>>,
}

/// Which messages of a packed entry are finished, and how many are not.
struct Finished {
    flags: Vec<bool>,
    left: usize,
}

impl Part {
    /// Marks this message finished (committed, found committed, dead-lettered or given up);
    /// `true` when every message of the entry is, so the entry is to be acknowledged. Safe to
    /// call again: a retried acknowledgement is asked for again.
    pub fn finish(&self) -> bool {
        // A panic while holding this lock cannot leave the flags inconsistent.
        let mut finished = self.finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(flag) = finished.flags.get_mut(self.index) {
            if !*flag {
                *flag = true;
                finished.left -= 1;
            }
        }
        finished.left == 0
    }
}

/// An entry's messages, in order: the entry itself when it holds one `m` (or none: garbage,
/// dead-lettered whole), else one per `m` field, each with the entry's id.
pub fn split(entry: StreamEntry) -> Vec<Incoming> {
    let count = entry.payloads().count();
    if count <= 1 {
        return vec![Incoming { entry, part: None }];
    }
    let finished = Arc::new(Mutex::new(Finished {
        flags: vec![false; count],
        left: count,
    }));
    let StreamEntry { id, fields } = entry;
    fields
        .into_iter()
        .filter(|(name, _)| name == PAYLOAD_FIELD.as_bytes())
        .enumerate()
        .map(|(index, field)| Incoming {
            entry: StreamEntry {
                id: id.clone(),
                fields: vec![field],
            },
            part: Some(Part {
                index,
                finished: finished.clone(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> StreamEntry {
        StreamEntry {
            id: "5-1".into(),
            fields: fields
                .iter()
                .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn an_entry_with_one_message_stays_whole() {
        let parts = split(entry(&[("m", "a")]));
        assert_eq!(parts.len(), 1);
        assert!(parts[0].part.is_none());
        assert_eq!(parts[0].name(), "5-1");
        let garbage = split(entry(&[("x", "y")]));
        assert_eq!(garbage.len(), 1, "garbage is dead-lettered whole");
        assert_eq!(garbage[0].entry.fields.len(), 1);
    }

    #[test]
    fn a_packed_entry_is_a_message_per_payload_in_order() {
        let parts = split(entry(&[("m", "a"), ("m", "b"), ("m", "c")]));
        let names: Vec<_> = parts.iter().map(|p| p.name().into_owned()).collect();
        assert_eq!(names, ["5-1#0", "5-1#1", "5-1#2"]);
        let payloads: Vec<_> = parts.iter().map(|p| p.entry.payload().map(<[u8]>::to_vec)).collect();
        assert_eq!(
            payloads,
            [Some(b"a".to_vec()), Some(b"b".to_vec()), Some(b"c".to_vec())]
        );
        assert!(parts.iter().all(|p| p.entry.id == "5-1"));
    }

    #[test]
    fn the_entry_is_acknowledged_after_its_last_message_only() {
        let parts = split(entry(&[("m", "a"), ("m", "b"), ("m", "c")]));
        let part = |i: usize| parts[i].part.as_ref().expect("packed");
        assert!(!part(2).finish());
        assert!(!part(2).finish(), "finishing twice does not count twice");
        assert!(!part(0).finish());
        assert!(part(1).finish(), "the last one asks for the ack");
        assert!(part(1).finish(), "and asks again when retried");
    }
}
