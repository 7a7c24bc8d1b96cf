//! Wall-clock time as Redis keys and liveness records carry it.
//!
//! Expiry scores, liveness timestamps and tick numbers are milliseconds since
//! the Unix epoch, shared between processes on different machines; one
//! function makes them, so they are all made the same way.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is set before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch (0 if the clock is set before it).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_after_2020() {
        assert!(super::now_ms() > 1_577_836_800_000);
    }
}
