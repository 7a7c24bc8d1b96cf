//! The delivery board: one receive timestamp per (member, broadcast), the counters of
//! everything that went wrong, and the latency figures computed from it after the run.
//!
//! Thousands of member reader tasks write to it at once while the sender writes send times, so
//! it is lock-free (one atomic per slot, first write wins); a duplicate is a slot already set,
//! a miss one never set, and a broadcast's "last member" latency is the largest slot in its
//! column.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::report::LatencySummary;

/// Every delivery of the run: one receive timestamp per (member, broadcast), plus counters.
/// Written lock-free by the members' reader tasks.
pub(super) struct Board {
    epoch: std::time::Instant,
    broadcasts: usize,
    /// ns since `epoch` when the sender wrote broadcast k (0 = not sent).
    pub(super) sent_ns: Vec<AtomicU64>,
    /// ns since `epoch` when member m got broadcast k, at `m * broadcasts + k` (0 = not yet).
    pub(super) received_ns: Vec<AtomicU64>,
    pub(super) joined: Vec<AtomicBool>,
    pub(super) delivered: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) corrupt: AtomicU64,
    pub(super) foreign: AtomicU64,
    pub(super) unexpected: AtomicU64,
    pub(super) error_frames: AtomicU64,
    pub(super) seq_gaps: AtomicU64,
    pub(super) seq_repeats: AtomicU64,
    pub(super) seq_absent: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) first_problem: Mutex<Option<String>>,
}

impl Board {
    pub(super) fn new(members: usize, broadcasts: usize) -> Self {
        let atomics = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Board {
            epoch: std::time::Instant::now(),
            broadcasts,
            sent_ns: atomics(broadcasts),
            received_ns: atomics(members * broadcasts),
            joined: (0..members).map(|_| AtomicBool::new(false)).collect(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            error_frames: AtomicU64::new(0),
            seq_gaps: AtomicU64::new(0),
            seq_repeats: AtomicU64::new(0),
            seq_absent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            first_problem: Mutex::new(None),
        }
    }

    /// ns since the epoch, never 0 (0 marks "nothing yet").
    pub(super) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub(super) fn problem(&self, what: impl FnOnce() -> String) {
        if let Ok(mut first) = self.first_problem.lock() {
            if first.is_none() {
                *first = Some(what());
            }
        }
    }

    /// Member `m` got broadcast `k` (claimed sent at `t_ns`) at `now`.
    pub(super) fn record(&self, m: usize, k: u64, t_ns: u64, now: u64) {
        let Some(k) = usize::try_from(k).ok().filter(|&k| k < self.broadcasts) else {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.sent_ns[k].load(Ordering::Acquire) != t_ns {
            // The text does not carry the time the sender wrote down for this broadcast.
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            self.problem(|| format!("member {m}: broadcast {k} arrived with a send time that was never sent"));
            return;
        }
        let slot = &self.received_ns[m * self.broadcasts + k];
        if slot
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Checks one member's seq numbers run 1 apart (over every broadcast to the room, ours or
    /// not); the first one seen is the baseline.
    pub(super) fn check_seq(&self, last: &mut Option<u64>, seq: Option<u64>, want_seq: bool) {
        let Some(seq) = seq else {
            if want_seq {
                self.seq_absent.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        match *last {
            Some(prev) if seq == prev + 1 => {}
            Some(prev) if seq > prev => {
                self.seq_gaps.fetch_add(seq - prev - 1, Ordering::Relaxed);
            }
            Some(_) => {
                self.seq_repeats.fetch_add(1, Ordering::Relaxed);
                return; // keep the higher baseline
            }
            None => {}
        }
        *last = Some(seq);
    }
}

/// Latency over the broadcasts or over every delivery (all in microseconds).
fn summarise(values: impl IntoIterator<Item = u64>) -> LatencySummary {
    let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3) else {
        return LatencySummary::default();
    };
    for v in values {
        h.saturating_record(v.clamp(1, 600_000_000));
    }
    LatencySummary::from_histogram(&h)
}

/// The latency figures, computed from the board once the run is over.
pub(super) struct Figures {
    pub(super) expected: u64,
    pub(super) incomplete: u64,
    pub(super) last: LatencySummary,
    pub(super) first: LatencySummary,
    pub(super) member: LatencySummary,
}

impl Figures {
    pub(super) fn compute(board: &Board, members: usize, sent: usize) -> Figures {
        let joined: Vec<usize> = (0..members)
            .filter(|&m| board.joined[m].load(Ordering::Relaxed))
            .collect();
        let mut last = Vec::with_capacity(sent);
        let mut first = Vec::with_capacity(sent);
        let mut all = Vec::with_capacity(joined.len() * sent);
        let mut incomplete = 0;
        let mut expected = 0;
        for k in 0..sent {
            let sent_at = board.sent_ns[k].load(Ordering::Acquire);
            if sent_at == 0 {
                continue;
            }
            expected += joined.len() as u64;
            let mut got = 0;
            let (mut lo, mut hi) = (u64::MAX, 0);
            for &m in &joined {
                let at = board.received_ns[m * board.broadcasts + k].load(Ordering::Relaxed);
                if at == 0 {
                    continue;
                }
                got += 1;
                let us = at.saturating_sub(sent_at) / 1_000;
                all.push(us);
                lo = lo.min(us);
                hi = hi.max(us);
            }
            if got < joined.len() {
                incomplete += 1;
            }
            if got > 0 {
                last.push(hi);
                first.push(lo);
            }
        }
        Figures {
            expected,
            incomplete,
            last: summarise(last),
            first: summarise(first),
            member: summarise(all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_counts_misses_duplicates_and_seq_breaks() {
        let b = Board::new(2, 3);
        for k in 0..3 {
            b.sent_ns[k].store(10 + k as u64, Ordering::Release);
        }
        b.joined[0].store(true, Ordering::Relaxed);
        b.joined[1].store(true, Ordering::Relaxed);
        b.record(0, 0, 10, 1_010_000);
        b.record(0, 0, 10, 1_020_000); // duplicate
        b.record(0, 1, 11, 2_011_000);
        b.record(0, 2, 12, 3_012_000);
        b.record(1, 0, 10, 5_010_000);
        b.record(1, 2, 99, 5_020_000); // wrong send time
        b.record(1, 7, 10, 5_020_000); // no such broadcast
        assert_eq!(b.delivered.load(Ordering::Relaxed), 4);
        assert_eq!(b.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(b.corrupt.load(Ordering::Relaxed), 2);
        let f = Figures::compute(&b, 2, 3);
        assert_eq!(f.expected, 6);
        assert_eq!(f.incomplete, 2);
        assert_eq!(f.last.samples, 3);
        assert!((5_000..=5_020).contains(&f.last.max_us), "{:?}", f.last);
        assert_eq!(f.member.samples, 4);

        let mut last = None;
        for seq in [5, 6, 8, 8, 9] {
            b.check_seq(&mut last, Some(seq), true);
        }
        b.check_seq(&mut last, None, true);
        assert_eq!(b.seq_gaps.load(Ordering::Relaxed), 1);
        assert_eq!(b.seq_repeats.load(Ordering::Relaxed), 1);
        assert_eq!(b.seq_absent.load(Ordering::Relaxed), 1);
    }
}
