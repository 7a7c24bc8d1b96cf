//! A token bucket: the per-connection message rate limit.
//!
//! A client may send `burst` messages at once and `rate` per second on
//! average; a message that finds the bucket empty is over the limit. Time is
//! passed in, so the arithmetic is tested without sleeping.

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token for one message; `false` when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        // 10 per second: one token every 100 ms.
        assert!(!bucket.take(start + Duration::from_millis(50)));
        assert!(bucket.take(start + Duration::from_millis(150)));
        assert!(!bucket.take(start + Duration::from_millis(160)));
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 2.0, start);
        let later = start + Duration::from_secs(60);
        assert!(bucket.take(later));
        assert!(bucket.take(later));
        assert!(!bucket.take(later));
    }

    #[test]
    fn a_steady_sender_under_the_rate_is_never_limited() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5.0, 1.0, start);
        for i in 0..100 {
            assert!(bucket.take(start + Duration::from_millis(200 * i)), "message {i}");
        }
    }
}
