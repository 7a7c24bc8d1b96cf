//! The "chat counter" protocol spoken by Switchyard's chat app and by the Django peers.
//!
//! Each text message a client sends is answered with `{"count": n}`, n = 1, 2, 3 … per
//! connection; the server may push other frames (the `{"ts": …}` heartbeat) at any time. This
//! file knows how to build a message, recognise an answer, and check that answers arrive in
//! strict order — the correctness signal every scenario reports.

use serde::Deserialize;

/// Builds the text message sent for each round trip: a small JSON object padded to
/// `payload_bytes` (at least the JSON skeleton's size).
pub fn message(payload_bytes: usize) -> Vec<u8> {
    const HEAD: &str = "{\"message\":\"";
    const TAIL: &str = "\"}";
    let pad = payload_bytes.saturating_sub(HEAD.len() + TAIL.len());
    let mut out = Vec::with_capacity(HEAD.len() + pad + TAIL.len());
    out.extend_from_slice(HEAD.as_bytes());
    out.resize(HEAD.len() + pad, b'x');
    out.extend_from_slice(TAIL.as_bytes());
    out
}

#[derive(Deserialize)]
struct Reply {
    count: Option<serde_json::Value>,
}

/// What a received text frame means to the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// An answer carrying this count.
    Count(u64),
    /// Anything else (heartbeat, unrelated push): ignored.
    Other,
}

/// Classifies a text frame's payload.
pub fn classify(payload: &[u8]) -> Incoming {
    // Cheap pre-check: heartbeats and other pushes never mention "count".
    if !payload.windows(7).any(|w| w == b"\"count\"") {
        return Incoming::Other;
    }
    match serde_json::from_slice::<Reply>(payload) {
        Ok(Reply { count: Some(v) }) => v.as_u64().map_or(Incoming::Other, Incoming::Count),
        _ => Incoming::Other,
    }
}

/// Checks that one connection's counts are 1, 2, 3 … with no gap, repeat or reordering.
#[derive(Debug, Default, Clone)]
pub struct OrderCheck {
    last: u64,
    /// Answers whose count was not `last + 1`.
    pub violations: u64,
}

impl OrderCheck {
    /// Records an answer; returns `false` if it broke the sequence.
    pub fn observe(&mut self, count: u64) -> bool {
        let ok = count == self.last + 1;
        if !ok {
            self.violations += 1;
        }
        // Resynchronise on the server's numbering so one gap counts once.
        self.last = count;
        ok
    }

    /// The last count seen.
    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_requested_size() {
        assert_eq!(message(64).len(), 64);
        assert_eq!(message(0), b"{\"message\":\"\"}".to_vec());
        assert!(serde_json::from_slice::<serde_json::Value>(&message(100)).is_ok());
    }

    #[test]
    fn classifies_frames() {
        assert_eq!(classify(br#"{"count": 7}"#), Incoming::Count(7));
        assert_eq!(classify(br#"{"ts": "2024-01-01T00:00:00"}"#), Incoming::Other);
        assert_eq!(classify(br#"{"count": "x"}"#), Incoming::Other);
        assert_eq!(classify(b"not json \"count\""), Incoming::Other);
    }

    #[test]
    fn order_check_counts_each_break_once() {
        let mut c = OrderCheck::default();
        assert!(c.observe(1));
        assert!(c.observe(2));
        assert!(!c.observe(4));
        assert!(c.observe(5));
        assert!(!c.observe(5));
        assert_eq!(c.violations, 2);
        assert_eq!(c.last(), 5);
    }
}
