//! What a member or the sender receives, reduced to what the benchmark cares about, and the
//! text each broadcast carries.
//!
//! Every delivery must be matched to exactly one broadcast of this run, whatever the server:
//! the text `r=<run> b=<k> t=<ns>` names the run, the broadcast number and the send time, and
//! [`classify`] sorts a frame into ours, another run's (foreign), a join confirmation, an error
//! or noise — without caring about key order or JSON escapes.

use std::borrow::Cow;

use serde::Deserialize;

/// A frame a member or the sender received, as far as the benchmark cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    /// `{"joined": room}` for our room.
    Joined,
    /// A broadcast of this run: number `k`, sent at `t_ns`.
    Ours { k: u64, t_ns: u64, seq: Option<u64> },
    /// A broadcast to our room from another run.
    Foreign { seq: Option<u64> },
    /// `{"error": …}`.
    Error,
    /// Anything else (another room, not JSON, a heartbeat).
    Other,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    joined: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The text of broadcast `k` of run `run`, sent at `t_ns`.
pub fn say_text(run: u64, k: u64, t_ns: u64) -> String {
    format!("r={run} b={k} t={t_ns}")
}

/// Parses [`say_text`]'s output: `(run, k, t_ns)`.
pub fn parse_say_text(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.split(' ');
    let run = parts.next()?.strip_prefix("r=")?.parse().ok()?;
    let k = parts.next()?.strip_prefix("b=")?.parse().ok()?;
    let t = parts.next()?.strip_prefix("t=")?.parse().ok()?;
    parts.next().is_none().then_some((run, k, t))
}

/// Sorts one text frame received in `room` during run `run`.
pub(super) fn classify(payload: &[u8], room: &str, run: u64) -> Pushed {
    let Ok(frame) = serde_json::from_slice::<Frame<'_>>(payload) else {
        return Pushed::Other;
    };
    if frame.joined.as_deref() == Some(room) {
        return Pushed::Joined;
    }
    if frame.error.is_some() {
        return Pushed::Error;
    }
    match (frame.room.as_deref(), frame.text.as_deref()) {
        (Some(r), Some(text)) if r == room => match parse_say_text(text) {
            Some((r, k, t_ns)) if r == run => Pushed::Ours {
                k,
                t_ns,
                seq: frame.seq,
            },
            _ => Pushed::Foreign { seq: frame.seq },
        },
        _ => Pushed::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn say_text_round_trips() {
        let t = say_text(42, 7, 123_456_789);
        assert_eq!(parse_say_text(&t), Some((42, 7, 123_456_789)));
        assert_eq!(parse_say_text("r=1 b=2"), None);
        assert_eq!(parse_say_text("r=1 b=2 t=3 x"), None);
        assert_eq!(parse_say_text("hello"), None);
    }

    #[test]
    fn classifies_frames() {
        let ours = br#"{"room":"bench","text":"r=9 b=3 t=100","seq":17}"#;
        assert_eq!(
            classify(ours, "bench", 9),
            Pushed::Ours {
                k: 3,
                t_ns: 100,
                seq: Some(17)
            }
        );
        assert_eq!(classify(ours, "bench", 8), Pushed::Foreign { seq: Some(17) });
        assert_eq!(classify(ours, "other", 9), Pushed::Other);
        assert_eq!(classify(br#"{"joined":"bench"}"#, "bench", 9), Pushed::Joined);
        assert_eq!(classify(br#"{"error":"nope"}"#, "bench", 9), Pushed::Error);
        assert_eq!(classify(b"not json", "bench", 9), Pushed::Other);
        // Key order and escapes do not matter.
        let escaped = br#"{"seq":1,"text":"r=9 b=0 t=5","room":"ben\u0063h"}"#;
        assert_eq!(
            classify(escaped, "bench", 9),
            Pushed::Ours {
                k: 0,
                t_ns: 5,
                seq: Some(1)
            }
        );
    }
}
